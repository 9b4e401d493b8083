"""The streaming export: bf16 and hub-layout (sharded) checkpoints, the tied token table stored once, the
streamed reference equal to the resident one, the memory plan and its refusal, the acceptance gate, the
checkpoint's own protocol options and crop set, one default for the context, and the cheap re-check of an
engine that was fully verified before (and what it still catches)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import make_doc

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)

from edge_awares.errors import ConfigError, EngineIntegrityError, ExportGateError, ModelLoadError
from edge_awares.manifest import load_manifest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


def _quiet(msg):
    pass


def _rewrite(src, dst, dtype=None, hub=False, tie=False, shards=1):
    """A copy of checkpoint `src`: weights in `dtype`, keys in the hub layout, sharded with an index."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    cfg = json.loads((dst / "config.json").read_text())
    if tie:
        state.pop("lm_head.weight")
        cfg["tie_word_embeddings"] = True
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
        cfg["dtype"] = str(dtype).split(".")[-1]
    if hub:
        def hub_name(k):
            if k.startswith("model.language_model."):
                return "model." + k[len("model.language_model."):]
            if k.startswith("model.visual."):
                return k[len("model."):]
            return k
        state = {hub_name(k): v for k, v in state.items()}
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = keys[i::shards]
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(dst / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    if shards > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def bf16_hub_ckpt(tiny_ckpt, tmp_path_factory):
    """bf16, hub key names, three shards, tied embeddings: how released Qwen2.5-VL-3B folders look."""
    return _rewrite(tiny_ckpt, tmp_path_factory.mktemp("ck") / "bf16hub", torch.bfloat16, hub=True, tie=True,
                    shards=3)


def test_weight_source_reads_hub_layout_in_stored_dtype(bf16_hub_ckpt, tiny_ckpt):
    from edge_awares.weights import WeightSource

    src, ref = WeightSource(bf16_hub_ckpt), WeightSource(tiny_ckpt)
    assert "lm_head.weight" not in src and set(src.tensors) == set(ref.tensors) - {"lm_head.weight"}
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert src.info(name).dtype == "BF16" and src.stored_bytes * 2 < ref.stored_bytes + 1
    want = torch.from_numpy(ref.array(name)).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(src.array(name), want)


def test_truncated_checkpoint_is_refused(tiny_ckpt, tmp_path):
    from edge_awares.weights import WeightSource

    bad = shutil.copytree(tiny_ckpt, tmp_path / "bad")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        WeightSource(bad)


def test_bf16_hub_checkpoint_exports_exactly_with_the_table_stored_once(bf16_hub_ckpt, tmp_path):
    from edge_awares.export.engine import ExportConfig, export_engine

    out = export_engine(ExportConfig(checkpoint=str(bf16_hub_ckpt), output=str(tmp_path / "e"),
                                     reference="streamed"), log=_quiet)
    m = load_manifest(out).data
    onnx = m["backends"]["onnx"]
    assert onnx["verification"]["fp32"]["tokens_equal"] and onnx["verification"]["reference_weights"] == "streamed"
    emb = onnx["graphs"]["embeddings"]
    # the tied lm_head's [vocab, hidden] matrix inside the decoder's data is the lookup table: no second copy
    assert emb["file"] == "decoder.onnx.data" and "embed_tokens.npy" not in m["files"]
    assert not (out / "embed_tokens.npy").exists()
    weights = m["sizes"]["engine_bytes"] - m["files"]["tokenizer.json"]["bytes"]
    table = int(np.prod(emb["shape"])) * 4
    assert weights < m["sizes"]["fp32_bytes"] * 1.05 < weights + table  # alignment padding only, not the table


def test_streamed_reference_equals_the_resident_one(tiny2_ckpt):
    from edge_awares.backend import RecordingBackend
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.session import Session, SessionConfig
    from edge_awares.tokenizer import TextTokenizer

    info = read_checkpoint(tiny2_ckpt)
    runs = []
    for streamed in (False, True):
        b = RecordingBackend(TorchBackend(tiny2_ckpt, streamed=streamed))
        s = Session(b, TextTokenizer.from_file(tiny2_ckpt / "tokenizer.json"), get_protocol("tool_call"),
                    AWARES_CROPS, info.geometry, SessionConfig(max_new_tokens=5))
        r = s.run(make_doc(500, 400), "What is the total?", crops="0,4")
        runs.append(([t.generated_ids for t in r.turns], np.stack([c[2] for c in b.calls])))
        if streamed:  # nothing stays resident between calls
            assert all(p.is_meta for p in b.inner.model.parameters())
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_plan_is_printed_and_an_impossible_budget_refused(tiny_ckpt, tmp_path):
    from edge_awares.export.engine import ExportConfig, export_engine

    lines = []
    with pytest.raises(ConfigError, match="needs ~.* GiB of memory and the budget is"):
        export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "e"), memory_budget_gb=0.01),
                      log=lines.append)
    assert any(line.startswith("plan: memory peak") for line in lines)
    assert not (tmp_path / "e").exists() and list(tmp_path.iterdir()) == []


def test_plan_estimates_bound_the_real_sizes(tiny2_ckpt, tmp_path):
    from edge_awares.export.engine import ExportConfig, export_engine

    for precision in ("fp32", "int4"):
        out = export_engine(ExportConfig(checkpoint=str(tiny2_ckpt), output=str(tmp_path / precision),
                                         precision=precision, gate=False), log=_quiet)
        m = load_manifest(out).data
        est, real = m["provenance"]["plan"]["engine_bytes"], m["sizes"]["engine_bytes"]
        assert 0.7 * real < est < 1.3 * real, (precision, est, real)


