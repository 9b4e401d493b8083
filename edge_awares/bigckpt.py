"""Random-init Qwen2.5-VL checkpoints at the real sizes (3B, 7B, layer cuts), for memory and speed work on exports.

The weights are streamed: names and shapes come from a model built on the meta device, each tensor is drawn on its
own and written into safetensors shards of at most ~2 GB, so peak memory stays near one shard. The folder is an
ordinary Hugging Face checkpoint (hub key layout by default) that `from_pretrained` loads unchanged. Random weights:
the answers are noise.

    python -m edge_awares.bigckpt OUT_DIR --preset 3b|3b-cut6|7b [--text-layers N] [--vision-depth N]
        [--dtype bfloat16|float32] [--layout hub|transformers] [--seed 0] [--force]
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from .errors import BackendUnavailableError, ConfigError

# The released models' configs (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct), in transformers 5 names.
_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
               in_channels=3, tokens_per_second=2, hidden_act="silu")
_TEXT_3B = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                intermediate_size=11008, vocab_size=151936, rope_theta=1e6, mrope_section=[16, 24, 24],
                rms_norm_eps=1e-6, max_position_embeddings=128000, hidden_act="silu", max_window_layers=70,
                sliding_window=32768, use_sliding_window=False)
_TEXT_7B = dict(_TEXT_3B, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064, max_window_layers=28)
PRESETS = {
    "3b": dict(text=_TEXT_3B, vision=_VISION, tie_word_embeddings=True),  # 3.75e9 parameters
    "3b-cut6": dict(text=dict(_TEXT_3B, num_hidden_layers=6), vision=_VISION, tie_word_embeddings=True),  # 1.44e9
    "7b": dict(text=_TEXT_7B, vision=dict(_VISION, out_hidden_size=3584), tie_word_embeddings=False),  # 8.29e9
}
DTYPES = ("bfloat16", "float16", "float32")
LAYOUTS = ("hub", "transformers")
# In-memory (transformers 5) prefix -> released checkpoints' prefix.
HUB_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))
DEFAULT_SHARD_BYTES = 2 * 10**9
_CHUNK = 1 << 24  # elements drawn at a time: bounds the fp32 scratch to 64 MB whatever the tensor


def big_spec(preset: str = "3b", *, text_layers: int | None = None, vision_depth: int | None = None,
             text: dict | None = None, vision: dict | None = None) -> dict:
    """The plain-data spec of a preset after overrides: {"text": ..., "vision": ..., "tie_word_embeddings": ...}.

    `text_layers` / `vision_depth` cut the language model / vision tower (full-attention vision blocks past the cut
    are dropped; if none is left, the last block is one). `text` / `vision` override any of the preset's keys, which
    is how tests get small widths; `out_hidden_size` follows the text hidden size and `mrope_section` the head size
    unless given. Raises ConfigError on an unknown preset or key, or on inconsistent sizes.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    for name, given, legal in (("text", text, base["text"]), ("vision", vision, base["vision"])):
        unknown = sorted(set(given or {}) - set(legal))
        if unknown:
            raise ConfigError(f"unknown {name} override(s) {', '.join(unknown)}; legal: {', '.join(legal)}")
    t = dict(base["text"], **(text or {}))
    v = dict(base["vision"], **(vision or {}))
    if text_layers is not None:
        t["num_hidden_layers"] = text_layers
    if vision_depth is not None:
        v["depth"] = vision_depth
    for key, value in (("text num_hidden_layers", t["num_hidden_layers"]), ("vision depth", v["depth"])):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    if "fullatt_block_indexes" not in (vision or {}):
        v["fullatt_block_indexes"] = [i for i in v["fullatt_block_indexes"] if i < v["depth"]] or [v["depth"] - 1]
    if any(not 0 <= i < v["depth"] for i in v["fullatt_block_indexes"]):
        raise ConfigError(f"fullatt_block_indexes {v['fullatt_block_indexes']} must lie in 0..{v['depth'] - 1}")
    if "out_hidden_size" not in (vision or {}):
        v["out_hidden_size"] = t["hidden_size"]
    if t["hidden_size"] % t["num_attention_heads"] or t["num_attention_heads"] % t["num_key_value_heads"]:
        raise ConfigError(f"text hidden_size {t['hidden_size']} must divide into num_attention_heads "
                          f"{t['num_attention_heads']}, and those into num_key_value_heads {t['num_key_value_heads']}")
    if v["hidden_size"] % v["num_heads"]:
        raise ConfigError(f"vision hidden_size {v['hidden_size']} is not a multiple of num_heads {v['num_heads']}")
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    if "mrope_section" not in (text or {}):
        from .tiny import mrope_section

        t["mrope_section"] = mrope_section(head_dim)
    if sum(t["mrope_section"]) != head_dim // 2:
        raise ConfigError(f"mrope_section {t['mrope_section']} must sum to head_dim/2 = {head_dim // 2}")
    return dict(text=t, vision=v, tie_word_embeddings=base["tie_word_embeddings"])


