"""Hostile inputs (issue #11, input safety): image paths that are not regular files, oversized files, paths that
escape the data folder, and data files with bad rows among good ones, through load_image, the loaders and the
`eval` / `curate` commands; plus property-based fuzzing of the image loader, the row parsers and the protocol
parsers (only typed errors, never another exception).

The commands run in-process through edge_awares.cli.main with a scripted backend (no model, no torch).
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_awares.cli import main
from edge_awares.crops import AWARES_CROPS
from edge_awares.data.badsamples import BAD_SAMPLES_EXIT, BadSamples
from edge_awares.data.format import read_samples, read_trajectories
from edge_awares.data.loaders import BENCHMARKS, confine_image, iter_benchmark, load_benchmark
from edge_awares.errors import BadSamplesError, ConfigError, DataError, EdgeAwaresError, ImageError, ProtocolError
from edge_awares.images import DEFAULT_MAX_BYTES, load_image, read_image_file
from edge_awares.protocols import PROTOCOLS, get_protocol

from conftest import make_doc

# EDGE_AWARES_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the fuzz tests to a few seconds.
FUZZ = settings(max_examples=int(os.environ.get("EDGE_AWARES_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _png(size=(24, 16), colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _in_thread(fn, timeout: float = 5.0):
    """fn() in a daemon thread: (finished, result or exception). A hang fails the test instead of the run."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            box["value"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("value")


# ----------------------------------------------------------------------------------------------- load_image
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done, value = _in_thread(lambda: load_image(fifo))
    assert done, "load_image blocked on a FIFO"
    assert isinstance(value, ImageError) and "named pipe (FIFO)" in str(value) and str(fifo) in str(value)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_character_devices_are_refused_before_reading(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    done, value = _in_thread(lambda: load_image(device))
    assert done and isinstance(value, ImageError) and "character device" in str(value) and device in str(value)


def test_a_symlink_to_a_device_named_directly_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero does not exist here")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="character device"):
        load_image(tmp_path / "zero.png")


def test_directory_and_socket_are_refused(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    short = tempfile.mkdtemp(prefix="ea", dir="/tmp")  # AF_UNIX paths are limited to ~100 bytes
    path = os.path.join(short, "s.png")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        done, value = _in_thread(lambda: load_image(path))
        assert done and isinstance(value, ImageError) and "socket" in str(value)
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(short)


def test_oversized_files_are_refused_by_size_without_reading(tmp_path):
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: no bytes written
    done, value = _in_thread(lambda: load_image(big))
    assert done and isinstance(value, ImageError) and "exceeds the image file limit" in str(value)
    small = tmp_path / "small.png"
    small.write_bytes(_png())
    with pytest.raises(ImageError, match="exceeds the image file limit of 10 bytes"):
        load_image(small, max_bytes=10)
    assert load_image(small, max_bytes=len(small.read_bytes())).size == (24, 16)  # the cap is inclusive
    with pytest.raises(ImageError, match="exceeds the image file limit of 100 bytes"):
        load_image(b"\x89PNG" + b"\0" * 100, max_bytes=100)  # raw bytes get the same cap


def test_reads_at_most_cap_plus_one_bytes(tmp_path, monkeypatch):
    # A file that grows after fstat (here: fstat lies about its size) is still read only up to cap + 1 bytes.
    f = tmp_path / "grows.png"
    f.write_bytes(b"\0" * 5000)
    real_fstat, real_read, got = os.fstat, os.read, []

    def small_fstat(fd):
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10,
                               int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))

    monkeypatch.setattr(os, "fstat", small_fstat)
    monkeypatch.setattr(os, "read", lambda fd, n: got.append(real_read(fd, n)) or got[-1])
    with pytest.raises(ImageError, match="grew past the image file limit of 100 bytes"):
        read_image_file(f, max_bytes=100)
    assert sum(map(len, got)) == 101


