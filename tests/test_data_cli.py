"""`edge-awares data synth` and `edge-awares curate` through the CLI entry point: summaries, files, one-line
errors without tracebacks, and a command module that imports without torch."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from edge_awares.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "-n", "5", "-o", str(d), "--seed", "2"]) == 0
    return d


def test_synth_writes_and_summarises(tmp_path, capsys):
    d = tmp_path / "s"
    assert main(["data", "synth", "-n", "4", "-o", str(d), "--seed", "1", "--width", "320", "--height", "360",
                 "--detail-share", "1.0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("wrote 4 samples") and "needs detail 4 (100%)" in out and "crop ids" in out
    recs = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["needs_detail"] for r in recs)
    assert Image.open(d / recs[0]["image"]).size == (320, 360)


def test_curate_cli_end_to_end(tiny_ckpt, synth_dir, tmp_path, capsys):
    out = tmp_path / "cur"
    code = main(["curate", "--model", str(tiny_ckpt), "--data", str(synth_dir), "-o", str(out),
                 "--max-new-tokens", "4", "--both-wrong", "hr", "--oracle", "gt"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert line.startswith("curated 5 of 5 samples") and "HR 5 (100%)" in line and "report" in line
    assert (out / "report.md").is_file() and len((out / "trajectories.jsonl").read_text().splitlines()) == 5
    # again: everything is done, nothing re-run
    assert main(["curate", "--model", str(tiny_ckpt), "--data", str(synth_dir), "-o", str(out),
                 "--max-new-tokens", "4", "--both-wrong", "hr", "--oracle", "gt"]) == 0
    assert "(0 this run" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["data", "synth", "-n", "0", "-o", "{tmp}/x"], "-n 0 is out of range"),
    (["data", "synth", "-n", "2", "-o", "{tmp}/x", "--detail-share", "2"], "detail_share"),
    (["curate", "--model", "{ckpt}", "--data", "{tmp}/missing", "-o", "{tmp}/o"], "no such data"),
    (["curate", "--model", "{ckpt}", "--data", "{empty}", "-o", "{tmp}/o"], "no samples"),
    (["curate", "--model", "{tmp}", "--data", "{synth}", "-o", "{tmp}/o"], "no config.json"),
    (["curate", "--model", "{ckpt}", "--data", "{synth}", "-o", "{tmp}/o", "--judge", "llm"], "--judge-url"),
    (["curate", "--model", "{ckpt}", "--data", "{synth}", "-o", "{tmp}/o", "--judge-threshold", "3"],
     "out of range"),
    (["curate", "--model", "{ckpt}", "--data", "{garbage}", "-o", "{tmp}/o"], "invalid JSON"),
])
def test_bad_input_one_line_no_traceback(tiny_ckpt, synth_dir, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("EDGE_AWARES_JUDGE_URL", raising=False)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    subs = {"{tmp}": str(tmp_path), "{ckpt}": str(tiny_ckpt), "{synth}": str(synth_dir),
            "{empty}": str(tmp_path / "empty.jsonl"), "{garbage}": str(tmp_path / "garbage.jsonl")}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_data_commands_import_without_torch():
    code = ("import sys; import edge_awares.cli, edge_awares.data.cli, edge_awares.data.curate; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'rapidocr')]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
