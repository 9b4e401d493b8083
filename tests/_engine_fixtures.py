"""Engine fixtures for the ONNX tests: engines exported once per test session from conftest's tiny checkpoints.

Import the fixtures into a test module (`from _engine_fixtures import *`); pytest registers them there.
Exports are cached by (checkpoint, precision), so every module shares the same directories.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

_CACHE: dict[tuple[str, str], Path] = {}


def export_cached(ckpt: Path, root: Path, precision: str = "fp32", **options) -> Path:
    """Export `ckpt` at `precision` into `root` once per test session; returns the engine directory."""
    key = (str(ckpt), precision)
    if key not in _CACHE:
        from edge_awares.export.engine import ExportConfig, export_engine

        out = root / f"{Path(ckpt).name}-{precision}"
        if precision != "fp32":
            # Random weights: a quantized engine's deviation is measured and recorded, but the acceptance
            # gate is for trained policies (tests/test_export_streaming.py exercises it).
            options.setdefault("gate", False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_engine(ExportConfig(checkpoint=str(ckpt), output=str(out), precision=precision, **options),
                          log=lambda msg: None)
        _CACHE[key] = out
    return _CACHE[key]


@pytest.fixture(scope="session")
def engines_root(tmp_path_factory):
    pytest.importorskip("onnx")
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def tiny_engine(tiny_ckpt, engines_root):
    return export_cached(tiny_ckpt, engines_root, "fp32")


@pytest.fixture(scope="session")
def tiny2_engine(tiny2_ckpt, engines_root):
    return export_cached(tiny2_ckpt, engines_root, "fp32")


@pytest.fixture(scope="session", params=["fp16", "int8", "int4"])
def quantized_engine(request, tiny2_ckpt, engines_root):
    return export_cached(tiny2_ckpt, engines_root, request.param)


def open_onnx(engine: Path, protocol: str | None = None, **config):
    """An engine session, with the protocol-override warning silenced (tests override on purpose)."""
    from edge_awares.runtimes import open_engine_session
    from edge_awares.session import SessionConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_engine_session(engine, protocol=protocol, config=SessionConfig(**config) if config else None)


def open_torch(ckpt: Path, protocol: str = "tool_call", **config):
    from edge_awares.api import open_session
    from edge_awares.session import SessionConfig

    return open_session(model=ckpt, protocol=protocol, config=SessionConfig(**config) if config else None)


__all__ = ["engines_root", "tiny_engine", "tiny2_engine", "quantized_engine", "export_cached",
           "open_onnx", "open_torch"]