def test_gate_refuses_a_quantized_engine_below_it_and_leaves_nothing(tiny_ckpt, tmp_path):
    from edge_awares.export.engine import ExportConfig, export_engine

    out = tmp_path / "e"
    with pytest.raises(ExportGateError, match="acceptance gate"):
        export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(out), precision="int8", min_top1=1.0,
                                   max_rel_logit_err=1e-6), log=_quiet)
    assert list(tmp_path.iterdir()) == []
    # the same engine passes a gate it meets, and the manifest records the gate
    export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(out), precision="int8", min_top1=0.0,
                               max_rel_logit_err=10.0), log=_quiet)
    gate = load_manifest(out).verification["gate"]
    assert gate == {"min_top1": 0.0, "max_rel_logit_err": 10.0, "enforced": True, "passed": True}


def test_vision_qdq_calibration_runs(tiny_ckpt, tmp_path):
    from edge_awares.export.engine import ExportConfig, export_engine

    out = export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "q"), precision="int8",
                                     vision_precision="int8-qdq", gate=False), log=_quiet)
    m = load_manifest(out)
    assert m.graph("vision")["quantization"] == "qdq-int8" and m.data["provenance"]["calibration"]["views"] > 0
    assert not (out / "fp32-vision").exists()


def test_checkpoint_policy_options_and_crop_set_reach_the_engine(tiny_ckpt, tmp_path):
    from edge_awares.crops import AWARES_CROPS, CropSet
    from edge_awares.export.engine import ExportConfig, export_engine
    from edge_awares.models import POLICY_FILE
    from edge_awares.protocols import get_protocol

    ck = shutil.copytree(tiny_ckpt, tmp_path / "policy")
    crops = AWARES_CROPS.to_dict()
    crops["name"] = "quadrants-only"
    crops["crops"] = [c for c in crops["crops"] if c["id"] in ("0", "1", "2", "3", "all")]
    proto = get_protocol("ergo", max_tokens=320, margin=0.1).to_dict()  # not the defaults
    assert proto != get_protocol("ergo").to_dict()
    (ck / POLICY_FILE).write_text(json.dumps({"protocol": proto, "crop_set": crops}))
    out = export_engine(ExportConfig(checkpoint=str(ck), output=str(tmp_path / "e")), log=_quiet)
    m = load_manifest(out).data
    assert m["protocol"] == proto
    assert CropSet.from_dict(m["crop_set"]).ids == CropSet.from_dict(crops).ids


def test_engine_context_is_the_default_when_the_flag_is_unset(tiny_engine, doc_image, tmp_path):
    from edge_awares.api import open_session
    from edge_awares.session import SessionConfig

    stored = load_manifest(tiny_engine).data["generation"]["max_context"]
    assert stored == SessionConfig().max_context
    s = open_session(engine=tiny_engine, overrides={"max_context": None, "max_new_tokens": 3})
    assert s.config.max_context == stored and s.config.max_new_tokens == 3


def test_other_architecture_is_refused(tiny_ckpt, tmp_path):
    from edge_awares.models import read_checkpoint

    ck = shutil.copytree(tiny_ckpt, tmp_path / "llama")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="another model family"):
        read_checkpoint(ck)


def test_cheap_recheck_after_a_full_one_still_catches_writes(tiny_engine, tmp_path, monkeypatch):
    from edge_awares import manifest as mf

    monkeypatch.setenv("EDGE_AWARES_CACHE", str(tmp_path / "cache"))
    eng = shutil.copytree(tiny_engine, tmp_path / "eng")
    calls = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    load_manifest(eng)
    n = len(calls)
    assert n == len(load_manifest(eng, check_files=False).data["files"])
    load_manifest(eng)
    assert len(calls) == n  # stats matched the stamp: nothing hashed
    # a same-size overwrite of one byte changes ctime: hashed again and caught
    f = eng / "vision.onnx.data"
    with open(f, "r+b") as fh:
        b = fh.read(1)
        fh.seek(0)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(EngineIntegrityError, match="sha256"):
        load_manifest(eng)
    # EDGE_AWARES_VERIFY=full hashes every time
    with open(f, "r+b") as fh:
        fh.write(b)
    load_manifest(eng)
    monkeypatch.setenv("EDGE_AWARES_VERIFY", "full")
    before = len(calls)
    load_manifest(eng)
    assert len(calls) - before == n


def test_linked_engine_file_is_refused(tiny_engine, tmp_path):
    eng = shutil.copytree(tiny_engine, tmp_path / "eng")
    (eng / "tokenizer.json").rename(tmp_path / "tok.json")
    os.symlink(tmp_path / "tok.json", eng / "tokenizer.json")
    with pytest.raises(EngineIntegrityError, match="link"):
        load_manifest(eng)


def test_export_checks_its_engine_under_its_own_budget_not_the_device_default(tiny_ckpt, tmp_path, monkeypatch):
    from edge_awares.errors import MemoryBudgetError
    from edge_awares.export.engine import ExportConfig, export_engine
    from edge_awares.runtimes import open_engine_session

    monkeypatch.setenv("EDGE_AWARES_MEMORY_BUDGET", "0.0001")  # a device too small for this engine
    out = export_engine(ExportConfig(checkpoint=str(tiny_ckpt), output=str(tmp_path / "e")), log=_quiet)
    with pytest.raises(MemoryBudgetError, match="over the budget"):
        open_engine_session(out).run(make_doc(300, 200), "What is the total?", crops="none")