def make_big_config(spec: dict, dtype: str = "bfloat16", tokenizer=None):
    """A Qwen2_5_VLConfig for `spec` (from big_spec) recording `dtype`. With `tokenizer` (a `tokenizers.Tokenizer`
    from edge_awares.tiny.make_tokenizer) the special-token ids are the tokenizer's, as in tiny.py."""
    Qwen2_5_VLConfig = _transformers().Qwen2_5_VLConfig
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; legal: {', '.join(DTYPES)}")
    text = dict(spec["text"])
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": list(text.pop("mrope_section"))}
    top = {}
    if tokenizer is not None:
        from .tiny import token_id_config

        text_ids, top = token_id_config(tokenizer)
        text.update(text_ids)
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(spec["vision"]), dtype=dtype,
                            tie_word_embeddings=spec["tie_word_embeddings"],
                            architectures=["Qwen2_5_VLForConditionalGeneration"], **top)


def tensor_plan(config, layout: str = "hub") -> list[tuple[str, str, tuple[int, ...], bool]]:
    """(saved name, hub name, shape, is a norm scale) of every tensor a checkpoint of `config` stores, in the
    model's order, read from a model built on the meta device (no memory). The tied lm_head is left out, as the hub
    does. Raises ConfigError on an unknown layout."""
    import torch

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; legal: {', '.join(LAYOUTS)}")
    with torch.device("meta"):
        model = _transformers().Qwen2_5_VLForConditionalGeneration(config)
    # By module type, not by name: the merger's RMSNorm is called ln_q.
    norms = {f"{m}.weight" for m, mod in model.named_modules() if "Norm" in type(mod).__name__}
    plan = []
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        hub = _hub_name(name)
        plan.append((hub if layout == "hub" else name, hub, tuple(t.shape), name in norms))
    return plan


def count_parameters(preset: str = "3b", **spec_overrides) -> int:
    """Parameters a checkpoint of `preset` stores (tied embeddings counted once), from the meta model; writes
    nothing. `spec_overrides` are big_spec's keyword arguments."""
    import math

    config = make_big_config(big_spec(preset, **spec_overrides))
    return sum(math.prod(shape) for _, _, shape, _ in tensor_plan(config))


def make_big_checkpoint(out_dir: str | Path, preset: str = "3b", *, seed: int = 0, dtype: str = "bfloat16",
                        layout: str = "hub", text_layers: int | None = None, vision_depth: int | None = None,
                        text: dict | None = None, vision: dict | None = None,
                        max_shard_bytes: int = DEFAULT_SHARD_BYTES, std: float = 0.02, vocab_size: int = 1024,
                        min_pixels: int = 3136, max_pixels: int = 12845056,
                        log: Callable[[str], None] | None = None, force: bool = False) -> Path:
    """Stream a random-init Qwen2.5-VL checkpoint of `preset` into `out_dir` and return its path.

    Every tensor is drawn on its own from a generator seeded by (`seed`, its hub name): weights and biases
    ~ N(0, std), norm scales ~ 1 + N(0, std), stored as `dtype`; so the values do not depend on the layout or the
    shard size, and peak memory is about one shard. Shards hold at most `max_shard_bytes` (a larger tensor gets a
    shard of its own); one shard is written as model.safetensors, several as model-0000i-of-0000n.safetensors plus
    model.safetensors.index.json, as save_pretrained does. `layout` "hub" uses the released checkpoints' names
    (model.layers.*, visual.*), "transformers" the in-memory ones (model.language_model.*, model.visual.*).
    The tokenizer is tiny.py's locally trained one (`vocab_size` tokens, far fewer than the model's embedding rows;
    the config's special-token ids are the tokenizer's). `min_pixels` / `max_pixels` default to the released
    image processor's. Other arguments are big_spec's. `log` receives one line per shard.

    Raises ConfigError on bad arguments; OutputError when `out_dir` exists and is not empty, not a checkpoint this
    toolkit wrote, or one without `force`, or when its disk lacks the space; BackendUnavailableError without
    torch/transformers. The folder is written as a partial sibling and renamed into place (edge_awares.outputs):
    a failure removes it, and a killed run's is removed by the next run into the same place.
    """
    import math

    torch = _torch()
    if not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if not max_shard_bytes or max_shard_bytes < 1:
        raise ConfigError(f"max_shard_bytes must be >= 1, got {max_shard_bytes!r}")
    spec = big_spec(preset, text_layers=text_layers, vision_depth=vision_depth, text=text, vision=vision)
    from .tiny import make_tokenizer, save_processors

    tok = make_tokenizer(vocab_size)
    if tok.get_vocab_size() > spec["text"]["vocab_size"]:
        raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model's vocab_size is "
                          f"{spec['text']['vocab_size']}; raise text vocab_size or lower vocab_size")
    config = make_big_config(spec, dtype, tokenizer=tok)
    plan = tensor_plan(config, layout)
    torch_dtype = getattr(torch, dtype)
    itemsize = torch_dtype.itemsize
    shards = _split(plan, itemsize, max_shard_bytes)
    total_size = sum(math.prod(shape) for _, _, shape, _ in plan) * itemsize

    from .outputs import building

    out = Path(out_dir)
    with building(out, "checkpoint", force=force, size_bytes=int(total_size * 1.02 + 50 * 2**20), log=log) as tmp:
        _write_shards(tmp, shards, seed, std, torch_dtype, total_size, log)
        config.save_pretrained(tmp)
        _transformers().GenerationConfig.from_model_config(config).save_pretrained(tmp)
        save_processors(tok, tmp, min_pixels, max_pixels)
        (tmp / "edge_awares_tiny.json").write_text(json.dumps({
            "preset": preset, "seed": seed, "note": "random weights: answers are noise", "dtype": dtype,
            "layout": layout, "text_layers": spec["text"]["num_hidden_layers"], "vision_depth": spec["vision"]["depth"],
            "parameters": total_size // itemsize, "std": std,
            "generator": "per tensor: torch.Generator seeded with blake2b-32 of f'{seed}/{hub name}', "
                         f"fp32 randn in chunks of {_CHUNK}, cast"}, indent=1))
    return out


