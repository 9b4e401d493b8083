"""Measure SFT and GRPO optimizer-step times on a random-init checkpoint: a tiny preset on CPU, or the Qwen2.5-VL-3B
or -7B architecture (random weights, real shapes and vocabulary size) on a GPU. Data: synthetic pages.

    python -m edge_awares.train.steptime --preset small --steps 6 --threads 1
    python -m edge_awares.train.steptime --arch qwen2.5-vl-3b --steps 4 --page 896   # GPU; bf16, LoRA, checkpointing

Prints one JSON object: median wall seconds per optimizer step (first step excluded as warm-up) and the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# Published shapes (config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct). The tiny local tokenizer is reused: its ids
# are a subset of the full vocabulary, whose size is kept so the embedding and LM head cost what they really cost.
ARCHS = {
    "qwen2.5-vl-3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                    num_attention_heads=16, num_key_value_heads=2, vocab_size=151936),
                          vision_out=2048, tie=True),
    "qwen2.5-vl-7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                    num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
                          vision_out=3584, tie=False),
}


def arch_config(arch: str):
    """The transformers config of `arch` with the tiny tokenizer's special-token ids."""
    from transformers import Qwen2_5_VLConfig

    from ..tiny import SPECIAL_TOKENS, make_tokenizer

    spec = ARCHS[arch]
    tok = make_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    text = dict(spec["text"], max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=spec["vision_out"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=spec["tie"]), tok


def make_arch_checkpoint(out_dir: Path, arch: str) -> Path:
    """A random-init checkpoint with the real architecture of `arch` (bf16 weights) and the tiny tokenizer."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    config, tok = arch_config(arch)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(
        out_dir)
    Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=2048 * 28 * 28).save_pretrained(out_dir)
    return out_dir


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t is not None:
                self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def measure(work: Path, preset: str | None, arch: str | None, steps: int, generations: int, page: int,
            lora: bool) -> dict:
    """Median step seconds of SFT and GRPO (each `steps` steps, the first dropped) on synthetic pages."""
    from ..data.format import Trajectory, read_samples, write_trajectories
    from ..data.synth import SynthConfig, write_dataset
    from ..tiny import make_tiny_checkpoint
    from .config import GRPORunConfig, SFTRunConfig
    from .grpo import train_grpo
    from .sft import train_sft

    if arch:
        base = make_arch_checkpoint(work / "base", arch)
    else:
        base = make_tiny_checkpoint(work / "base", preset=preset, force=True)  # --work reruns replace their own
    samples = read_samples(write_dataset(work / "data", n=max(8, generations), seed=0,
                                         cfg=SynthConfig(width=page, height=page), force=True))  # --work reruns
    trajs = [Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []) for s in samples]
    traj_file = write_trajectories(work / "data" / "trajectories.jsonl", trajs, image_dir=None)
    big = arch is not None
    common = dict(val_fraction=0.0, save_strategy="no", lora=lora, max_steps=steps, logging_steps=1,
                  gradient_checkpointing=big)
    sft_timer, grpo_timer = _step_timer(), _step_timer()
    sft_out = train_sft(SFTRunConfig(model=str(base), data=str(traj_file), output=str(work / "sft"), **common),
                        log=lambda *a: None, callbacks=[sft_timer])
    train_grpo(GRPORunConfig(model=str(sft_out), data=str(work / "data" / "samples.jsonl"), output=str(work / "grpo"),
                             num_generations=generations, answer_metric="anls", **common),
               log=lambda *a: None, callbacks=[grpo_timer])
    grpo_logs = [json.loads(line) for line in (work / "grpo" / "run" / "metrics.jsonl").read_text().splitlines()]

    def med(xs):
        xs = xs[1:] if len(xs) > 1 else xs
        return round(statistics.median(xs), 4) if xs else None

    return {"sft_step_s": med(sft_timer.times), "grpo_step_s": med(grpo_timer.times),
            "sft_steps": sft_timer.times, "grpo_steps": grpo_timer.times,
            "grpo_request_rate": [r.get("rollout/request_rate") for r in grpo_logs if "rollout/request_rate" in r],
            "grpo_completion_mean_length": [r.get("completions/mean_length") for r in grpo_logs
                                            if "completions/mean_length" in r]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="tiny preset (tiny, tiny2, small, mid) when no --arch")
    ap.add_argument("--arch", choices=sorted(ARCHS), help="real architecture, random weights (use a GPU)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--page", type=int, default=448, help="synthetic page side in pixels")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--work", help="folder for checkpoints and runs (default: a temporary folder)")
    a = ap.parse_args(argv)
    import platform

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="steptime-"))
    result = measure(work, a.preset, a.arch, a.steps, a.generations, a.page, not a.full)
    result.update(model=a.arch or a.preset, lora=not a.full, generations=a.generations, page=a.page,
                  threads=torch.get_num_threads(), device=torch.cuda.get_device_name(0) if torch.cuda.is_available()
                  else platform.processor() or "cpu", torch=torch.__version__)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
