"""No pickle anywhere weights are read: a static scan of the project's sources for unpickling calls, and a pickle-only
checkpoint (`pytorch_model.bin`, no safetensors) refused with ModelLoadError by every loading path with torch.load
and the unpickler rigged to fail the test if anything touches them."""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import pytest

from edge_awares.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("edge_awares", "export", "runtimes", "calibration", "benchmarks")
# from_pretrained of these reads JSON/text (tokenizer, config, processor files), never pickled weights.
NO_WEIGHTS = ("Tokenizer", "TokenizerFast", "Config", "Processor", "ImageProcessor", "ImageProcessorPil",
              "FeatureExtractor")
# module -> its unpickling functions (anything that runs an Unpickler on file contents).
UNPICKLERS = {"pickle": {"load", "loads", "Unpickler"}, "_pickle": {"load", "loads", "Unpickler"},
              "cPickle": {"load", "loads", "Unpickler"}, "dill": {"load", "loads", "Unpickler"},
              "cloudpickle": {"load", "loads"}, "joblib": {"load"}, "torch": {"load"},
              "torch.serialization": {"load"}, "torch.jit": {"load"}, "pandas": {"read_pickle"},
              "pd": {"read_pickle"}}


def _dotted(node) -> str:
    """`a.b.c` for a Name/Attribute chain, '' for anything else (calls, subscripts)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unpickling call in `source`, as 'line: why'."""
    tree = ast.parse(source, filename)
    aliases = {}  # local name -> module it stands for (import numpy as np, import torch.serialization as ts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if a.name in UNPICKLERS.get(node.module, ()):
                    found.append(f"{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                name = "<expr>.from_pretrained"
            else:
                continue
        head, _, attr = name.rpartition(".")
        module = ".".join([aliases.get(head.split(".")[0], head.split(".")[0])] + head.split(".")[1:]) if head else ""
        if attr in UNPICKLERS.get(module, ()) or attr in UNPICKLERS.get(head.rpartition(".")[2], ()):
            found.append(f"{node.lineno}: {name}()")
        elif module == "numpy" and attr == "load":
            allow = _kw(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{node.lineno}: {name}(allow_pickle=...)")
        elif attr == "from_pretrained":
            receiver = head.rpartition(".")[2]
            if receiver.endswith(NO_WEIGHTS):
                continue
            if not _is_true(_kw(node, "use_safetensors")):
                found.append(f"{node.lineno}: {name}() without use_safetensors=True")
        if _is_true(_kw(node, "trust_remote_code")):
            found.append(f"{node.lineno}: {name}(trust_remote_code=True)")
    return found


def test_the_scan_catches_each_kind():
    src = """
import torch, pickle, joblib
import numpy as np
from torch import load
torch.load("x")
pickle.loads(b"")
joblib.load("x")
np.load("x", allow_pickle=True)
np.load("x")
AutoModel.from_pretrained("x")
AutoModel.from_pretrained("x", use_safetensors=True)
AutoTokenizer.from_pretrained("x")
transformers.AutoConfig.from_pretrained("x")
make().from_pretrained("x", use_safetensors=False)
AutoModel.from_pretrained("x", use_safetensors=True, trust_remote_code=True)
self.torch.load("x")
"""
    hits = pickle_calls(src)
    assert [h.split(":")[0] for h in hits] == ["4", "5", "6", "7", "8", "10", "14", "15", "16"], hits


def test_no_source_file_unpickles():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    bad = [f"{p.relative_to(ROOT)}:{hit}" for p in files for hit in pickle_calls(p.read_text(), str(p))]
    assert not bad, "unpickling calls (use edge_awares.models.load_pretrained, safetensors only):\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------------- dynamic
@pytest.fixture(scope="module")
def bin_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with its weights as a pickle `pytorch_model.bin` and no safetensors file."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("pickle") / "bin-only"
    shutil.copytree(tiny_ckpt, out)
    torch.save(load_file(str(out / "model.safetensors")), out / "pytorch_model.bin")
    for f in out.glob("*.safetensors*"):
        f.unlink()
    return out


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load and pickle's unpicklers fail the test the moment anything calls them."""
    import torch

    touched = []

    def trap(name):
        def fail(*a, **k):
            touched.append(name)
            pytest.fail(f"{name} was called: a pickle checkpoint reached the unpickler")
        return fail

    monkeypatch.setattr(torch, "load", trap("torch.load"))
    monkeypatch.setattr(torch.serialization, "load", trap("torch.serialization.load"))
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, trap(f"pickle.{name}"))
    return touched


def test_the_trap_fires_on_a_plain_from_pretrained(bin_ckpt, no_unpickling):
    """The rig is live: transformers left to itself unpickles the .bin (so the refusals below mean something)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(BaseException):  # pytest.fail's Failed, possibly wrapped by transformers
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(bin_ckpt))  # noqa: the unsafe call, on purpose
    assert no_unpickling


def test_loader_refuses_a_pickle_checkpoint(bin_ckpt, no_unpickling):
    from transformers import AutoModel, AutoModelForCausalLM, Qwen2_5_VLForConditionalGeneration

    from edge_awares.models import load_pretrained

    for classes in (Qwen2_5_VLForConditionalGeneration, AutoModel, (AutoModelForCausalLM, AutoModel)):
        with pytest.raises(ModelLoadError, match="safetensors"):
            load_pretrained(classes, bin_ckpt)
    assert not no_unpickling


def test_reference_backend_and_cli_model_refuse(bin_ckpt, no_unpickling, capsys):
    from edge_awares.cli import main
    from edge_awares.runtimes.reference import TorchBackend

    for streamed in (False, True):
        with pytest.raises(ModelLoadError, match="safetensors"):
            TorchBackend(bin_ckpt, streamed=streamed)
    img = bin_ckpt.parent / "page.png"
    from conftest import make_doc

    make_doc(320, 240).save(img)
    assert main(["ask", str(img), "q", "--model", str(bin_ckpt), "--max-new-tokens", "2"]) != 0
    err = capsys.readouterr().err
    assert "safetensors" in err and "Traceback" not in err
    assert not no_unpickling


def test_local_judge_refuses(bin_ckpt, no_unpickling):
    from edge_awares.data.judge import LocalJudge

    with pytest.raises(ModelLoadError, match="safetensors"):
        LocalJudge(str(bin_ckpt)).complete("Is 2 the answer?")
    assert not no_unpickling


def test_training_loaders_refuse(bin_ckpt, no_unpickling):
    pytest.importorskip("trl")
    from edge_awares.train.checkpoint import load_model, resolve_placement

    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(bin_ckpt, resolve_placement("fp32"))
    assert not no_unpickling