def _split(plan: list, itemsize: int, max_bytes: int) -> list[list]:
    import math

    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = math.prod(entry[2]) * itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    return shards + [current] if current else shards


def _write_shards(out: Path, shards: list[list], seed: int, std: float, torch_dtype, total_size: int, log) -> None:
    from safetensors.torch import save_file

    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    weight_map = {}
    for file, shard in zip(names, shards, strict=True):
        t0 = time.perf_counter()
        tensors = {name: _draw(hub, shape, seed, std, norm, torch_dtype) for name, hub, shape, norm in shard}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        nbytes = sum(t.nbytes for t in tensors.values())
        del tensors  # before the next shard is drawn: this is what bounds peak memory
        weight_map.update({entry[0]: file for entry in shard})
        if log:
            log(f"{file}: {len(shard)} tensors, {nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
    if n > 1:
        index = {"metadata": {"total_parameters": total_size // torch_dtype.itemsize, "total_size": total_size},
                 "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _draw(hub_name: str, shape: tuple[int, ...], seed: int, std: float, norm: bool, torch_dtype):
    import math

    import torch

    # Seeded per tensor by its hub name, so values are the same whatever the layout, the shard size or the order.
    # Hashed into 32 bits: the CPU generator (mt19937) ignores the high half of a 64-bit seed.
    g = torch.Generator().manual_seed(_tensor_seed(seed, hub_name))
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch_dtype)
    for i in range(0, numel, _CHUNK):
        k = min(_CHUNK, numel - i)
        chunk = torch.randn(k, generator=g).mul_(std)
        if norm:
            chunk.add_(1.0)
        out[i:i + k].copy_(chunk)
    return out.view(shape)


def _tensor_seed(seed: int, hub_name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{hub_name}".encode(), digest_size=4).digest(), "little")


def _hub_name(name: str) -> str:
    for memory, hub in HUB_PREFIXES:
        if name.startswith(memory):
            return hub + name[len(memory):]
    return name


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("building a checkpoint needs torch and transformers (torch missing): "
                                      "pip install 'edge-awares[torch]'") from None
    return torch


def _transformers():
    _torch()
    try:
        import transformers
    except ImportError:
        raise BackendUnavailableError("building a checkpoint needs torch and transformers (transformers missing): "
                                      "pip install 'edge-awares[torch]'") from None
    return transformers


if __name__ == "__main__":
    import argparse
    import sys

    from .errors import EdgeAwaresError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--preset", default="3b", choices=list(PRESETS))
    ap.add_argument("--text-layers", type=int, default=None)
    ap.add_argument("--vision-depth", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    ap.add_argument("--layout", default="hub", choices=LAYOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-gb", type=float, default=DEFAULT_SHARD_BYTES / 1e9)
    ap.add_argument("--force", action="store_true", help="replace a checkpoint this toolkit wrote")
    a = ap.parse_args()
    try:
        print(make_big_checkpoint(a.out_dir, preset=a.preset, seed=a.seed, dtype=a.dtype, layout=a.layout,
                                  text_layers=a.text_layers, vision_depth=a.vision_depth,
                                  max_shard_bytes=int(a.max_shard_gb * 1e9), log=lambda m: print(m, file=sys.stderr),
                                  force=a.force))
    except EdgeAwaresError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
