"""Output safety (edge_awares/outputs.py): the toolkit never deletes or overwrites what it did not write, --force
replaces only an output of ours of the same kind and never the input, stale partials of dead runs are removed on
the next run into the same place, and single files are written whole (a full disk or a read-only place leaves
nothing partial and fails with one line). Every CLI case runs in-process and checks the exit code and the one-line
error."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_awares import outputs
from edge_awares.cli import main
from edge_awares.errors import OutputError
from edge_awares.outputs import MARKER, building, clean_stale_partials, is_ours, prepare_dir, write_marker

from conftest import make_doc

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _error(capsys, code: int) -> str:
    """The CLI failed with `code` and printed exactly one line, no traceback; returns it."""
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _partial(parent: Path, name: str, owner: dict | None, suffix: str = "abc123") -> Path:
    d = parent / f".{name}.partial-{suffix}"
    d.mkdir()
    (d / "vision.onnx").write_bytes(b"half")
    if owner is not None:
        write_marker(d, "engine", owner=True)
        m = json.loads((d / MARKER).read_text())
        m["owner"].update(owner)
        (d / MARKER).write_text(json.dumps(m))
    return d


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "page.png"
    make_doc(320, 240).save(p)
    return p


# ------------------------------------------------------------------------------------------ export
@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    """A private copy of the tiny checkpoint (tests write next to and inside it)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def test_export_force_onto_a_user_folder_is_refused(tiny_ckpt, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    err = _error(capsys, main(["export", str(tiny_ckpt), "-o", str(docs), "--force"]))
    assert "is not an edge-awares engine; refusing to replace it" in err
    assert (docs / "thesis.txt").read_text() == "years of work" and [p.name for p in docs.iterdir()] == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # no partial, no probe left


def test_export_onto_its_own_checkpoint_is_refused(ckpt_copy, capsys):
    before = {p.name: _sha(p) for p in ckpt_copy.iterdir()}
    err = _error(capsys, main(["export", str(ckpt_copy), "-o", str(ckpt_copy), "--force"]))
    assert "is the input" in err
    assert {p.name: _sha(p) for p in ckpt_copy.iterdir()} == before


def test_export_onto_a_folder_holding_the_checkpoint_is_refused(ckpt_copy, capsys):
    err = _error(capsys, main(["export", str(ckpt_copy), "-o", str(ckpt_copy.parent), "--force"]))
    assert "holds the input" in err and (ckpt_copy / "model.safetensors").is_file()


def test_export_inside_the_checkpoint_then_force_replaces_our_engine(ckpt_copy, capsys):
    from edge_awares.manifest import load_manifest

    eng = ckpt_copy / "engine"
    weights = _sha(ckpt_copy / "model.safetensors")
    assert main(["export", str(ckpt_copy), "-o", str(eng), "--verify-tokens", "2"]) == 0
    first = load_manifest(eng).data["provenance"]
    assert outputs.read_marker(eng)["kind"] == "engine" and "owner" not in outputs.read_marker(eng)
    capsys.readouterr()
    err = _error(capsys, main(["export", str(ckpt_copy), "-o", str(eng), "--verify-tokens", "2"]))
    assert "pass --force to replace it" in err
    (eng / "stale-extra.bin").write_bytes(b"x")  # replaced whole, not merged
    assert main(["export", str(ckpt_copy), "-o", str(eng), "--verify-tokens", "2", "--force"]) == 0
    second = load_manifest(eng).data["provenance"]
    assert not (eng / "stale-extra.bin").exists()
    # The engine inside the checkpoint is not part of the checkpoint's hash; the weights were never touched.
    assert first["source_sha256"] == second["source_sha256"] and _sha(ckpt_copy / "model.safetensors") == weights
    assert not [p for p in ckpt_copy.iterdir() if ".partial-" in p.name]


def test_export_to_a_read_only_place_is_one_line(tiny_ckpt, tmp_path, capsys, monkeypatch):
    def erofs(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(outputs.tempfile, "mkstemp", erofs)
    err = _error(capsys, main(["export", str(tiny_ckpt), "-o", str(tmp_path / "eng")]))
    assert "Read-only file system" in err and not (tmp_path / "eng").exists()


def test_export_disk_full_mid_build_is_one_line_and_leaves_nothing(tiny_ckpt, tmp_path, capsys, monkeypatch):
    from edge_awares.export import builder

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr(builder, "build_decoder", enospc)
    err = _error(capsys, main(["export", str(tiny_ckpt), "-o", str(tmp_path / "eng")]))
    assert "No space left on device" in err and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(ROOT, reason="root ignores permission bits")
def test_export_to_a_read_only_folder_chmod(tiny_ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = _error(capsys, main(["export", str(tiny_ckpt), "-o", str(ro / "eng")]))
    finally:
        ro.chmod(0o755)
    assert "cannot write" in err and list(ro.iterdir()) == []


def test_symlink_output_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    err = _error(capsys, main(["data", "synth", "-n", "1", "-o", str(tmp_path / "link")]))
    assert "symbolic link" in err and list(real.iterdir()) == []


# ------------------------------------------------------------------------------------------ stale partials
def test_stale_partial_of_a_dead_process_is_removed(tmp_path):
    dead = _partial(tmp_path, "eng", {"pid": _dead_pid(), "proc_start": None})
    logged = []
    assert clean_stale_partials(tmp_path, "eng", logged.append) == [dead]
    assert not dead.exists() and "no longer running" in logged[0]


def test_partial_of_a_live_process_is_kept(tmp_path):
    live = _partial(tmp_path, "eng", {"pid": os.getpid()})
    assert clean_stale_partials(tmp_path, "eng") == [] and live.is_dir()


def test_partial_whose_pid_was_reused_is_removed(tmp_path):
    reused = _partial(tmp_path, "eng", {"pid": os.getpid(), "proc_start": -1})  # alive, but started at another time
    if outputs._proc_start(os.getpid()) is None:
        pytest.skip("no /proc: a reused pid cannot be told apart")
    assert clean_stale_partials(tmp_path, "eng") == [reused]


def test_partials_without_a_record_or_from_another_host_are_kept(tmp_path):
    bare = _partial(tmp_path, "eng", None, "nomarker")
    elsewhere = _partial(tmp_path, "eng", {"pid": _dead_pid(), "host": "another-machine"}, "remote")
    sealed = _partial(tmp_path, "eng", None, "sealed")
    write_marker(sealed, "engine")  # a marker without an owner record
    other_name = _partial(tmp_path, "other", {"pid": _dead_pid()})
    assert clean_stale_partials(tmp_path, "eng") == []
    assert all(p.is_dir() for p in (bare, elsewhere, sealed, other_name))


def test_stale_partial_file_is_removed_live_one_kept(tmp_path):
    tag = outputs._host_tag()
    dead = tmp_path / f".trace.json.partial-{_dead_pid()}-{tag}-0a0a"
    live = tmp_path / f".trace.json.partial-{os.getpid()}-{tag}-0b0b"
    odd = tmp_path / ".trace.json.partial-whatever"
    for p in (dead, live, odd):
        p.write_text("{")
    assert clean_stale_partials(tmp_path, "trace.json") == [dead]
    assert live.exists() and odd.exists()


def test_the_next_run_into_the_same_place_removes_a_stale_partial(tmp_path, capsys):
    dead = _partial(tmp_path, "data", {"pid": _dead_pid(), "proc_start": None})
    assert main(["data", "synth", "-n", "1", "-o", str(tmp_path / "data")]) == 0
    assert not dead.exists() and (tmp_path / "data" / "samples.jsonl").is_file()
    assert "no longer running" in capsys.readouterr().err


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with building(tmp_path / "d", "dataset") as tmp:
            (tmp / "samples.jsonl").write_text("{}\n")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ tiny checkpoints
def test_tiny_onto_a_folder_holding_weights_is_refused(tmp_path, capsys):
    pytest.importorskip("torch")
    user = tmp_path / "model"
    user.mkdir()
    (user / "model.safetensors").write_bytes(b"the user's own weights")
    for extra in ([], ["--force"]):
        err = _error(capsys, main(["tiny", str(user), *extra]))
        assert "is not a checkpoint edge-awares wrote; refusing to replace it" in err
    assert (user / "model.safetensors").read_bytes() == b"the user's own weights"
    assert [p.name for p in user.iterdir()] == ["model.safetensors"]


def test_tiny_replaces_only_its_own_checkpoint_with_force(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "t"
    assert main(["tiny", str(out), "--seed", "1"]) == 0
    first = _sha(out / "model.safetensors")
    capsys.readouterr()
    assert "pass --force" in _error(capsys, main(["tiny", str(out), "--seed", "2"]))
    assert _sha(out / "model.safetensors") == first
    assert main(["tiny", str(out), "--seed", "2", "--force"]) == 0
    assert _sha(out / "model.safetensors") != first and is_ours(out, "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_big_checkpoint_refuses_a_user_folder_even_with_force(tmp_path):
    pytest.importorskip("torch")
    from edge_awares.bigckpt import make_big_checkpoint

    user = tmp_path / "u"
    user.mkdir()
    (user / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="refusing"):
        make_big_checkpoint(user, "3b", text=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=64, vocab_size=2048),
                            vision=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2), force=True)
    assert [p.name for p in user.iterdir()] == ["config.json"]


# ------------------------------------------------------------------------------------------ profile --trace
def _trace_args(image, trace, tmp_path):
    engine = tmp_path / "eng"
    engine.mkdir(exist_ok=True)
    return ["profile", str(image), "q", "--engine", str(engine), "--trace", str(trace)]


def test_trace_at_a_directory_is_refused(image, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    assert "is a folder" in _error(capsys, main(_trace_args(image, tmp_path / "dir", tmp_path)))


def test_trace_in_a_missing_folder_is_refused_and_nothing_created(image, tmp_path, capsys):
    err = _error(capsys, main(_trace_args(image, tmp_path / "no" / "such" / "t.json", tmp_path)))
    assert "does not exist" in err and not (tmp_path / "no").exists()


def test_trace_at_the_input_image_is_refused(image, tmp_path, capsys):
    before = _sha(image)
    assert "is the input" in _error(capsys, main(_trace_args(image, image, tmp_path)))
    assert _sha(image) == before


@pytest.mark.skipif(ROOT, reason="root ignores permission bits")
def test_trace_in_a_read_only_folder_chmod(image, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "cannot write" in _error(capsys, main(_trace_args(image, ro / "t.json", tmp_path)))
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_trace_write_failure_leaves_nothing_partial(tmp_path, monkeypatch, code):
    from edge_awares.runtimes.profile import write_trace

    report = {"backend": "onnx", "total_ms": 1.0, "rtr": 0.5}
    path = tmp_path / "t.json"
    write_trace(path, [], report)  # ours: may be replaced
    before = path.read_bytes()

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(outputs.os, "replace", fail)
    with pytest.raises(OutputError) as e:
        write_trace(path, [{"name": "x"}], report)
    assert os.strerror(code) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_trace_replaces_only_a_trace_of_ours(tmp_path):
    from edge_awares.runtimes.profile import write_trace

    report = {"backend": "onnx", "total_ms": 1.0, "rtr": 0.5}
    mine = write_trace(tmp_path / "t.json", [], report)
    assert json.loads(mine.read_text())["otherData"]["producer"] == "edge-awares"
    write_trace(mine, [{"name": "again"}], report)
    other = tmp_path / "notes.json"
    other.write_text('{"traceEvents": [], "mine": true}')
    with pytest.raises(OutputError, match="not a trace edge-awares wrote"):
        write_trace(other, [], report)
    assert json.loads(other.read_text()) == {"traceEvents": [], "mine": True}


# ------------------------------------------------------------------------------------------ ask --show
def test_show_onto_the_input_image_is_refused(image, tmp_path, capsys):
    before = _sha(image)
    link = tmp_path / "hard.png"
    os.link(image, link)
    for target in (image, link):  # the same path, and the same file under another name
        err = _error(capsys, main(["ask", str(image), "q", "--model", str(tmp_path), "--show", str(target)]))
        assert "is the input" in err
    assert _sha(image) == before


def test_show_onto_a_file_not_ours_is_refused(image, tmp_path, capsys):
    photo = tmp_path / "holiday.png"
    make_doc(64, 64, seed=5).save(photo)
    before = _sha(photo)
    err = _error(capsys, main(["ask", str(image), "q", "--model", str(tmp_path), "--show", str(photo)]))
    assert "not an image edge-awares wrote" in err and _sha(photo) == before


def test_show_replaces_our_own_previous_png(tiny_ckpt, image, tmp_path, capsys):
    from PIL import Image

    from edge_awares.outputs import png_info, write_file_atomic

    show = tmp_path / "show.png"
    write_file_atomic(show, lambda f: Image.new("RGB", (8, 8)).save(f, format="PNG", pnginfo=png_info()), "png")
    assert main(["ask", str(image), "q", "--model", str(tiny_ckpt), "--crops", "none", "--max-new-tokens", "1",
                 "--json", "--show", str(show)]) == 0
    with Image.open(show) as im:
        assert im.width == 320 and im.info["Software"] == "edge-awares"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.png", "show.png"]


# ------------------------------------------------------------------------------------------ eval --out
def _eval_setup(tmp_path):
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.format import Sample, write_samples
    from edge_awares.protocols import get_protocol
    from edge_awares.session import Session
    from edge_awares.tiny import make_tokenizer
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.views import Geometry

    from fakes import ScriptedBackend

    img = tmp_path / "p.png"
    make_doc(448, 448).save(img)
    data = write_samples(tmp_path / "samples.jsonl",
                         [Sample(id=f"s{i}", image=str(img), question="q", answers=["AB3"]) for i in range(3)],
                         image_dir=None)
    tok = TextTokenizer(make_tokenizer())
    return data, Session(ScriptedBackend(tok, ["AB3"]), tok, get_protocol("tool_call"), AWARES_CROPS, Geometry())


def test_eval_out_failure_leaves_no_partial(tmp_path):
    from edge_awares.evaluate import EvalConfig, evaluate

    data, session = _eval_setup(tmp_path)
    real, calls = session.run, []

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-run")
        return real(*a, **k)

    session.run = dies_on_the_second
    out = tmp_path / "rec.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(EvalConfig(data=str(data), model="unused", out=str(out)), session=session, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
    session.run = real
    evaluate(EvalConfig(data=str(data), model="unused", out=str(out)), session=session, progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and all(r["producer"] == "edge-awares" for r in lines)
    evaluate(EvalConfig(data=str(data), model="unused", out=str(out)), session=session, progress=False)  # ours


def test_eval_out_disk_full_is_one_line(tmp_path, monkeypatch):
    from edge_awares.evaluate import EvalConfig, evaluate

    data, session = _eval_setup(tmp_path)

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "replace", enospc)
    with pytest.raises(OutputError, match="No space left on device"):
        evaluate(EvalConfig(data=str(data), model="unused", out=str(tmp_path / "rec.jsonl")), session=session,
                 progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "samples.jsonl"]


def test_eval_out_onto_the_data_or_a_foreign_file_is_refused(tmp_path, capsys):
    data, _ = _eval_setup(tmp_path)
    before = _sha(data)
    err = _error(capsys, main(["eval", "--data", str(data), "--model", str(tmp_path), "--out", str(data)]))
    assert "is the input" in err and _sha(data) == before
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": 1}\n')
    err = _error(capsys, main(["eval", "--data", str(data), "--model", str(tmp_path), "--out", str(notes)]))
    assert "not records edge-awares wrote" in err and notes.read_text() == '{"mine": 1}\n'


# ------------------------------------------------------------------------------------------ data, curate, train
def test_synth_replaces_only_its_own_dataset(tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    assert "is not an edge-awares dataset" in _error(capsys, main(["data", "synth", "-n", "1", "-o", str(user),
                                                                    "--force"]))
    assert [p.name for p in user.iterdir()] == ["keep.txt"]
    d = tmp_path / "d"
    assert main(["data", "synth", "-n", "3", "-o", str(d)]) == 0
    capsys.readouterr()
    assert "pass --force" in _error(capsys, main(["data", "synth", "-n", "1", "-o", str(d)]))
    assert main(["data", "synth", "-n", "1", "-o", str(d), "--force"]) == 0
    assert len(list((d / "images").iterdir())) == 1  # replaced whole: no images left from the run of three


def test_curate_refuses_a_user_folder_and_its_own_data(tmp_path, capsys):
    d = tmp_path / "d"
    assert main(["data", "synth", "-n", "1", "-o", str(d)]) == 0
    user = tmp_path / "user"
    user.mkdir()
    (user / "curation.jsonl").write_text("mine\n")
    for out, message in ((user, "is not an edge-awares dataset"), (d, "is the input")):
        capsys.readouterr()
        err = _error(capsys, main(["curate", "--model", str(tmp_path / "nomodel"), "--data", str(d), "-o", str(out),
                                   "--no-resume"]))
        assert message in err
    assert (user / "curation.jsonl").read_text() == "mine\n" and not (d / "curation.jsonl").exists()


def test_oracle_trajectories_never_overwrite_the_samples_or_a_foreign_file(tmp_path, capsys):
    from edge_awares.data.synth import write_dataset

    samples = write_dataset(tmp_path / "d", 2, seed=0)
    before = _sha(samples)
    assert "is the input" in _error(capsys, main(["train", "oracle", str(samples), "-o", str(samples)]))
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"mine": 1}\n')
    assert "not trajectories edge-awares wrote" in _error(capsys, main(["train", "oracle", str(samples), "-o",
                                                                        str(notes)]))
    out = tmp_path / "d" / "traj.jsonl"
    for _ in range(2):  # a second run replaces its own file
        assert main(["train", "oracle", str(samples), "-o", str(out)]) == 0
    assert _sha(samples) == before and len(out.read_text().splitlines()) == 2
    assert notes.read_text() == '{"mine": 1}\n' and not [p for p in tmp_path.rglob("*partial*")]


def test_an_empty_file_may_be_replaced(tmp_path):
    from edge_awares.runtimes.profile import write_trace

    empty = tmp_path / "t.json"
    empty.touch()
    write_trace(empty, [], {"backend": "onnx", "total_ms": 1.0, "rtr": 0.5})
    assert outputs.file_is_ours(empty, "trace")


def test_train_output_refuses_a_foreign_model_and_the_base(tmp_path):
    pytest.importorskip("torch")
    from edge_awares.train.checkpoint import prepare_output, save_merged

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"weights")
    (hf / "run").mkdir()
    with pytest.raises(OutputError, match="refusing to replace it"):
        prepare_output(hf, resume=False, overwrite=True)
    with pytest.raises(OutputError, match="is the input"):
        prepare_output(hf, resume=False, overwrite=True, inputs=(hf,))
    with pytest.raises(OutputError, match="refusing to replace it"):
        save_merged(None, hf, tmp_path / "base")  # refused before the model is touched
    assert (hf / "model.safetensors").read_bytes() == b"weights" and (hf / "run").is_dir()


def test_overwrite_removes_only_a_run_folder_of_ours(tmp_path):
    pytest.importorskip("torch")
    from edge_awares.train.checkpoint import prepare_output

    out = tmp_path / "o"
    out.mkdir()
    write_marker(out, "checkpoint")
    (out / "run").mkdir()
    (out / "run" / "notes.txt").write_text("not a run log")
    with pytest.raises(OutputError, match="refusing to delete it"):
        prepare_output(out, resume=False, overwrite=True)
    assert (out / "run" / "notes.txt").exists()
    (out / "run" / "notes.txt").unlink()
    (out / "run" / "config.json").write_text(json.dumps({"config": {}, "resolved": {}}))  # a RunLog's
    prepare_output(out, resume=False, overwrite=True)
    assert not (out / "run").exists()


def test_demo_fresh_and_ship_touch_only_their_own(tmp_path):
    pytest.importorskip("torch")
    from edge_awares.train.demo import DemoConfig, run_demo, ship_engine

    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="is not an edge-awares demo run"):
        run_demo(DemoConfig(output=str(user), fresh=True), log=lambda m: None)
    eng = tmp_path / "eng"
    eng.mkdir()
    (eng / "manifest.json").write_text('{"format": "edge-awares-engine"}')
    with pytest.raises(OutputError, match="is not an edge-awares engine"):
        ship_engine(eng, user)
    with pytest.raises(OutputError, match="is the input"):
        ship_engine(eng, eng)
    assert [p.name for p in user.iterdir()] == ["keep.txt"] and (eng / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize("kind,files", [
    ("engine", {"manifest.json": '{"format": "edge-awares-engine", "schema_version": 1}'}),
    ("checkpoint", {"edge_awares_tiny.json": "{}", "model.safetensors": ""}),
    ("checkpoint", {"edge_awares_policy.json": '{"stages": []}', "config.json": "{}"}),
    ("checkpoint", {"run/config.json": '{"config": {}, "resolved": {}}'}),
    ("run", {"config.json": '{"config": {}, "resolved": {}}'}),
    ("dataset", {"samples.jsonl": '{"id": "a", "source": "synth"}\n'}),
    ("dataset", {"config.json": '{"judge": "anls", "oracle": "gt", "min_iou": 0.5}'}),
    ("demo", {"demo_run.json": '{"config": {}, "stages": {}}'}),
])
def test_outputs_from_before_the_marker_are_recognised(tmp_path, kind, files):
    d = tmp_path / "x"
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    assert is_ours(d, kind)
    assert prepare_dir(d, kind, force=True) == d.resolve()
    others = [k for k in outputs.DIR_KINDS if k != kind]
    write_marker(d, others[0])  # a marker of another kind decides
    assert not is_ours(d, kind)


def test_user_folders_are_not_ours(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "manifest.json").write_text('{"format": "something-else"}')
    (d / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    assert not any(is_ours(d, k) for k in outputs.DIR_KINDS)
    with pytest.raises(OutputError, match="exists and is not"):
        prepare_dir(d, "engine", force=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        prepare_dir(f, "engine", force=True)


def test_disk_space_estimate_is_checked(tmp_path):
    with pytest.raises(OutputError, match="GB of disk"):
        prepare_dir(tmp_path / "big", "checkpoint", size_bytes=1 << 62)
