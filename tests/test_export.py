"""Export: atomic placement (a failed export leaves nothing), quantized precisions (load, run both turns, stay
within the deviation bounds their manifest records, smaller than fp32), the Gemm -> MatMul rewrite that the
int4 quantizer needs, and the `export` / `profile` / `ask --engine` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_doc

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)
from _engine_fixtures import open_onnx, open_torch
from edge_awares.errors import ConfigError, ExportError
from edge_awares.manifest import load_manifest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if name in p.name]


def test_failed_verification_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    from edge_awares.export import engine as eng
    from edge_awares.export import verify

    real = verify.compare_to_reference

    def corrupt(*a, **kw):
        dev = real(*a, **kw)
        dev.tokens_equal, dev.flip_gaps = False, [5.0]  # a clear flip, far beyond the logit error
        return dev

    monkeypatch.setattr(verify, "compare_to_reference", corrupt)
    out = tmp_path / "eng"
    with pytest.raises(ExportError, match="do not reproduce"):
        eng.export_engine(eng.ExportConfig(checkpoint=str(tiny_ckpt), output=str(out)), log=lambda m: None)
    assert not out.exists() and _leftovers(tmp_path, "eng") == []


def test_near_tie_flip_is_recorded_not_fatal(tiny_ckpt, tmp_path, monkeypatch):
    from edge_awares.export import engine as eng
    from edge_awares.export import verify

    real = verify.compare_to_reference

    def tie(*a, **kw):
        dev = real(*a, **kw)
        dev.tokens_equal, dev.flip_gaps = False, [0.0]
        return dev

    monkeypatch.setattr(verify, "compare_to_reference", tie)
    out = eng.export_engine(eng.ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "e")), log=lambda m: None)
    rec = load_manifest(out).verification
    assert rec["fp32"]["tokens_equal"] is False and rec["fp32"]["ties_only"] is True
    assert rec["bounds"]["tokens_equal"] is False


def test_calibration_set_from_images_and_folders(tmp_path):
    from edge_awares.calibration.vision import DEFAULT_CROP_BATCHES, VisionCalibrationReader, make_calibration_set
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.export.engine import expand_images
    from edge_awares.protocols import get_protocol
    from edge_awares.views import Geometry

    (tmp_path / "imgs").mkdir()
    for i, size in enumerate([(400, 300), (200, 500)]):
        make_doc(*size, seed=i).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    paths = expand_images([tmp_path / "imgs"])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["0.png", "1.png"]
    calib = make_calibration_set(paths, get_protocol("tool_call"), AWARES_CROPS, Geometry(max_pixels=256 * 28 * 28))
    assert calib.summary()["batches"] == 2 * (1 + len(DEFAULT_CROP_BATCHES))
    assert calib.source == "2 user image(s)"
    reader = VisionCalibrationReader(calib, 2, 112, 14)
    feeds = [reader.get_next() for _ in range(calib.summary()["batches"])]
    assert reader.get_next() is None and set(feeds[0]) == {"pixel_values", "rotary_pos", "window_index",
                                                           "window_back", "image_index", "image_back", "merge_order"}
    reader.rewind()
    assert reader.get_next() is not None


def test_crash_midway_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    from edge_awares.export import builder
    from edge_awares.export import engine as eng

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "build_decoder", boom)
    out = tmp_path / "eng"
    with pytest.raises(ExportError, match="disk full"):
        eng.export_engine(eng.ExportConfig(checkpoint=str(tiny_ckpt), output=str(out), precision="int8"),
                          log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tiny_ckpt, tmp_path):
    from edge_awares.errors import OutputError
    from edge_awares.export.engine import ExportConfig

    (tmp_path / "eng").mkdir()
    ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "eng")).validate()  # an empty folder is fine
    (tmp_path / "eng" / "manifest.json").write_text('{"format": "edge-awares-engine"}')  # an engine of ours
    with pytest.raises(OutputError, match="--force"):
        ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "eng")).validate()
    ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "eng"), force=True).validate()
    with pytest.raises(ConfigError, match="precision"):
        ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "x"), precision="int2").validate()


def test_quantized_engine_runs_both_turns_within_bounds(quantized_engine, tiny2_ckpt):
    from edge_awares.export.verify import compare_sessions

    m = load_manifest(quantized_engine)
    rec = m.verification
    assert m.data["sizes"]["ratio_to_fp32"] < 0.75
    s = open_onnx(quantized_engine, max_new_tokens=6)
    r = s.run(make_doc(500, 700, seed=2), "What is the total?", crops="0,4")
    assert [t.kind for t in r.turns] == ["prompt", "crop"] and len(r.turns[1].generated_ids) >= 1
    # Re-measure against the reference: within what the export recorded.
    ref = open_torch(tiny2_ckpt, m.protocol().name, max_new_tokens=12)
    cand = open_onnx(quantized_engine, max_new_tokens=12)
    dev = compare_sessions(ref, cand, max_new_tokens=12)
    assert dev.rel_logit_err <= rec["bounds"]["rel_logit_err"]
    assert dev.top1_agreement >= rec["bounds"]["top1_agreement"]
    assert dev.rel_logit_err == pytest.approx(rec["candidate"]["rel_logit_err"], rel=0.5, abs=1e-4)


def test_quantized_graphs_have_the_expected_operators(quantized_engine):
    m = load_manifest(quantized_engine)
    dec = onnx.load(str(m.path("decoder")), load_external_data=False)
    vis = onnx.load(str(m.path("vision")), load_external_data=False)
    dec_ops = {n.op_type for n in dec.graph.node}
    vis_ops = {n.op_type for n in vis.graph.node}
    assert "GroupQueryAttention" in dec_ops
    if m.precision == "int4":
        assert "MatMulNBits" in dec_ops and "MatMul" not in dec_ops and "Gemm" not in dec_ops
    if m.precision == "int8":
        assert "DynamicQuantizeMatMul" in dec_ops and "MatMul" not in dec_ops
    if m.precision in ("int8", "int4"):  # vision: dynamic int8 by default
        assert "DynamicQuantizeMatMul" in vis_ops and m.graph("vision")["quantization"].startswith("dynamic-int8")
    if m.precision == "fp16":
        from edge_awares.runtimes.onnx import _embedding_table

        assert m.graph("decoder")["kv"]["dtype"] == "float16"
        assert _embedding_table(m.path("embeddings"), m.graph("embeddings")).dtype == np.float16


def test_gemm_to_matmul_keeps_the_function():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edge_awares.export.quantize import gemm_to_matmul

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="g")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((3, 5)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cli_export_profile_and_ask(tiny_ckpt, tmp_path, capsys):
    from edge_awares.cli import main

    img = tmp_path / "doc.png"
    make_doc(640, 480).save(img)
    eng = tmp_path / "engine"
    assert main(["export", str(tiny_ckpt), "-o", str(eng), "--protocol", "awares", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backends"]["onnx"]["verification"]["fp32"]["tokens_equal"]
    assert load_manifest(eng).protocol().name == "awares"

    trace = tmp_path / "trace.json"
    assert main(["profile", str(img), "What is the total?", "--engine", str(eng), "--runs", "2", "--crops", "0,4",
                 "--max-new-tokens", "5", "--trace", str(trace), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [t["kind"] for t in rep["turns"]] == ["prompt", "crop"]
    crop = rep["turns"][1]
    assert crop["visual_tokens"] > 0 and crop["vision_ms"] > 0 and crop["generated_tokens"] == 5
    assert crop["decode_tokens_per_s"] > 0 and rep["crop_turn_ms"] > 0 and rep["memory"]["peak_rss_mb"] > 0
    assert 0 < rep["rtr"] and len(rep["total_ms_runs"]) == 2
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["name"] for e in events if e["ph"] == "X"}
    assert {"run 1", "run 2", "vision", "prefill", "decode_step"} <= names
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in events if e["ph"] == "X")

    assert main(["ask", str(img), "What is the total?", "--engine", str(eng), "--protocol", "awares",
                 "--crops", "0,4", "--max-new-tokens", "4", "--json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    assert ans["crops"] == ["0", "4"] and ans["engine"] == str(eng)


def test_a_base_model_engine_is_verified_on_its_native_pass(tiny_ckpt, tmp_path):
    """A plain-protocol (base model) engine has no crop turn: its verification runs the low-res conversation and
    the single native pass, and fp32 reproduces the reference's tokens on both."""
    from edge_awares.export import engine as eng

    out = eng.export_engine(eng.ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "base"),
                                             protocol="plain"), log=lambda m: None)
    m = load_manifest(out)
    assert m.protocol().name == "plain"
    rec = m.verification
    assert rec["crop_policies"] == ["model", "native"] and rec["fp32"]["tokens_equal"] is True
