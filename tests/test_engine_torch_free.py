"""The engine runtime runs the whole crop loop with torch, transformers and the `onnx` package unimportable:
import, load, both turns, `ask --engine` and `profile`, in a fresh interpreter with an import blocker."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import make_doc
from fakes import import_blocker

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("torch", "transformers", "onnx", "onnxscript", "onnx_ir", "safetensors")
BODY = textwrap.dedent("""
    import json, sys
    import edge_awares.runtimes as rt
    from edge_awares.images import load_image
    engine, image = sys.argv[1], sys.argv[2]
    s = rt.open_engine_session(engine)
    r = s.run(load_image(image), "What is the total?", crops="0,4", max_new_tokens=4)
    assert [t.kind for t in r.turns] == ["prompt", "crop"], r.turns
    from edge_awares.cli import main
    assert main(["ask", image, "q", "--engine", engine, "--crops", "all", "--max-new-tokens", "3", "--json"]) == 0
    assert main(["profile", image, "q", "--engine", engine, "--runs", "1", "--warmup", "0", "--max-new-tokens",
                 "3", "--json"]) == 0
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
    print(json.dumps({"leaked": leaked, "ids": [int(i) for i in r.ids]}))
""")
SCRIPT = import_blocker(*BLOCKED) + BODY


def test_engine_runtime_is_torch_free(tiny_engine, tmp_path):
    img = tmp_path / "d.png"
    make_doc(500, 400).save(img)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_engine), str(img)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["leaked"] == [] and len(last["ids"]) > 0


def test_llama_cpp_runtime_is_torch_free_and_onnxruntime_free(tiny2_ckpt, tmp_path):
    """The GGUF backend needs neither torch nor onnxruntime at run time."""
    import pytest

    pytest.importorskip("llama_cpp")
    from edge_awares.export.engine import ExportConfig, export_engine

    engine = export_engine(ExportConfig(checkpoint=str(tiny2_ckpt), output=str(tmp_path / "g"), precision="q8_0",
                                        formats=("gguf",)), log=lambda m: None)
    img = tmp_path / "d.png"
    make_doc(500, 400).save(img)
    script = import_blocker(*BLOCKED, "onnxruntime") + BODY
    out = subprocess.run([sys.executable, "-c", script, str(engine), str(img)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["leaked"] == [] and len(last["ids"]) > 0
