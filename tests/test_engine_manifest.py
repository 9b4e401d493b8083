"""Engine loading validates the manifest: schema version, every file present with its size and sha256, a known
protocol, safe paths. A tampered engine is refused with a typed error that names the problem, and the CLI
prints it on one line."""

from __future__ import annotations

import json
import shutil

import pytest

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)
from _engine_fixtures import open_onnx
from edge_awares.errors import EngineError, EngineIntegrityError, EngineVersionError
from edge_awares.manifest import MANIFEST, SCHEMA_VERSION, load_manifest, seal


@pytest.fixture
def engine_copy(tiny_engine, tmp_path):
    dst = tmp_path / "engine"
    shutil.copytree(tiny_engine, dst)
    return dst


def _edit(engine, fn):
    """Alter the manifest on purpose and re-seal it, so that the check under test fires, not the digest's."""
    path = engine / MANIFEST
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(seal(data)))


def test_exported_manifest_is_complete(tiny_engine):
    m = load_manifest(tiny_engine)
    d = m.data
    assert d["schema_version"] == SCHEMA_VERSION and d["family"] == "qwen2_5_vl" and m.precision == "fp32"
    assert m.backends == ["onnx"] and json.loads((tiny_engine / MANIFEST).read_text())["schema_version"] == 2
    onnx = d["backends"]["onnx"]
    from edge_awares.outputs import MARKER

    assert set(d["files"]) == {p.name for p in tiny_engine.iterdir() if p.name not in (MANIFEST, MARKER)}
    assert d["provenance"]["source_sha256"] and d["provenance"]["versions"]["onnxruntime"]
    assert onnx["verification"]["fp32"]["tokens_equal"] is True
    assert onnx["verification"]["fp32"]["rel_logit_err"] < 1e-4
    assert onnx["graphs"]["decoder"]["kv"]["shared_buffer"] is True
    assert len(onnx["graphs"]["decoder"]["kv"]["past"]) == 2 * d["model"]["num_layers"]
    assert m.crop_set().name == "awares10" and m.protocol().name == "tool_call"
    assert d["special_tokens"]["<|im_end|>"] >= 0


def test_changed_byte_is_refused(engine_copy):
    f = engine_copy / "decoder.onnx.data"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(EngineIntegrityError, match=r"decoder\.onnx\.data.*sha256"):
        open_onnx(engine_copy)


def test_truncated_file_is_refused(engine_copy):
    f = engine_copy / "embed_tokens.npy"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(EngineIntegrityError, match="embed_tokens.npy.*bytes"):
        load_manifest(engine_copy)


def test_missing_file_is_refused(engine_copy):
    (engine_copy / "vision.onnx").unlink()
    with pytest.raises(EngineIntegrityError, match="vision.onnx.*missing"):
        open_onnx(engine_copy)


def test_future_schema_version_is_refused(engine_copy):
    _edit(engine_copy, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(EngineVersionError, match="newer"):
        open_onnx(engine_copy)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["protocol"].update(name="telepathy"), "protocol 'telepathy' is unknown"),
    (lambda d: d.update(family="llava"), "family 'llava'"),
    (lambda d: d.update(format="something-else"), "format"),
    (lambda d: d.pop("files"), "'files'"),
    (lambda d: d["files"].update({"../escape.bin": {"sha256": "0", "bytes": 1}}), "unsafe file path"),
    (lambda d: d["backends"]["onnx"]["graphs"]["decoder"].pop("kv"), "KV-cache layout"),
    (lambda d: d["backends"].update(tflite={"precision": "fp32"}), "backend 'tflite'"),
    (lambda d: d.update(backends={}), "backends is empty"),
    (lambda d: d["backends"].update(gguf={"precision": "q8_0", "files": {"model": "m.gguf", "mmproj": "tokenizer.json"}}),
     "backends.gguf.files.model names 'm.gguf'"),
    (lambda d: d["backends"].update(gguf={"precision": "int8", "files": {}}), "backends.gguf.precision"),
    (lambda d: d["crop_set"].update(crops=[]), "crop set"),
    (lambda d: d["backends"]["onnx"].update(precision="int3"), "precision"),
])
def test_malformed_manifest_names_the_problem(engine_copy, edit, match):
    _edit(engine_copy, edit)
    with pytest.raises(EngineError, match=match):
        load_manifest(engine_copy)


def test_not_an_engine_directory(tmp_path):
    with pytest.raises(EngineError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(EngineError, match="no such engine directory"):
        load_manifest(tmp_path / "nope")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(EngineError, match="unreadable manifest"):
        load_manifest(tmp_path)


def test_cli_prints_one_line_for_a_tampered_engine(engine_copy, tmp_path, capsys, doc_image):
    from edge_awares.cli import main

    img = tmp_path / "d.png"
    doc_image.save(img)
    (engine_copy / "tokenizer.json").write_text("{}")
    assert main(["ask", str(img), "q", "--engine", str(engine_copy)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
