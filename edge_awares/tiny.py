"""Tiny random-init checkpoints of the real architectures, built from a config with a locally trained
tokenizer, saved as ordinary Hugging Face folders (safetensors, tokenizer.json, preprocessor config).

No hub access anywhere. Used by the tests, the benchmarks (at larger sizes), and `edge-awares tiny` so the
README's first command works before a trained demo ships. Random weights: the answers are noise.

    python -m edge_awares.tiny OUT_DIR [--preset tiny|small|mid] [--seed 0] [--force]
"""

from __future__ import annotations

import json
from pathlib import Path

from .crops import AWARES_CROPS
from .errors import BackendUnavailableError

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Added but not special in Qwen2.5's vocabulary: they survive decoding with skip_special_tokens.
ADDED_TOKENS = ["<tool_call>", "</tool_call>"]

# Qwen2's pre-tokenizer split (a property of the published tokenizer, needed to tokenize like it).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

# name: (text hidden, layers, heads, kv heads, intermediate, vision hidden, vision depth, vision heads)
PRESETS = {
    "tiny": (64, 2, 4, 2, 128, 32, 2, 2),
    "tiny2": (96, 3, 6, 2, 192, 48, 3, 3),  # a second shape for parity tests
    "small": (256, 4, 4, 2, 704, 128, 4, 4),
    "mid": (768, 12, 12, 2, 2048, 384, 8, 6),  # ~100M parameters (~90M language, ~14M vision)
    "demo": (192, 4, 6, 2, 512, 128, 4, 4),  # ~3M: the shipped demo policy, trained from scratch (train/base.py)
}


def _corpus() -> list[str]:
    from .protocols import PROTOCOLS

    lines = []
    for name, cls in PROTOCOLS.items():
        p = cls()
        lines.append(p.system_prompt(AWARES_CROPS) or "")
        for t in p.tools(AWARES_CROPS) or []:
            lines.append(json.dumps(t))
        if name != "plain":  # the plain protocol has no request syntax
            lines.append(p.request_text(["0", "4"], AWARES_CROPS, _FakeView(), _FakeView()))
    words = ("What is the value code number colour color panel box page top bottom left right centre center "
             "title heading red green blue yellow orange purple grey black white star circle square triangle "
             "bar chart table total how many which is tallest shortest written printed under above next to the "
             "of in on a an and answer question image region crop tool call regions").split()
    lines += [" ".join(words), " ".join(w.capitalize() for w in words)]
    lines += ["0123456789 " * 4, "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz", "!?.,:;'\"()[]{}<>/-_=+*#%&"]
    return lines


class _FakeView:  # enough geometry for request_text of every protocol
    width = height = 448


def make_tokenizer(vocab_size: int = 1024, extra_corpus: list[str] | None = None):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer and Qwen's special tokens, trained locally on the
    protocols' texts plus `extra_corpus` (e.g. the questions and answers of a training set)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus() * 3 + list(extra_corpus or []), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return tok


def mrope_section(head_dim: int) -> list[int]:
    """M-RoPE sections: head_dim/2 rotary frequencies split over (t, h, w) in Qwen's 2:3:3 proportion
    ([16, 24, 24] for the released models' head_dim 128)."""
    half = head_dim // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    return [t_sec, h_sec, half - t_sec - h_sec]


def token_id_config(tok) -> tuple[dict, dict]:
    """The tokenizer's special-token ids as (text-config entries, top-level Qwen2.5-VL config entries): a config
    must name the ids of the tokenizer shipped beside it, not the hub's."""
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    text = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return text, top


def save_processors(tok, out: Path, min_pixels: int, max_pixels: int) -> None:
    """Write `tok` (through PreTrainedTokenizerFast) and the Qwen2-VL image processor's config into `out`."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(out)


def make_tiny_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0, vocab_size: int = 1024,
                         initializer_range: float = 0.1, max_pixels: int = 1024 * 28 * 28,
                         min_pixels: int = 16 * 28 * 28, perturb: float = 0.1,
                         extra_corpus: list[str] | None = None, note: str = "random weights: answers are noise",
                         force: bool = False, **overrides) -> Path:
    """Build and save a random-init Qwen2.5-VL checkpoint. `overrides` go into the text config.

    `out_dir` must be new, empty, or (with `force`) a checkpoint this toolkit wrote, which is then replaced
    whole; the folder is built aside and renamed into place, so a failure leaves nothing (OutputError for any
    other folder, see edge_awares.outputs).

    A large `initializer_range` separates random logits, so greedy tokens do not tie (FACTS.md). transformers
    initialises biases to 0 and norm weights to 1, so an export that dropped a bias or a norm scale would still
    match the reference; `perturb` draws them at random too (bias ~ N(0, perturb), norm ~ 1 + N(0, perturb)).
    """
    try:
        import torch
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    except ImportError as e:
        raise BackendUnavailableError(f"building a checkpoint needs torch and transformers ({e.name} missing): "
                                      "pip install 'edge-awares[torch]'") from None
    if preset not in PRESETS:
        from .errors import ConfigError

        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    from .outputs import building, prepare_dir

    prepare_dir(out_dir, "checkpoint", force=force)  # before the tokenizer and the model are built
    tok = make_tokenizer(vocab_size, extra_corpus)
    text_ids, top_ids = token_id_config(tok)
    hidden, layers, heads, kv, inter, v_hidden, v_depth, v_heads = PRESETS[preset]
    text = dict(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                max_position_embeddings=8192, initializer_range=initializer_range,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": mrope_section(hidden // heads)},
                **text_ids)
    text.update(overrides)
    vision = dict(depth=v_depth, hidden_size=v_hidden, intermediate_size=2 * v_hidden, num_heads=v_heads,
                  out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=112, fullatt_block_indexes=[v_depth - 1], initializer_range=initializer_range)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **top_ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, perturb)
                elif "norm" in name and name.endswith(".weight"):
                    p.normal_(1.0, perturb)
    with building(out_dir, "checkpoint", force=force) as out:
        model.save_pretrained(out, safe_serialization=True)
        save_processors(tok, out, min_pixels, max_pixels)
        (out / "edge_awares_tiny.json").write_text(json.dumps(
            {"preset": preset, "seed": seed, "note": note}, indent=1))
    return Path(out_dir)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace a checkpoint this toolkit wrote")
    a = ap.parse_args()
    print(make_tiny_checkpoint(a.out_dir, preset=a.preset, seed=a.seed, force=a.force))
