"""No deprecated argument in our calls into transformers / TRL: the reference backend's forward and generate, an
export of the tiny preset, one SFT step and the GRPO arguments, run with every warning recorded.

pyproject's filterwarnings turns Deprecation/FutureWarnings attributed to edge_awares into errors, but a library
warning about an argument we pass is attributed to the library frame (transformers' `deprecate_kwarg` warns with
stacklevel=2, i.e. from torch's Module.__call__), so those are caught here by name instead.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
OURS = ("edge_awares", "export", "runtimes", "calibration")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def our_keywords() -> set[str]:
    """Every keyword-argument name the project's sources pass in a call (`f(x, name=...)`), and every
    identifier-like string constant (keywords passed as `**{name: ...}` or chosen at run time)."""
    names = set()
    for d in OURS:
        for p in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if isinstance(node, ast.Call):
                    names.update(k.arg for k in node.keywords if k.arg)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                    names.add(node.value)
    return names


@contextlib.contextmanager
def recorded():
    """Every warning (each occurrence) and every transformers/TRL log line that says 'deprecat'."""
    logs = []

    class Keep(logging.Handler):
        def emit(self, record):
            if "deprecat" in record.getMessage().lower():
                logs.append(record.getMessage())

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("transformers", "trl", "peft", "accelerate")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught, logs
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def offending(caught, logs) -> list[str]:
    """Deprecations that name an argument we pass (the first `backticked` name of the message is the deprecated
    one in transformers' and TRL's wording), or that were raised from our own files."""
    ours = our_keywords()
    bad = []
    for w in caught:
        if not issubclass(w.category, DEPRECATIONS):
            continue
        msg = str(w.message)
        first = re.findall(r"`([A-Za-z_][\w.]*)`", msg)[:1]
        in_our_files = any(f"/{d}/" in w.filename for d in OURS) and "site-packages" not in w.filename
        if in_our_files or (first and first[0] in ours):
            bad.append(f"{w.category.__name__} at {w.filename}:{w.lineno}: {msg}")
    for msg in logs:
        first = re.findall(r"`([A-Za-z_][\w.]*)`", msg)[:1]
        if first and first[0] in ours:
            bad.append(f"log: {msg}")
    return bad


def test_the_check_sees_a_deprecated_keyword():
    caught = [warnings.WarningMessage(FutureWarning("`past_key_values` is deprecated; use `cache`"), FutureWarning,
                                      "/x/site-packages/torch/nn/modules/module.py", 1)]
    assert offending(caught, []) and not offending([], ["`not_an_argument_of_ours_xyz` is deprecated"])


def test_pyproject_makes_our_own_deprecations_errors():
    for category in DEPRECATIONS:
        with pytest.raises(category):
            warnings.warn_explicit("old", category, "edge_awares/x.py", 1, module="edge_awares.x")
    with pytest.warns(FutureWarning):  # a library's own: recorded, not fatal
        warnings.warn_explicit("old", FutureWarning, "transformers/x.py", 1, module="transformers.x")


def test_reference_backend_forward_and_generate(tiny_ckpt, doc_image):
    from edge_awares.api import open_session
    from edge_awares.data.judge import LocalJudge

    with recorded() as (caught, logs):
        session = open_session(model=tiny_ckpt, protocol="tool_call")
        session.run(doc_image, "What is the total?", max_new_tokens=3)
        LocalJudge(str(tiny_ckpt), max_new_tokens=2).complete("Is 42 the total?")  # transformers' generate()
    assert not offending(caught, logs), "\n".join(offending(caught, logs))


def test_export_of_the_tiny_preset(tiny_ckpt, tmp_path):
    pytest.importorskip("onnx")
    from edge_awares.export.engine import ExportConfig, export_engine

    with recorded() as (caught, logs):
        export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "engine")), log=lambda m: None)
    assert not offending(caught, logs), "\n".join(offending(caught, logs))


def test_one_sft_step_and_the_grpo_arguments():
    pytest.importorskip("trl")
    from edge_awares.train.checkpoint import resolve_placement
    from edge_awares.train.config import GRPORunConfig, SFTRunConfig
    from edge_awares.train.grpo import grpo_args
    from edge_awares.train.sft import train_sft

    from test_train_support import fixed_request_trajectories, one_thread, root, tiny_base

    base, data = tiny_base(), fixed_request_trajectories()
    with recorded() as (caught, logs), one_thread():
        train_sft(SFTRunConfig(model=str(base), data=str(data), output=str(root() / "deprecations-sft"), max_steps=1,
                               val_fraction=0.0, save_strategy="no", logging_steps=1, gradient_checkpointing=True),
                  log=lambda *a: None)
        grpo_args(GRPORunConfig(model=str(base), data=str(data), output=str(root() / "deprecations-grpo"),
                                gradient_checkpointing=True), resolve_placement("fp32"), 64)
    assert not offending(caught, logs), "\n".join(offending(caught, logs))
