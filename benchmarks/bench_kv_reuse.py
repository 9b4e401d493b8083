"""The crop turn with KV-cache reuse vs re-prefilling the whole conversation (what the released AwaRes
evaluation does), on a mid-size random-init Qwen2.5-VL (random weights give real timings).

    python benchmarks/bench_kv_reuse.py [--preset mid] [--runs 5] [--crops 0,4] [--out benchmarks/results]

Reports medians over runs after a warm-up, the time ratio reuse / re-prefill next to the token ratio
new tokens / all tokens, for the prefill alone and for the whole crop turn (vision + prefill).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--crops", default="0,4")
    ap.add_argument("--size", default="1288x966", help="image WxH")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()

    import torch

    from conftest import make_doc
    from edge_awares.backend import RecordingBackend
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.session import Session, SessionConfig
    from edge_awares.tiny import make_tiny_checkpoint
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.runtimes.reference import TorchBackend

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / a.preset, preset=a.preset, initializer_range=0.02)
        info = read_checkpoint(ckpt)
        inner = TorchBackend(ckpt)
        n_params = sum(p.numel() for p in inner.model.parameters())
        be = RecordingBackend(inner)
        session = Session(be, TextTokenizer.from_file(ckpt), get_protocol("tool_call"), AWARES_CROPS,
                          info.geometry, SessionConfig(max_new_tokens=1))
        w, h = (int(x) for x in a.size.split("x"))
        image = make_doc(w, h)
        rows = {k: [] for k in ("reuse_prefill", "full_prefill", "reuse_vision", "full_vision")}
        for run in range(a.runs + 1):  # the first run is a warm-up
            r = session.run(image, "What is the total in the table?", crops=a.crops)
            t2 = r.turns[1]
            (e1, p1, _), (e2, p2, _) = be.calls[0], be.calls[1]
            all_views = be.views
            embeds, positions = np.concatenate([e1, e2]), np.concatenate([p1, p2], axis=1)
            full_prefill = _ms(lambda: inner.forward(embeds, positions, inner.new_cache(4096)))
            full_vision = _ms(lambda: inner.encode_images(all_views))
            if run:
                rows["reuse_prefill"].append(t2.prefill_ms)
                rows["reuse_vision"].append(t2.vision_ms)
                rows["full_prefill"].append(full_prefill)
                rows["full_vision"].append(full_vision)
        med = {k: statistics.median(v) for k, v in rows.items()}
        new_tokens, all_tokens = t2.prefill_tokens, embeds.shape[0]
        result = {
            "preset": a.preset, "parameters": n_params, "image": a.size, "crops": a.crops, "runs": a.runs,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "new_tokens": new_tokens, "all_tokens": all_tokens, "token_ratio": new_tokens / all_tokens,
            "visual_tokens_turn1": r.turns[0].visual_tokens, "visual_tokens_turn2": t2.visual_tokens,
            "median_ms": med,
            "prefill_time_ratio": med["reuse_prefill"] / med["full_prefill"],
            "crop_turn_time_ratio": (med["reuse_prefill"] + med["reuse_vision"])
            / (med["full_prefill"] + med["full_vision"]),
        }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv_reuse.json").write_text(json.dumps(result, indent=1))
    md = [
        f"# Crop turn: KV reuse vs re-prefill ({a.preset}, {n_params / 1e6:.0f}M params, torch eager, CPU, "
        f"{result['torch_threads']} threads)",
        "",
        f"Image {a.size}, forced crops {a.crops}; medians of {a.runs} runs after a warm-up. Reproduce: "
        f"`python benchmarks/bench_kv_reuse.py --preset {a.preset} --runs {a.runs} --crops {a.crops}`.",
        "",
        "| | KV reuse (new tokens only) | re-prefill whole conversation | ratio |",
        "|---|---|---|---|",
        f"| tokens prefilled | {new_tokens} | {all_tokens} | {result['token_ratio']:.3f} |",
        f"| prefill ms | {med['reuse_prefill']:.1f} | {med['full_prefill']:.1f} | {result['prefill_time_ratio']:.3f} |",
        f"| vision ms (crops only vs all views) | {med['reuse_vision']:.1f} | {med['full_vision']:.1f} | "
        f"{med['reuse_vision'] / med['full_vision']:.3f} |",
        f"| crop turn ms (vision + prefill) | {med['reuse_prefill'] + med['reuse_vision']:.1f} | "
        f"{med['full_prefill'] + med['full_vision']:.1f} | {result['crop_turn_time_ratio']:.3f} |",
    ]
    (out / "kv_reuse.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
