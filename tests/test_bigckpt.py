"""edge_awares.bigckpt: streamed random-init checkpoints at the real Qwen2.5-VL sizes. A small custom shape goes
through the same streaming path (tiny shards, so several shards and an index) and must load with from_pretrained in
both key layouts; the real presets' sizes are checked from the meta model only, nothing of theirs is written."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

from edge_awares.bigckpt import PRESETS, big_spec, count_parameters, make_big_checkpoint  # noqa: E402
from edge_awares.errors import ConfigError, OutputError  # noqa: E402

# 3B/7B key structure, widths small enough for a test.
SMALL = dict(text_layers=2, vision_depth=2,
             text=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                       vocab_size=2048),
             vision=dict(hidden_size=32, intermediate_size=64, num_heads=2))
SHARD = 200_000  # bytes: the small model (~0.6 MB in bf16) lands in several shards


def _shard(f) -> dict[str, torch.Tensor]:
    with safe_open(str(f), "pt") as h:
        return {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118 (safe_open is not a dict)


def _tensors(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in _shard(f).items()}


def _memory_name(hub: str) -> str:  # transformers 5's in-memory name of a hub key
    if hub.startswith("model."):
        return "model.language_model." + hub[len("model."):]
    return "model." + hub if hub.startswith("visual.") else hub


def _load(folder):
    model, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    return model


@pytest.mark.parametrize("base, layout", [("3b", "hub"), ("7b", "transformers")])
def test_small_shape_streams_shards_and_loads(tmp_path, base, layout):
    out = make_big_checkpoint(tmp_path / "ck", base, layout=layout, seed=3, max_shard_bytes=SHARD, **SMALL)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) >= 3 and shards == sorted(set(index["weight_map"].values()))
    assert all(name.endswith(f"-of-{len(shards):05d}.safetensors") for name in shards)
    stored = _tensors(out)
    assert set(stored) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in stored.values())
    assert all(t.dtype == torch.bfloat16 for t in stored.values())
    for f in out.glob("*.safetensors"):
        shard = _shard(f)
        assert sum(t.nbytes for t in shard.values()) <= SHARD or len(shard) == 1  # a lone big tensor may overflow
        with safe_open(str(f), "pt") as h:
            assert h.metadata() == {"format": "pt"}

    hub = layout == "hub"
    lm, vis = ("model.", "visual.") if hub else ("model.language_model.", "model.visual.")
    assert f"{lm}layers.1.mlp.down_proj.weight" in stored and f"{vis}merger.ln_q.weight" in stored
    assert f"{vis}patch_embed.proj.weight" in stored and f"{lm}embed_tokens.weight" in stored
    assert ("lm_head.weight" in stored) == (not PRESETS[base]["tie_word_embeddings"])

    model = _load(out)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # Loaded exactly what was stored (nothing re-initialised behind a clean loading report).
    state = model.state_dict()
    for name, t in stored.items():
        assert torch.equal(state[_memory_name(name) if hub else name], t), name
    for norm in (model.model.language_model.norm.weight, model.model.visual.merger.ln_q.weight,
                 model.model.language_model.layers[0].input_layernorm.weight):
        assert abs(norm.float().mean().item() - 1) < 0.01 and 0.01 < norm.float().std().item() < 0.03
    for w in (model.model.language_model.layers[0].self_attn.q_proj.bias, model.model.visual.blocks[0].attn.qkv.bias,
              model.model.language_model.embed_tokens.weight):
        assert abs(w.float().mean().item()) < 0.01 and 0.015 < w.float().std().item() < 0.025

    # The config names the tokenizer's special tokens, and the folder holds what tiny.py's does.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] == PRESETS[base]["tie_word_embeddings"]
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["text_config"]["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]  # head_dim 16
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 3136, "longest_edge": 12845056}  # min_pixels, max_pixels
    meta = json.loads((out / "edge_awares_tiny.json").read_text())
    assert meta["preset"] == base and meta["seed"] == 3 and "random weights" in meta["note"]


def test_values_depend_on_seed_only(tmp_path):
    """Same seed: the same values whatever the layout or shard size; another seed: other values."""
    a = _tensors(make_big_checkpoint(tmp_path / "a", "3b", seed=7, max_shard_bytes=SHARD, **SMALL))
    b = _tensors(make_big_checkpoint(tmp_path / "b", "3b", seed=7, layout="transformers", **SMALL))
    c = _tensors(make_big_checkpoint(tmp_path / "c", "3b", seed=8, **SMALL))
    assert not (tmp_path / "b" / "model.safetensors.index.json").exists()  # one shard: model.safetensors, as the hub
    renamed = {_memory_name(k): v for k, v in a.items()}
    assert renamed.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in renamed.items())
    assert not torch.equal(a["model.norm.weight"], c["model.norm.weight"])


def test_float32_option(tmp_path):
    out = make_big_checkpoint(tmp_path / "ck", "3b-cut6", dtype="float32", **SMALL)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert {t.dtype for t in _tensors(out).values()} == {torch.float32}
    assert {p.dtype for p in _load(out).parameters()} == {torch.float32}


def test_refuses_non_empty_folder_and_bad_values(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="is not a checkpoint edge-awares wrote; refusing"):
        make_big_checkpoint(tmp_path / "full", "3b", **SMALL, force=True)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert (make_big_checkpoint(tmp_path / "empty", "3b", **SMALL) / "config.json").exists()
    with pytest.raises(ConfigError, match="known: 3b"):
        make_big_checkpoint(tmp_path / "x", "13b")
    with pytest.raises(ConfigError, match="legal:"):
        big_spec("3b", text={"hiden_size": 64})
    with pytest.raises(ConfigError, match="layout"):
        make_big_checkpoint(tmp_path / "y", "3b", layout="gguf", **SMALL)
    with pytest.raises(ConfigError, match="vocab_size"):  # fewer embedding rows than the tokenizer has tokens
        make_big_checkpoint(tmp_path / "z", "3b", **dict(SMALL, text=dict(SMALL["text"], vocab_size=256)))
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_real_presets_sizes_from_meta_model():
    counts = {p: count_parameters(p) for p in ("3b", "7b", "3b-cut6")}
    assert counts == {"3b": 3_754_622_976, "7b": 8_292_166_656, "3b-cut6": 1_442_313_216}
    assert count_parameters("3b", text_layers=6) == counts["3b-cut6"]
    spec = big_spec("7b")
    assert spec["text"]["mrope_section"] == [16, 24, 24] and spec["vision"]["out_hidden_size"] == 3584
    assert big_spec("3b", vision_depth=10)["vision"]["fullatt_block_indexes"] == [7]
    assert big_spec("3b", vision_depth=4)["vision"]["fullatt_block_indexes"] == [3]


def test_cli_tiny_rejects_big_options_on_small_presets(tmp_path, capsys):
    from edge_awares.cli import main

    assert main(["tiny", str(tmp_path / "t"), "--preset", "tiny", "--text-layers", "2"]) == 2
    assert "real-size presets (3b, 3b-cut6, 7b)" in capsys.readouterr().err