def test_permission_denied(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root from reading")
    f = tmp_path / "locked.png"
    f.write_bytes(_png())
    f.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(f)
    finally:
        f.chmod(0o600)


def test_a_symlink_the_user_names_is_followed(tmp_path):
    (tmp_path / "real.png").write_bytes(_png())
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert load_image(tmp_path / "link.png").size == (24, 16)


def test_ask_on_hostile_paths_fails_fast_with_one_line(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    for path in [tmp_path / "pipe.png", "/dev/zero", "/dev/urandom", tmp_path]:
        if not os.path.exists(path):
            continue
        done, rc = _in_thread(lambda path=path: main(["ask", str(path), "What is it?"]))
        err = capsys.readouterr().err
        errors = [x for x in err.splitlines() if x.startswith("error: ")]  # (a warning may precede it)
        assert done and rc == 2 and len(errors) == 1 and str(path) in errors[0] and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- confinement
@pytest.fixture
def layout(tmp_path):
    """data/ (the data folder, with img.png and sub/) and outside/ (a real image the data must not reach)."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    (data / "img.png").write_bytes(_png())
    (outside / "secret.png").write_bytes(_png(colour="blue"))
    return data, outside


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(sid: str, image: str, question: str = "What is the code?", answers=("AB3",)) -> dict:
    return {"id": sid, "image": image, "question": question, "answers": list(answers)}


def test_paths_inside_the_data_folder_are_fine(layout):
    data, _ = layout
    for image in ("img.png", "sub/../img.png", str(data / "img.png"), "./sub/../../data/img.png"):
        assert Path(confine_image(image, data)).resolve() == (data / "img.png").resolve()


@pytest.mark.parametrize("image,why", [
    ("../outside/secret.png", "resolves outside the data folder"),
    ("../../../../../../../../etc/passwd", "resolves outside the data folder"),
    ("/etc/passwd", "resolves outside the data folder"),
    ("/dev/zero", "resolves outside the data folder"),
])
def test_escapes_are_refused_with_file_line(layout, image, why, monkeypatch):
    data, _ = layout
    opened = []
    monkeypatch.setattr("edge_awares.images.read_image_file", lambda *a, **k: opened.append(a))
    path = _jsonl(data / "s.jsonl", [_row("ok", "img.png"), _row("bad", image)])
    with pytest.raises(DataError, match=rf"s\.jsonl:2: image path {image} {why}.*--image-root"):
        load_benchmark("samples", path)
    bad = BadSamples()
    samples = load_benchmark("samples", path, bad=bad)
    assert [s.id for s in samples] == ["ok"] and samples[0].where == f"{path}:1"
    assert [b.where for b in bad.items] == [f"{path}:2"] and why in bad.items[0].reason
    with pytest.raises(DataError, match=rf"s\.jsonl:2: image path {image} {why}"):
        read_samples(path)  # the format's own reader (training, oracle) applies the same rule
    assert not opened  # a refused path is never opened


def test_symlink_inside_pointing_outside_is_refused(layout):
    data, outside = layout
    (data / "link.png").symlink_to(outside / "secret.png")
    (data / "sub" / "dir").symlink_to(outside)
    path = _jsonl(data / "s.jsonl", [_row("a", "link.png"), _row("b", "sub/dir/secret.png")])
    bad = BadSamples()
    assert load_benchmark("samples", path, bad=bad) == []
    assert [b.where for b in bad.items] == [f"{path}:1", f"{path}:2"]
    assert all("a symlink to" in b.reason and "secret.png" in b.reason for b in bad.items)


def test_image_roots_allow_more(layout):
    data, outside = layout
    path = _jsonl(data / "s.jsonl", [_row("a", "../outside/secret.png"), _row("b", str(outside / "secret.png"))])
    samples = load_benchmark("samples", path, image_roots=[outside])
    assert [s.load_image().getpixel((0, 0)) for s in samples] == [(0, 0, 255)] * 2
    assert [s.id for s in read_samples(path, image_roots=[outside])] == ["a", "b"]
    # A root allows only itself: the rest of the disk stays refused, and the message names the roots.
    path = _jsonl(data / "t.jsonl", [_row("c", "/etc/passwd")])
    with pytest.raises(DataError, match="the --image-root folders"):
        load_benchmark("samples", path, image_roots=[outside])
    with pytest.raises(ConfigError, match="--image-root .*: no such folder"):
        load_benchmark("samples", path, image_roots=[data / "nope"])


def test_trajectories_are_confined_too(layout):
    data, outside = layout
    traj = {**_row("t", "../outside/secret.png"), "label": "LR", "crop_ids": [],
            "messages": [{"role": "user", "content": []}, {"role": "assistant", "content": []}]}
    path = _jsonl(data / "trajectories.jsonl", [traj])
    with pytest.raises(DataError, match=r"trajectories\.jsonl:1: image path .* resolves outside"):
        read_trajectories(path)
    assert read_trajectories(path, image_roots=[outside])[0].id == "t"


def test_training_configs_take_image_roots(layout, tmp_path):
    from edge_awares.train.config import SFTRunConfig

    data, outside = layout
    common = {"model": str(tmp_path), "data": str(data), "output": str(tmp_path / "o")}
    assert SFTRunConfig.from_dict({**common, "image_roots": [str(outside)]}).validate().image_roots == [str(outside)]
    with pytest.raises(ConfigError, match="list of folders"):
        SFTRunConfig(**common, image_roots=str(outside)).validate()  # a string would be read letter by letter
    with pytest.raises(ConfigError, match="no such folder"):
        SFTRunConfig(**common, image_roots=(str(tmp_path / "nope"),)).validate()


def test_image_bytes_must_be_binary(tmp_path):
    # bytes(10**12) would allocate a terabyte: a number is not image data.
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answers": ["a"], "image": {"bytes": 10**12}}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: image 'bytes' must be binary data"):
        load_benchmark("docvqa", path)


def test_data_file_that_is_a_fifo_or_not_utf8(tmp_path):
    os.mkfifo(tmp_path / "d.jsonl")
    done, value = _in_thread(lambda: read_samples(tmp_path / "d.jsonl"))
    assert done and isinstance(value, DataError) and "not a regular file" in str(value)
    p = tmp_path / "e.jsonl"
    p.write_bytes(json.dumps(_row("a", "x.png")).encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"e\.jsonl:2: not UTF-8"):
        read_samples(p)


# ----------------------------------------------------------------------------------------------- eval / curate
@pytest.fixture(scope="module")
def tok():
    from edge_awares.tiny import make_tokenizer
    from edge_awares.tokenizer import TextTokenizer

    return TextTokenizer(make_tokenizer())


@pytest.fixture
def fake_model(monkeypatch, tok):
    """open_session returns a scripted session (always answers AB3); read_checkpoint accepts any folder. A
    question "BUG" makes run() raise a plain RuntimeError: a genuine bug, which must not be swallowed."""
    from edge_awares.session import Session
    from edge_awares.views import Geometry

    from fakes import ScriptedBackend

    class Buggy(Session):
        def run(self, image, question, *a, **k):
            if question == "BUG":
                raise RuntimeError("a bug, not a data problem")
            return super().run(image, question, *a, **k)

    def open_session(model=None, engine=None, protocol=None, **kw):
        return Buggy(ScriptedBackend(tok, ["AB3"]), tok, get_protocol(protocol or "tool_call"), AWARES_CROPS,
                     Geometry())

    monkeypatch.setattr("edge_awares.api.open_session", open_session)
    monkeypatch.setattr("edge_awares.models.read_checkpoint", lambda path: None)


@pytest.fixture
def hostile(tmp_path):
    """A data folder whose JSONL mixes 2 good samples with 9 bad ones; returns (jsonl, {line: expected reason})."""
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    make_doc(96, 96).save(d / "p.png")
    os.mkfifo(d / "pipe.png")
    with (d / "big.png").open("wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)
    (tmp_path / "outside.png").write_bytes(_png())
    (d / "link.png").symlink_to(tmp_path / "outside.png")
    rows = [
        _row("g1", "p.png"),                                   # 1 good
        '{"id": "broken", ',                                    # 2 invalid JSON
        {"id": "noq", "image": "p.png", "answers": ["x"]},      # 3 missing question
        _row("fifo", "pipe.png"),                               # 4 a FIFO inside the folder
        _row("esc", "../../../../../../../../etc/passwd"),      # 5 ../ escape
        _row("abs", "/dev/zero"),                               # 6 absolute, outside
        _row("long", "p.png", question="word " * 6000),         # 7 a prompt that does not fit
        _row("g2", "p.png"),                                    # 8 good
        _row("link", "link.png"),                               # 9 symlink inside -> outside
        _row("dir", "images"),                                  # 10 a directory
        _row("big", "big.png"),                                 # 11 over the byte cap (sparse)
    ]
    why = {2: "invalid JSON", 3: "question", 4: "named pipe (FIFO)", 5: "resolves outside the data folder",
           6: "resolves outside the data folder", 7: "prompt too long", 9: "a symlink to", 10: "is a directory",
           11: "exceeds the image file limit"}
    return _jsonl(d / "samples.jsonl", rows), why


def _err_lines(capsys) -> tuple[str, list[str]]:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return cap.out, cap.err.strip().splitlines()


def test_eval_skips_bad_samples_reports_them_and_exits_3(hostile, fake_model, capsys):
    path, why = hostile
    rc = main(["eval", "--data", str(path), "--model", "m", "--json"])
    out, err = _err_lines(capsys)
    assert rc == BAD_SAMPLES_EXIT == 3
    report = json.loads(out)
    assert report["n"] == 2 and report["bad_samples"]["count"] == len(why)
    got = {int(b["where"].rsplit(":", 1)[1]): b["reason"] for b in report["bad_samples"]["samples"]}
    assert set(got) == set(why)
    for line, reason in why.items():
        assert reason in got[line], (line, got[line])
        assert all(b["where"].startswith(str(path)) for b in report["bad_samples"]["samples"])
    assert len(err) == 1 and err[0].startswith("error: ") and f"{len(why)} of {2 + len(why)} samples were bad" in err[0]
    # The text report lists each bad sample on stderr, then the one-line verdict.
    rc = main(["eval", "--data", str(path), "--model", "m"])
    out, err = _err_lines(capsys)
    assert rc == 3 and "n=2" in out and len(err) == len(why) + 1
    assert all(f"{path}:{n}" in "\n".join(err) for n in why)


def test_eval_allow_bad_samples_exits_0(hostile, fake_model, capsys):
    path, why = hostile
    rc = main(["eval", "--data", str(path), "--model", "m", "--json", "--allow-bad-samples"])
    out, _ = _err_lines(capsys)
    assert rc == 0 and json.loads(out)["bad_samples"]["count"] == len(why)


def test_eval_stop_ends_at_the_first_bad_sample(hostile, fake_model, capsys):
    path, _ = hostile
    rc = main(["eval", "--data", str(path), "--model", "m", "--on-bad-sample", "stop"])
    out, err = _err_lines(capsys)
    assert rc == 3 and out == "" and len(err) == 1 and f"{path}:2: invalid JSON" in err[0]
    # A bad image found during the run (not while reading the rows) stops it the same way.
    d = path.parent
    _jsonl(d / "run.jsonl", [_row("g1", "p.png"), _row("fifo", "pipe.png"), _row("g2", "p.png")])
    rc = main(["eval", "--data", str(d / "run.jsonl"), "--model", "m", "--on-bad-sample", "stop"])
    out, err = _err_lines(capsys)
    assert rc == 3 and len(err) == 1 and f"run.jsonl:2: {d / 'pipe.png'}: is a named pipe (FIFO)" in err[0]


def test_eval_image_root_and_all_good_exit_0(tmp_path, fake_model, capsys):
    d, other = tmp_path / "d", tmp_path / "elsewhere"
    d.mkdir()
    other.mkdir()
    make_doc(96, 96).save(other / "p.png")
    path = _jsonl(d / "s.jsonl", [_row("a", "../elsewhere/p.png"), _row("b", str(other / "p.png"))])
    assert main(["eval", "--data", str(path), "--model", "m", "--json"]) == 3
    capsys.readouterr()
    rc = main(["eval", "--data", str(path), "--model", "m", "--json", "--image-root", str(other)])
    out, err = _err_lines(capsys)
    assert rc == 0 and json.loads(out)["n"] == 2 and json.loads(out)["bad_samples"]["count"] == 0 and not err
    rc = main(["eval", "--data", str(path), "--model", "m", "--image-root", str(tmp_path / "nope")])
    _, err = _err_lines(capsys)
    assert rc == 2 and len(err) == 1 and "no such folder" in err[0]


def test_eval_every_sample_bad(tmp_path, fake_model, capsys):
    d = tmp_path / "d"
    d.mkdir()
    path = _jsonl(d / "s.jsonl", [_row("a", "/etc/passwd"), "[1, 2]"])
    rc = main(["eval", "--data", str(path), "--model", "m", "--allow-bad-samples"])
    _, err = _err_lines(capsys)
    assert rc == 3 and len(err) == 1 and "no sample could be evaluated; all 2 were bad" in err[0]


def _curate(data: Path, out: Path, *extra: str) -> int:
    return main(["curate", "--model", "m", "--data", str(data), "-o", str(out), "--judge", "exact",
                 "--max-new-tokens", "4", "--no-progress", *extra])


def test_curate_skips_reports_exits_3_and_resume_retries(hostile, fake_model, tmp_path, capsys):
    path, why = hostile
    out = tmp_path / "cur"
    rc = _curate(path, out)
    stdout, err = _err_lines(capsys)
    assert rc == 3 and f"{len(why)} bad" in stdout and err[-1].startswith("error: ")
    report = json.loads((out / "report.json").read_text())  # the outputs are complete before the exit
    got = {int(b["where"].rsplit(":", 1)[1]): b["reason"] for b in report["bad_samples"]["samples"]}
    assert set(got) == set(why) and all(r in got[n] for n, r in why.items())
    assert "## Bad samples" in (out / "report.md").read_text()
    recs = {json.loads(x)["id"]: json.loads(x) for x in (out / "curation.jsonl").read_text().splitlines()}
    assert recs["g1"]["status"] == recs["g2"]["status"] == "ok"
    assert recs["fifo"]["status"] == "error" and recs["fifo"]["where"] == f"{path}:4"
    # --allow-bad-samples: same outputs, exit 0.
    assert _curate(path, tmp_path / "cur2", "--allow-bad-samples") == 0
    capsys.readouterr()
    # Resume retries the errors: with the page fixed and the bad rows gone, the run completes and exits 0.
    (path.parent / "pipe.png").unlink()
    make_doc(96, 96).save(path.parent / "pipe.png", format="PNG")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[i - 1] for i in (1, 4, 8)) + "\n")
    assert _curate(path, out) == 0
    recs = [json.loads(x) for x in (out / "curation.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs if r["id"] == "fifo"] == ["fifo", "fifo"] and recs[-1]["status"] == "ok"
    assert sum(r["id"] == "g1" for r in recs) == 1  # done samples are not redone


def test_curate_stop_and_genuine_bugs(hostile, fake_model, tmp_path, capsys):
    path, _ = hostile
    rc = _curate(path, tmp_path / "s", "--on-bad-sample", "stop")
    _, err = _err_lines(capsys)
    assert rc == 3 and len(err) == 1 and f"{path}:2: invalid JSON" in err[0]
    assert not (tmp_path / "s").exists()  # rows are checked before anything is written
    d = path.parent
    _jsonl(d / "run.jsonl", [_row("g1", "p.png"), _row("fifo", "pipe.png"), _row("g2", "p.png")])
    rc = _curate(d / "run.jsonl", tmp_path / "t", "--on-bad-sample", "stop")
    _, err = _err_lines(capsys)
    assert rc == 3 and len(err) == 1 and "run.jsonl:2:" in err[0] and "named pipe" in err[0]
    ids = [json.loads(x)["id"] for x in (tmp_path / "t" / "curation.jsonl").read_text().splitlines()]
    assert ids == ["g1", "fifo"]  # the error is on record, so a resume retries it
    # A genuine bug is not a bad sample: it surfaces.
    _jsonl(d / "bug.jsonl", [_row("g1", "p.png"), _row("b", "p.png", question="BUG")])
    with pytest.raises(RuntimeError, match="a bug"):
        _curate(d / "bug.jsonl", tmp_path / "u")


def test_data_cannot_break_the_one_line_error(tmp_path, fake_model, capsys):
    d = tmp_path / "d"
    d.mkdir()
    path = _jsonl(d / "s.jsonl", [_row("a", "../x\nerror: fake\x1b[2J.png")])
    rc = main(["eval", "--data", str(path), "--model", "m", "--on-bad-sample", "stop"])
    _, err = _err_lines(capsys)
    assert rc == 3 and len(err) == 1 and "\x1b" not in err[0] and "\\n" in err[0]


def test_help_documents_the_flags(capsys):
    for cmd in (["eval"], ["curate"]):
        assert main([*cmd, "--help"]) == 0
        text = capsys.readouterr().out
        for flag in ("--image-root", "--on-bad-sample", "--allow-bad-samples", "3"):
            assert flag in text, (cmd, flag)


# ----------------------------------------------------------------------------------------------- fuzzing
def _seeds() -> list[bytes]:
    img = make_doc(40, 30)
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"):
        buf = io.BytesIO()
        try:
            img.save(buf, format=fmt)
        except (OSError, KeyError):  # a format this Pillow build cannot write
            continue
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def damaged_images(draw):
    """A valid small image cut short, with bytes flipped, or with junk appended; or plain random bytes."""
    kind = draw(st.sampled_from(["cut", "flip", "append", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return bytes(data) + draw(st.binary(max_size=256))


@FUZZ
@given(damaged_images())
def test_fuzz_load_image_bytes(data):
    try:
        img = load_image(data, max_pixels=4_000_000)
    except ImageError:
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 4))
@given(damaged_images())
def test_fuzz_load_image_files(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.img"
        p.write_bytes(data)
        try:
            load_image(p, max_pixels=4_000_000)
        except ImageError:
            pass


_KEYS = ["id", "image", "question", "answers", "answer", "query", "label", "text", "options", "choices",
         "evidence_box", "needs_detail", "crop_ids", "source", "meta", "question_id", "img", "messages"]
_json = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False)
                     | st.text(max_size=20) | st.sampled_from(["p.png", "../p.png", "/etc/passwd", "pipe.png", ""]),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                     max_leaves=12)
_rows = st.lists(st.one_of(st.dictionaries(st.sampled_from(_KEYS), _json, max_size=8), _json,
                           st.text(max_size=40)), min_size=1, max_size=6)


def _write_rows(folder: Path, rows) -> Path:
    make_doc(32, 32).save(folder / "p.png")
    lines = [r if isinstance(r, str) and r.strip() else json.dumps(r) for r in rows]
    p = folder / "d.jsonl"
    p.write_text("\n".join(x.replace("\n", " ") for x in lines) + "\n")
    return p


@FUZZ
@given(_rows, st.sampled_from(sorted(BENCHMARKS)))
def test_fuzz_data_rows(rows, benchmark):
    with tempfile.TemporaryDirectory() as d:
        path = _write_rows(Path(d), rows)
        bad = BadSamples()
        samples = load_benchmark(benchmark, path, bad=bad)  # skip policy: nothing but the file itself can fail
        for s in samples:
            try:
                s.load_image()
            except ImageError:
                pass
        try:
            load_benchmark(benchmark, path)
        except DataError:
            pass
        try:
            read_samples(path)
        except DataError:
            pass


@FUZZ
@given(_rows)
def test_fuzz_data_rows_stop(rows):
    with tempfile.TemporaryDirectory() as d:
        path = _write_rows(Path(d), rows)
        try:
            list(iter_benchmark("samples", path, bad=BadSamples("stop")))
        except BadSamplesError as e:
            assert str(path) in str(e) and len(str(e).splitlines()) == 1
        except DataError:  # a file-level problem (none here), never another exception
            pass


_FRAGMENTS = ["<tool_call>", "</tool_call>", '{"name": "crop", "arguments": ', '{"regions": ', "regions", "[", "]",
              "{", "}", '"', "'", ",", ";", "0", "3", "9", "11", "all", "-1", "1e999", "nan", "<zoom>", "</zoom>",
              "<answer>", "</answer>", "<think>", "(", ")", "\n", " ", "crop", "<crop>", "[3]", "<|im_end|>",
              "<zoom>[0, 0, 10, 10]</zoom>", "1e308", "-0", "0.0000001", "320", "240", "99999"]
_texts = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=5),
                                                   max_size=30).map("".join))


_PAGE = Image.new("RGB", (320, 240))


@FUZZ
@given(_texts, st.sampled_from(sorted(PROTOCOLS)))
def test_fuzz_protocol_parsers(text, name):
    """Model output is untrusted too: parsing it, and serving what it asked for, return or raise typed errors."""
    from edge_awares.views import Geometry

    protocol = get_protocol(name)
    try:
        parsed = protocol.parse(text, AWARES_CROPS)
        assert parsed.kind in ("answer", "request", "invalid")
        assert isinstance(protocol.answer_text(text), str)
    except ProtocolError:
        return
    if parsed.kind != "answer":
        geometry = protocol.geometry(Geometry())
        try:
            views = protocol.crop_views(parsed, _PAGE, AWARES_CROPS, geometry, protocol.first_view(_PAGE, geometry))
        except EdgeAwaresError:
            return
        assert all(v.n_tokens > 0 for v in views)


def test_fuzz_only_typed_errors_escape():
    # What "typed" means above: every error the fuzz tests allow is a user error the CLI prints as one line.
    assert all(issubclass(e, EdgeAwaresError) for e in (ImageError, DataError, BadSamplesError, ProtocolError))
