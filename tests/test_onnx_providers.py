"""Execution providers: unavailable ones are a typed error naming what to install; the TensorRT options are
built from the manifest (profiles spanning the geometry's view sizes, engine cache, fp16, INT8 only from
Q/DQ). TensorRT itself cannot run here, so only the options are tested."""

from __future__ import annotations

import pytest

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)
from edge_awares.errors import ConfigError, ProviderUnavailableError
from edge_awares.manifest import load_manifest
from edge_awares.runtimes import onnx as rt


def test_unknown_provider_lists_the_legal_ones():
    with pytest.raises(ConfigError, match="cpu, cuda, tensorrt"):
        rt.check_provider("npu")


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_missing_provider_is_a_typed_error(provider, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        rt.check_provider(provider)


def test_cli_reports_missing_provider_on_one_line(tiny_engine, tmp_path, capsys, doc_image, monkeypatch):
    import onnxruntime as ort

    from edge_awares.cli import main

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    img = tmp_path / "d.png"
    doc_image.save(img)
    assert main(["ask", str(img), "q", "--engine", str(tiny_engine), "--provider", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider" in err and "Traceback" not in err


def _shapes(spec: str) -> dict[str, list[int]]:
    out = {}
    for item in spec.split(","):
        name, dims = item.split(":")
        out[name] = [int(d) for d in dims.split("x")]
    return out


def test_tensorrt_options_from_manifest(tiny_engine, tmp_path):
    m = load_manifest(tiny_engine)
    opts = rt.tensorrt_options(m, tmp_path / "trt")
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert opts["trt_fp16_enable"] == "True" and opts["trt_int8_enable"] == "False"
    lo, opt, hi = (_shapes(opts[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    assert set(lo) == set(m.graph("vision")["inputs"])
    g = m.data["geometry"]
    feat = m.model["vision"]["in_features"]
    assert lo["pixel_values"] == [4, feat] and lo["window_index"] == [1, 4]
    assert hi["pixel_values"][0] >= g["max_pixels"] // 196 // 4 * 4
    for name in lo:
        assert all(a <= b <= c for a, b, c in zip(lo[name], opt[name], hi[name])), name
    assert hi["merge_order"][0] * 4 == hi["pixel_values"][0]
    assert hi["window_index"][1] == m.model["vision"]["window_patches"]


def test_tensorrt_profile_follows_the_protocol_geometry(tiny_engine, tmp_path):
    """awares caps every view at 2048 visual tokens, ergo at its max_tokens: the max profile follows."""
    data = load_manifest(tiny_engine).data
    data["protocol"] = {"name": "ergo", "max_tokens": 100, "margin": 0.0}
    hi = _shapes(rt.tensorrt_options(data, tmp_path, max_views=1)["trt_profile_max_shapes"])
    assert hi["pixel_values"][0] == 100 * 4 and hi["merge_order"] == [100]


def test_tensorrt_int8_only_for_qdq_graph(tiny_engine, tmp_path):
    data = load_manifest(tiny_engine).data
    data["backends"]["onnx"]["graphs"]["vision"]["quantization"] = "qdq-int8"
    assert rt.tensorrt_options(data, tmp_path)["trt_int8_enable"] == "True"


def test_tensorrt_provider_list_keeps_decoder_on_cuda(tiny_engine):
    m = load_manifest(tiny_engine)
    vision = rt._providers("tensorrt", "vision", m, None)
    decoder = rt._providers("tensorrt", "decoder", m, None)
    assert vision[0][0] == "TensorrtExecutionProvider" and vision[1][0] == "CUDAExecutionProvider"
    assert decoder[0][0] == "CUDAExecutionProvider"
    assert rt._providers("cpu", "decoder", m, None) == ["CPUExecutionProvider"]
