"""The `edge-awares` CLI: both turns on a tiny checkpoint with --json, and every bad input exits non-zero
with one line and no traceback."""

import json
import subprocess
import sys

import pytest

from edge_awares.cli import main

from conftest import make_doc


@pytest.fixture(scope="module")
def doc_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "doc.png"
    make_doc(640, 480).save(p)
    return p


def test_ask_json_two_turns_console_script(tiny_ckpt, doc_path):
    out = subprocess.run([sys.executable, "-m", "edge_awares.cli", "ask", str(doc_path), "What is the total?",
                          "--model", str(tiny_ckpt), "--crops", "0,4", "--json", "--max-new-tokens", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("answer", "crops", "rtr", "visual_tokens", "native_visual_tokens", "turns", "pixel_ratio"):
        assert key in d
    assert d["crops"] == ["0", "4"] and len(d["turns"]) == 2
    for t in d["turns"]:
        for key in ("visual_tokens", "prefill_tokens", "generated_ids", "vision_ms", "prefill_ms", "decode_ms"):
            assert key in t
    assert d["turns"][1]["prefill_tokens"] < d["turns"][0]["prefill_tokens"] + d["turns"][1]["visual_tokens"]
    assert d["rtr"] == pytest.approx(d["visual_tokens"] / d["native_visual_tokens"])


def test_ask_human_output(tiny_ckpt, doc_path, capsys):
    assert main(["ask", str(doc_path), "What?", "--model", str(tiny_ckpt), "--crops", "none",
                 "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "Answer:" in out and "RTR:" in out and "prefill" in out and "…" not in out


@pytest.mark.parametrize("args,message", [
    (["ask", "{missing}", "q"], "no such file"),
    (["ask", "{garbage}", "q"], "not a recognised image"),
    (["ask", "{doc}", "q", "--crops", "0,9"], "unknown crop id '9'"),
    (["ask", "{doc}", "   "], "question is empty"),
    (["ask", "{doc}", "q", "--max-context", "100"], "prompt too long"),
    (["ask", "{doc}", "q", "--max-new-tokens", "0"], "--max-new-tokens 0 is out of range; legal: [1, 2**16]"),
    (["ask", "{doc}", "q", "--model", "{tmp}"], "no config.json"),
    (["ask", "{doc}", "q", "--model", "{ckpt}", "--engine", "{tmp}"], "not both"),
])
def test_bad_input_one_line_no_traceback(tiny_ckpt, doc_path, tmp_path, capsys, args, message):
    (tmp_path / "garbage.png").write_text("not an image")
    subs = {"{missing}": str(tmp_path / "missing.png"), "{garbage}": str(tmp_path / "garbage.png"),
            "{doc}": str(doc_path), "{tmp}": str(tmp_path), "{ckpt}": str(tiny_ckpt)}
    argv = [subs.get(a, a) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_ckpt)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_usage_error_exit_code(capsys):
    assert main(["ask", "x.png", "q", "--protocol", "nope"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_ask_show_draws_crops(tiny_ckpt, doc_path, tmp_path, capsys):
    from PIL import Image

    from edge_awares.overlay import _COLOURS

    page = tmp_path / "white.png"
    Image.new("RGB", (640, 480), "white").save(page)
    out = tmp_path / "show.png"
    assert main(["ask", str(page), "q", "--model", str(tiny_ckpt), "--crops", "3", "--max-new-tokens", "2",
                 "--json", "--show", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["show"] == str(out)
    img = Image.open(out).convert("RGB")
    assert img.width == 640 and img.height > 480
    # crop 3 is the bottom-right quadrant (320, 240, 640, 480): its top edge is outlined, the rest stays white
    assert img.getpixel((500, 240)) == _COLOURS[0]
    assert img.getpixel((500, 200)) == (255, 255, 255) and img.getpixel((100, 300)) == (255, 255, 255)
    assert main(["ask", str(doc_path), "q", "--model", str(tiny_ckpt), "--max-new-tokens", "2",
                 "--show", str(tmp_path / "missing" / "x.png")]) == 2


@pytest.mark.parametrize("damage", ["truncated", "config", "missing"])
def test_damaged_checkpoint_with_model_is_one_line(tiny_ckpt, doc_path, tmp_path, capsys, damage):
    """--model on a truncated model.safetensors, a config.json the weights do not fit, or weights with a tensor
    missing (which transformers would fill with random values and only log): one line, exit 2."""
    import os
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    if damage == "truncated":
        with open(ckpt / "model.safetensors", "r+b") as f:
            f.truncate(os.path.getsize(ckpt / "model.safetensors") // 2)
    elif damage == "missing":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(ckpt / "model.safetensors")
        tensors.pop(next(k for k in sorted(tensors) if "mlp.up_proj" in k))
        save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    else:
        cfg = json.loads((ckpt / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        text["intermediate_size"] = 2 * text["intermediate_size"]
        (ckpt / "config.json").write_text(json.dumps(cfg))
    rc = main(["ask", str(doc_path), "What is the total?", "--model", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:")
    assert ("do not fit config.json" if damage == "missing" else "cannot load weights") in err[0]


def test_ask_max_rtr_on_the_shipped_engine(capsys):
    """--max-rtr: the shipped policy's crop for a code question does not fit 0.3, fits 0.5; the summary says so."""
    from pathlib import Path

    from edge_awares.api import demo_engine

    if demo_engine() is None:
        pytest.skip("this checkout has no shipped demo engine")
    page = str(Path(__file__).resolve().parents[1] / "examples" / "cards_b.png")
    q = "What is the code on the green card?"
    assert main(["ask", page, q, "--max-rtr", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["crops"] == [] and out["budget_dropped"] == ["3"] and out["max_rtr"] == 0.3
    assert main(["ask", page, q, "--max-rtr", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "RTR at most 0.5; left out: nothing" in text and "crop id 3" in text
    assert main(["ask", page, q, "--max-rtr", "0"]) == 2
