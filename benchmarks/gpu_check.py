"""One-shot GPU check: the AwaRes crop loop (low-res view, then two crops appended on the kept KV cache) against
the native single pass and against re-prefilling the whole conversation for the crop turn (what the released
AwaRes evaluation does), on the real Qwen2.5-VL-3B/-7B architectures with random bf16 weights built on the GPU;
then one LoRA SFT step and one LoRA GRPO step at 3B through the project's own trainers.

    python benchmarks/gpu_check.py [--sizes 3b,7b] [--runs 3] [--skip-train] [--out gpu_check.json]
    python benchmarks/gpu_check.py --tiny --runs 1 --out /tmp/gpu_check.json     # tiny configs, CPU, seconds

Everything goes through `edge_awares.session.Session` over `runtimes.reference.TorchBackend(model=..., device=...)`,
timed with `torch.cuda.synchronize()`; per sample and per turn (vision / prefill / decode ms as the session's Turn
records them), medians over `--runs` after one warm-up, peak `torch.cuda.max_memory_allocated`. Results: JSON at
`--out` (rewritten after every section, so a run cut short keeps what it measured) and a markdown table beside it
(same name, `.md`), also printed. Each section records its error and the script goes on.

Target machine: one GPU, Python 3.12, torch 2.11 + transformers 5.17 preinstalled, no package index. The project
travels as source: this script puts the repo root on sys.path and maps `edge_awares.runtimes` / `.export` /
`.calibration` onto the top-level folders as pyproject's package-dir does, so no `pip install -e .` is needed.
The benchmark needs only Pillow beyond that machine; the training steps need the rest. Wheels to carry, made on a
machine with an index (48 MB and 20 MB as measured; two folders because the device tool carries 64 MiB at most, so
two calls, the first installing while the machine stays warm):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d wheels-a pyarrow==21.0.0 pillow==13.0.0
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d wheels-b trl==1.16.0 peft==0.21.2 accelerate==1.15.0 datasets==4.8.5 pandas==2.3.3 pytz tzdata python-dateutil six psutil dill==0.4.1 multiprocess==0.70.19 xxhash requests urllib3 charset-normalizer fsspec==2026.2.0 aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl

Optional, recommended (13 MB more in wheels-b): the project's own transformers, so SFT needs no fallback (below):

    pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels-b transformers==5.24.0 huggingface-hub==1.33.0

Install there: `pip install --no-index --no-deps wheels-a/*.whl`, then `pip install --no-index --find-links wheels-b
trl peft accelerate datasets` (add `transformers==5.24.0` if carried). --no-deps leaves torch and transformers out
of the downloads; the rest of their dependencies (numpy, pyyaml, tokenizers, safetensors, huggingface-hub 1.x,
httpx, jinja2, packaging, tqdm, filelock) are assumed present with them. datasets 4.8.5, not 5.x: 5.x wants
pyarrow >= 24 (55 MB) and 4.8.5 keeps huggingface-hub < 2 as transformers 5.17 wants. Assumed of transformers 5.17
and checked against its wheel on CPU (this script's --tiny run passes on it): building from a config,
`_from_config(dtype=)`, `DynamicCache(config=)`, the vision tower's `pooler_output`, the PIL image processor, the
`gradient_checkpointing` argument name (the trainers pick whichever name exists). One thing it lacks: TRL 1.16
refuses assistant-only loss on vision data below transformers 5.18, and 5.17's assistant mask ignores image-token
expansion; the SFT step then runs the project's trainer with TRL's check off and the mask found from the token ids
(`_sft_on_old_transformers`; its labels equal newer transformers' on the test data) and says so in the result.
torch 2.11 was not available to test; torch 2.13 was used.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

# Packages checked in the preflight: import name -> distribution name, and what each part of the check needs.
PACKAGES = {"torch": "torch", "transformers": "transformers", "numpy": "numpy", "PIL": "pillow",
            "tokenizers": "tokenizers", "safetensors": "safetensors", "trl": "trl", "peft": "peft",
            "accelerate": "accelerate", "datasets": "datasets", "pyarrow": "pyarrow", "pandas": "pandas",
            "psutil": "psutil", "yaml": "pyyaml"}
NEEDS = {"bench": ["torch", "transformers", "numpy", "PIL", "tokenizers", "safetensors"],
         "train": ["trl", "peft", "accelerate", "datasets", "pyarrow", "pandas", "psutil", "yaml"]}
ARCH = {"3b": "qwen2.5-vl-3b", "7b": "qwen2.5-vl-7b"}  # keys of edge_awares.train.steptime.ARCHS
QUESTION = "What is the code in the orange panel?"


def map_subpackages() -> str:
    """Make `edge_awares.runtimes/.export/.calibration` importable from a plain checkout (no pip install): they live
    at the top level and pyproject maps them in with package-dir. Returns how the package was found."""
    import edge_awares

    if importlib.util.find_spec("edge_awares.runtimes") is not None:
        return "installed"
    for sub in ("runtimes", "export", "calibration"):
        init = ROOT / sub / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(f"edge_awares.{sub}", init,
                                                      submodule_search_locations=[str(ROOT / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        setattr(edge_awares, sub, mod)
    return "source tree (subpackages mapped by this script)"


# ----------------------------------------------------------------------------------------------- preflight
def preflight() -> dict:
    """Versions of what is installed, what is missing for each part, the device, and the wheels to carry."""
    from importlib.metadata import PackageNotFoundError, version

    found, missing = {}, []
    for mod, dist in PACKAGES.items():
        if importlib.util.find_spec(mod) is None:
            missing.append(mod)
            continue
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "?"
    out = {"python": platform.python_version(), "machine": platform.machine(), "versions": found,
           "missing": [PACKAGES[m] for m in missing],
           "missing_for": {part: [PACKAGES[m] for m in mods if m in missing] for part, mods in NEEDS.items()}}
    try:
        out["edge_awares"] = map_subpackages()
    except Exception as e:  # the rest of the script reports its own failures; this one explains them
        out["edge_awares"] = f"error: {e!r}"
    if "torch" not in missing:
        import torch

        cuda = torch.cuda.is_available()
        out["cuda"] = cuda
        out["torch_cuda"] = torch.version.cuda
        if cuda:
            out["gpu"] = torch.cuda.get_device_name(0)
            out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            out["bf16"] = torch.cuda.is_bf16_supported()
    if out["missing"]:
        out["carry"] = [line.strip() for line in __doc__.splitlines() if line.strip().startswith("pip download")]
    return out


def print_preflight(p: dict) -> None:
    print(f"python {p['python']} ({p['machine']}); edge_awares: {p.get('edge_awares')}")
    print("installed: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()))
    gpu = p.get("gpu")
    where = f"cuda {gpu}, {p.get('gpu_memory_gib')} GiB, bf16 {p.get('bf16')}" if gpu else "cpu"
    print(f"device: {where} (torch cuda {p.get('torch_cuda')})")
    for part, names in p["missing_for"].items():
        print(f"missing for {part}: {', '.join(names) if names else 'nothing'}")
    if p.get("carry"):
        print("carry these wheels (see the module docstring for the install commands):")
        for line in p["carry"]:
            print("  " + line)


# ----------------------------------------------------------------------------------------------- timing helpers
def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(torch) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def _free(torch) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def _error(e: BaseException) -> dict:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)[-2500:]}


def make_image(width: int, height: int):
    """A synthetic document page of the given size (edge_awares.data.synth), or a drawn one if that fails."""
    try:
        from edge_awares.data.synth import SynthConfig, make_sample

        s = make_sample(0, 0, SynthConfig(width=width, height=height, small_font_px=14, label_font_px=22,
                                          title_font_px=40, max_panels=6, max_shapes=4, filler_blocks=6))
        return s.image, f"edge_awares.data.synth page {width}x{height}", s.question
    except Exception as e:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (width, height), "white")
        d = ImageDraw.Draw(img)
        for i in range(40):
            y = 20 + i * (height - 40) // 40
            d.line((30, y, width - 30, y), fill=(60, 60, 60), width=2)
            d.text((40, y - 12), f"row {i}  value {i * 37 % 101}", fill="black")
        return img, f"PIL drawing {width}x{height} (synth failed: {e!r})", QUESTION


# ----------------------------------------------------------------------------------------------- the benchmark
def build(size: str, device: str, work: Path):
    """(model, TextTokenizer, info) for `size`: tiny (a saved tiny checkpoint) or 3b/7b (from the published config,
    random init, built directly on `device` in bf16 on CUDA, fp32 on CPU)."""
    import torch

    from edge_awares.tokenizer import TextTokenizer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    if size == "tiny":
        from transformers import Qwen2_5_VLForConditionalGeneration

        from edge_awares.models import load_pretrained
        from edge_awares.tiny import make_tiny_checkpoint

        # std 0.02, not the tests' 0.1: large random weights run eager torch several times slower (FACTS.md).
        ckpt = make_tiny_checkpoint(work / "tiny", preset="tiny", initializer_range=0.02, force=True)  # --work reruns
        model = load_pretrained(Qwen2_5_VLForConditionalGeneration, ckpt, dtype=dtype).to(device)
        tok = TextTokenizer.from_file(ckpt)
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration

        from edge_awares.train.steptime import arch_config

        config, raw_tok = arch_config(ARCH[size])
        with torch.device(device):
            try:  # allocates in bf16 directly; the plain constructor would allocate fp32 first (2x memory)
                model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
            except TypeError:
                model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
        tok = TextTokenizer(raw_tok)
    model.eval()
    _sync(torch)
    n = sum(p.numel() for p in model.parameters())
    text = model.config.get_text_config()
    info = {"parameters": n, "dtype": str(dtype).replace("torch.", ""), "device": device,
            "build_s": round(time.perf_counter() - t0, 2), "attn_implementation": model.config._attn_implementation,
            "text": {k: getattr(text, k, None) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "num_key_value_heads", "intermediate_size", "vocab_size")},
            "tied_embeddings": model.lm_head.weight is model.model.language_model.embed_tokens.weight,
            "vision_depth": model.config.vision_config.depth,
            "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2)}
    return model, tok, info


def _turn_dict(t) -> dict:
    return {"kind": t.kind, "visual_tokens": t.visual_tokens, "prefill_tokens": t.prefill_tokens,
            "generated": len(t.generated_ids), "vision_ms": t.vision_ms, "prefill_ms": t.prefill_ms,
            "decode_ms": t.decode_ms, "turn_ms": t.vision_ms + t.prefill_ms + t.decode_ms}


def _run_session(session, image, question, crops, view, torch) -> dict:
    _reset_peak(torch)
    _sync(torch)
    t = time.perf_counter()
    r = session.run(image, question, crops=crops, view=view)
    _sync(torch)
    wall = (time.perf_counter() - t) * 1e3
    return {"sample_ms": wall, "peak_gib": _peak_gib(torch), "turns": [_turn_dict(x) for x in r.turns],
            "crops": r.crops, "rtr": r.rtr, "visual_tokens": r.visual_tokens,
            "native_visual_tokens": r.native_visual_tokens, "_ids": r.ids}


def _reprefill(inner, rec, loop: dict, capacity: int, torch) -> dict:
    """The crop turn as the released AwaRes eval runs it: every view through the vision tower again and the whole
    conversation (turn-1 prompt + request + crop turn) prefilled on an empty cache, then the same number of decode
    steps as the kept-cache turn. Inputs are what the loop run just sent to the backend (RecordingBackend), as in
    bench_kv_reuse.py."""
    import numpy as np
    from bench_kv_reuse import _ms  # the benchmarks folder is on sys.path

    prefills = [(e, p, lg) for e, p, lg in rec.calls if e.shape[0] > 1]  # turn-1 and turn-2 prefills
    (e1, p1, _), (e2, p2, loop_logits) = prefills[0], prefills[1]
    embeds, positions = np.concatenate([e1, e2]), np.concatenate([p1, p2], axis=1)
    views = list(rec.views)
    _reset_peak(torch)
    _sync(torch)
    vision_ms = _ms(lambda: inner.encode_images(views))
    cache = inner.new_cache(capacity)
    out = {}
    _sync(torch)
    ids = loop["_ids"][: embeds.shape[0]]  # the conversation's ids in cache order, as the loop prefilled them

    def prefill():  # token embedding included, as in the session's prefill_ms; the image splice is a copy
        inner.embed_tokens(ids)
        out.update(logits=inner.forward(embeds, positions, cache))

    prefill_ms = _ms(prefill)
    steps = loop["turns"][1]["generated"] - 1  # the session feeds back every sampled token but the last
    pos = int(positions.max()) + 1

    def decode():
        logits = out["logits"]
        for i in range(steps):
            tid = int(np.argmax(logits))
            e = inner.embed_tokens(np.asarray([tid], dtype=np.int64))
            logits = inner.forward(e, np.full((3, 1), pos + i, dtype=np.int64), cache)

    _sync(torch)
    decode_ms = _ms(decode)
    diff = np.abs(out["logits"].astype(np.float64) - loop_logits.astype(np.float64))
    turn = {"kind": "crop (re-prefill)", "visual_tokens": sum(v.n_tokens for v in views),
            "prefill_tokens": int(embeds.shape[0]), "generated": steps + 1, "vision_ms": vision_ms,
            "prefill_ms": prefill_ms, "decode_ms": decode_ms, "turn_ms": vision_ms + prefill_ms + decode_ms}
    t1 = loop["turns"][0]
    return {"turn2": turn, "sample_ms": t1["turn_ms"] + turn["turn_ms"], "peak_gib": _peak_gib(torch),
            # kept cache vs from-scratch prefill of the same tokens: same last-token logits up to dtype rounding
            "logit_max_abs_diff": float(diff.max()), "logit_scale": float(np.abs(loop_logits).max()),
            "same_argmax": bool(np.argmax(out["logits"]) == np.argmax(loop_logits))}


def _aggregate(runs: list[dict]) -> dict:
    """Medians over runs of the sample time, peak memory and every per-turn field."""
    last = runs[-1]
    agg = {k: v for k, v in last.items() if k not in ("turns", "turn2", "sample_ms", "peak_gib")
           and not k.startswith("_")}
    agg["sample_ms"] = _med([r["sample_ms"] for r in runs])
    agg["runs_sample_ms"] = [round(r["sample_ms"], 2) for r in runs]
    agg["peak_gib"] = max((r["peak_gib"] for r in runs if r["peak_gib"] is not None), default=None)
    key = "turns" if "turns" in last else None
    turn_lists = [r["turns"] for r in runs] if key else [[r["turn2"]] for r in runs]
    med_turns = []
    for i, t in enumerate(turn_lists[-1]):
        m = dict(t)
        for f in ("vision_ms", "prefill_ms", "decode_ms", "turn_ms"):
            m[f] = _med([tl[i][f] for tl in turn_lists if len(tl) > i])
        med_turns.append(m)
    agg["turns" if key else "turn2"] = med_turns if key else med_turns[0]
    return agg


def bench_size(size: str, args, device: str, work: Path) -> dict:
    """All four paths on one model: the kept-cache crop loop, its re-prefill counterpart, native, low-res only."""
    import torch

    from edge_awares.backend import RecordingBackend
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.protocols import get_protocol
    from edge_awares.session import Session, SessionConfig
    from edge_awares.views import Geometry
    from edge_awares.runtimes.reference import TorchBackend

    res: dict = {"errors": {}}
    model, tok, res["model"] = build(size, device, work)
    inner = TorchBackend(model=model, device=device)
    rec = RecordingBackend(inner)
    # The published Qwen2.5-VL processor limits, the same for every size, so token counts match across sizes.
    geometry = Geometry(min_pixels=3136, max_pixels=12845056)
    session = Session(rec, tok, get_protocol("tool_call"), AWARES_CROPS, geometry,
                      SessionConfig(max_new_tokens=args.max_new_tokens, max_crop_turns=1, max_context=8192))
    w, h = (int(x) for x in args.image.lower().split("x"))
    image, source, question = make_image(w, h)
    res["image"] = {"size": [image.width, image.height], "source": source, "question": question,
                    "crops": args.crops, "max_new_tokens": args.max_new_tokens}
    paths = {
        "awares_loop": lambda: _run_session(session, image, question, args.crops, "lowres", torch),
        "reprefill": lambda: _reprefill(inner, rec, last_loop, 8192, torch),
        "native": lambda: _run_session(session, image, question, "none", "native", torch),
        "lowres_only": lambda: _run_session(session, image, question, "none", "lowres", torch),
    }
    runs = {k: [] for k in paths}
    last_loop = None
    for i in range(args.runs + 1):  # run 0 is the warm-up; the paths interleave so drift hits them alike
        for name, fn in paths.items():
            if name in res["errors"] or (name == "reprefill" and last_loop is None):
                continue
            try:
                r = fn()
                if name == "awares_loop":
                    last_loop = r
                if i:
                    runs[name].append(r)
            except Exception as e:
                res["errors"][name] = _error(e)
                if name == "awares_loop":
                    last_loop = None
    for name, rs in runs.items():
        if rs:
            res[name] = _aggregate(rs)
    return res


# ----------------------------------------------------------------------------------------------- training
def _train_callbacks(torch):
    """[sync-and-peak, step timer]: the timer is edge_awares.train.steptime's; the first callback makes its clock
    read after the GPU is done (CUDA is asynchronous) and records each step's peak memory."""
    from transformers import TrainerCallback

    from edge_awares.train.steptime import _step_timer

    class SyncPeak(TrainerCallback):
        def __init__(self):
            self.peaks = []

        def on_step_begin(self, args, state, control, **kw):
            _sync(torch)
            _reset_peak(torch)

        def on_step_end(self, args, state, control, **kw):
            _sync(torch)
            self.peaks.append(_peak_gib(torch))

    return SyncPeak(), _step_timer()


SHIM_NOTE = ("transformers < 5.18: the project's SFT stops there (TRL refuses assistant_only_loss for vision data, "
             "and that version's processor does not shift the assistant mask past expanded image tokens, so the "
             "collator finds no assistant spans). This step ran the project's trainer with TRL's check off and the "
             "assistant mask found from the token ids (gpu_check.scan_assistant_masks; equal to transformers "
             ">= 5.18's mask on the test trajectories, tests/test_gpu_check.py)")


def _old_transformers() -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) < Version("5.18.0.dev0")


def scan_assistant_masks(input_ids, im_start: int, head: list[int], im_end: int):
    """1 over each assistant turn's `content<|im_end|>`: from after `<|im_start|>assistant\n` to its `<|im_end|>`.
    What the training template's generation markers select, up to the newline after `<|im_end|>` that the
    project's `sampled_mask` drops anyway. `input_ids` [B, L] tensor; returns a tensor of the same shape."""
    import torch

    masks = torch.zeros_like(input_ids)
    n = len(head)
    for b, row in enumerate(input_ids.tolist()):
        i = 0
        while i < len(row):
            if row[i] == im_start and row[i + 1:i + 1 + n] == head:
                s = i + 1 + n
                e = next((j for j in range(s, len(row)) if row[j] == im_end), len(row) - 1)
                masks[b, s:e + 1] = 1
                i = e + 1
            else:
                i += 1
    return masks


def with_scanned_assistant_mask(processor):
    """`processor` whose apply_chat_template answers return_assistant_tokens_mask from the token ids instead."""
    tok = processor.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    head = tok.encode("assistant\n", add_special_tokens=False)
    original = processor.apply_chat_template

    def apply_chat_template(conversation, *args, return_assistant_tokens_mask=False, **kw):
        out = original(conversation, *args, **kw)
        if return_assistant_tokens_mask:
            out["assistant_masks"] = scan_assistant_masks(out["input_ids"], im_start, head, im_end)
        return out

    processor.apply_chat_template = apply_chat_template
    return processor


@contextlib.contextmanager
def _sft_on_old_transformers():
    """train_sft as it is, with TRL's assistant-only check off and the processor's assistant mask from the token ids
    (SHIM_NOTE). train_sft imports SFTConfig from trl and make_processor from .render when it runs, so swapping those
    two module attributes for the duration is enough: no project file changes."""
    import trl

    from edge_awares.train import render

    config, make = trl.SFTConfig, render.make_processor

    class SFTConfigNoAssistantCheck(config):
        def __post_init__(self):
            self.assistant_only_loss = False  # the project's collator masks by itself
            super().__post_init__()

    trl.SFTConfig = SFTConfigNoAssistantCheck
    render.make_processor = lambda *a, **kw: with_scanned_assistant_mask(make(*a, **kw))
    try:
        yield
    finally:
        trl.SFTConfig, render.make_processor = config, make


def _metrics(out: Path) -> list[dict]:
    f = out / "run" / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def train_section(args, device: str, work: Path, deadline: float) -> dict:
    """One SFT step and one GRPO step (LoRA) through edge_awares.train.train_sft / train_grpo, with the 3B GPU recipes
    of configs/ and only what one step on random weights needs overridden (steps, no saving, no validation; GRPO's
    answer metric anls, since the recipe's sentence-embedding model is one more wheel)."""
    import shutil

    import torch

    from edge_awares.data.format import Trajectory, read_samples, write_trajectories
    from edge_awares.data.synth import write_dataset
    from edge_awares.train.config import GRPORunConfig, SFTRunConfig, load_recipe

    res: dict = {}
    t0 = time.perf_counter()
    if args.tiny:
        from edge_awares.tiny import make_tiny_checkpoint

        base = make_tiny_checkpoint(work / "train-base", preset="tiny", initializer_range=0.02, force=True)
    else:
        from edge_awares.train.steptime import make_arch_checkpoint

        base = make_arch_checkpoint(work / "train-base", ARCH["3b"])
        _free(torch)
    res["checkpoint"] = {"model": "tiny" if args.tiny else ARCH["3b"], "save_s": round(time.perf_counter() - t0, 2),
                         "gib_on_disk": round(sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30, 2)}
    # 448 px pages (the generator's default): a random policy never stops, so each GRPO rollout runs to
    # max_completion_length, which the trainer sizes from the page (request + whole page at native size + answer).
    samples_file = write_dataset(work / "train-data", n=16, seed=0, force=True)  # --work reruns replace their own
    trajs = [Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []) for s in read_samples(samples_file)]
    traj_file = write_trajectories(work / "train-data" / "trajectories.jsonl", trajs, image_dir=None)
    common = dict(max_steps=1, save_strategy="no", val_fraction=0.0, val_samples=0, eval_steps=0, logging_steps=1,
                  overwrite=True)
    if args.tiny:  # the recipes' bf16 and batch sizes are for the GPU
        common.update(precision="auto", grad_accum=1)
    stages = [
        ("sft", SFTRunConfig, "qwen2.5-vl-3b-sft.yaml", traj_file, dict(batch_size=1) if args.tiny else {}),
        ("grpo", GRPORunConfig, "qwen2.5-vl-3b-grpo.yaml", samples_file,
         dict(answer_metric="anls", **({"num_generations": 2} if args.tiny else {}))),
    ]
    for name, cls, recipe, data, extra in stages:
        if time.perf_counter() > deadline:
            res[name] = {"error": "skipped: over the time budget"}
            continue
        out = work / f"train-{name}"
        try:
            cfg = cls.from_dict({**load_recipe(ROOT / "configs" / recipe), **common, **extra, "model": str(base),
                                 "data": str(data), "output": str(out)})
            sync_peak, timer = _train_callbacks(torch)
            fn = __import__(f"edge_awares.train.{name}", fromlist=["x"])
            train = getattr(fn, f"train_{name}")
            shim = name == "sft" and _old_transformers()
            _reset_peak(torch)
            t = time.perf_counter()
            with _sft_on_old_transformers() if shim else contextlib.nullcontext():
                train(cfg, log=lambda *a, tag=f"[{name}]": print(tag, *a), callbacks=[sync_peak, timer])
            total = time.perf_counter() - t
            logs = _metrics(out)
            step = next((r for r in logs if "loss" in r), {})
            resolved = json.loads((out / "run" / "config.json").read_text()).get("resolved", {})
            res[name] = {"step_s": round(timer.times[0], 3) if timer.times else None,
                         "step_peak_gib": sync_peak.peaks[0] if sync_peak.peaks else None,
                         "total_s": round(total, 2), "total_peak_gib": _peak_gib(torch),
                         "placement": resolved.get("placement"), "loss": step.get("loss"),
                         "log": {k: v for k, v in step.items() if isinstance(v, (int, float))},
                         "settings": {k: getattr(cfg, k) for k in ("lora", "lora_rank", "batch_size", "grad_accum",
                                                                   "gradient_checkpointing", "precision")
                                      + (("num_generations", "beta", "loss_type") if name == "grpo" else
                                         ("request_weight",))}}
            if shim:
                res[name]["note"] = SHIM_NOTE
        except Exception as e:
            res[name] = _error(e)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            _free(torch)
    shutil.rmtree(base, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------------------- report
def _f(x, nd=1):
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def markdown(result: dict) -> str:
    p = result.get("preflight", {})
    v = p.get("versions", {})
    lines = [f"# GPU check: AwaRes crop loop vs native vs re-prefill ({p.get('gpu') or 'cpu'})", "",
             f"torch {v.get('torch')}, transformers {v.get('transformers')}, trl {v.get('trl')}, peft {v.get('peft')}; "
             f"medians of {result['args']['runs']} runs after a warm-up; random weights. "
             f"Reproduce: `{result['command']}`.", ""]
    for size, r in result.get("sizes", {}).items():
        m = r.get("model", {})
        img = r.get("image", {})
        n = m.get("parameters", 0)
        params = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
        head = (f"## {size}: {params} params, {m.get('dtype')} on {m.get('device')} ({m.get('attn_implementation')}), "
                f"built in {_f(m.get('build_s'), 1)} s" if m else f"## {size}")
        lines += [head, ""]
        if img:
            lines += [f"Image {img['size'][0]}x{img['size'][1]} ({img['source']}), forced crops {img['crops']}, "
                      f"max_new_tokens {img['max_new_tokens']}.", ""]
        if r.get("error"):
            lines += [f"**error**: {r['error']}", ""]
        lines += ["| path | turn | visual tok | prefilled tok | generated | vision ms | prefill ms | decode ms | "
                  "turn ms | sample ms | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]

        def row(path, t, sample="", peak=None):
            return (f"| {path} | {t['kind']} | {t['visual_tokens']} | {t['prefill_tokens']} | {t['generated']} | "
                    f"{_f(t['vision_ms'])} | {_f(t['prefill_ms'])} | {_f(t['decode_ms'])} | {_f(t['turn_ms'])} | "
                    f"{sample} | {_f(peak, 2)} |")

        labels = {"awares_loop": "AwaRes loop, kept cache", "native": "native single pass",
                  "lowres_only": "low-res only (no crops)"}
        for key in ("awares_loop", "reprefill", "native", "lowres_only"):
            if key not in r:
                continue
            a = r[key]
            if key == "reprefill":
                lines.append(row("re-prefill crop turn (AwaRes eval)", a["turn2"],
                                 _f(a["sample_ms"]) + " (turn 1 of the loop + this)", a["peak_gib"]))
                continue
            for j, t in enumerate(a["turns"]):
                last = j == len(a["turns"]) - 1
                lines.append(row(labels[key] if j == 0 else "", t, _f(a["sample_ms"]) if last else "",
                                 a["peak_gib"] if last else None))
        lines.append("")
        if "awares_loop" in r:
            lines.append("Turn 1 of the loop decodes nothing: forced crops enter the cache as the request the model "
                         "would have written (mask 0), so turn 2 holds the whole answer.")
        if "awares_loop" in r and "reprefill" in r:
            k, f = r["awares_loop"]["turns"][1], r["reprefill"]["turn2"]
            lines.append(f"Crop turn, kept cache / re-prefill: tokens {k['prefill_tokens']}/{f['prefill_tokens']} "
                         f"= {k['prefill_tokens'] / f['prefill_tokens']:.3f}, prefill ms "
                         f"{_ratio(k['prefill_ms'], f['prefill_ms'])}, turn ms {_ratio(k['turn_ms'], f['turn_ms'])}; "
                         f"last-token logits max |diff| {r['reprefill']['logit_max_abs_diff']:.3g} "
                         f"(scale {r['reprefill']['logit_scale']:.3g}), same argmax: {r['reprefill']['same_argmax']}.")
        if "awares_loop" in r and "native" in r:
            lines.append(f"Per sample, loop / native: {_ratio(r['awares_loop']['sample_ms'], r['native']['sample_ms'])}"
                         f"; RTR {r['awares_loop']['rtr']:.3f} ({r['awares_loop']['visual_tokens']} of "
                         f"{r['awares_loop']['native_visual_tokens']} native visual tokens).")
        for name, err in r.get("errors", {}).items():
            lines.append(f"- **{name} failed**: {err['error']}")
        lines.append("")
    t = result.get("train")
    if t:
        lines += ["## One training step (LoRA, project trainers, configs/qwen2.5-vl-3b-*.yaml)", ""]
        if t.get("error"):
            lines += [f"**error**: {t['error']}", ""]
        ck = t.get("checkpoint", {})
        if ck:
            lines += [f"Checkpoint {ck['model']} saved in {ck['save_s']} s ({ck['gib_on_disk']} GiB).", ""]
        lines += ["| trainer | status | step s | step peak GiB | run s (load+step+merge+save) | loss | settings |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("sft", "grpo"):
            s = t.get(name)
            if not s:
                continue
            if "error" in s:
                lines.append(f"| {name} | failed: {s['error'][:200]} | | | | | |")
            else:
                lines.append(f"| {name} | ok ({(s.get('placement') or {}).get('dtype')}) | {_f(s['step_s'], 2)} | "
                             f"{_f(s['step_peak_gib'], 2)} | {_f(s['total_s'], 1)} | {_f(s['loss'], 4)} | "
                             f"{', '.join(f'{k}={v}' for k, v in s['settings'].items())} |")
        for name in ("sft", "grpo"):
            s = t.get(name) or {}
            if s.get("note"):
                lines.append(f"- {name}: {s['note']}.")
            log = s.get("log") or {}
            if name == "grpo" and "completions/mean_length" in log:
                lines.append(f"- grpo: completions {log['completions/mean_length']:.0f} tokens on average, clipped "
                             f"{log.get('completions/clipped_ratio', 0):.0%} (a random policy never stops), reward "
                             f"{log.get('reward', 0):.3f}.")
        lines.append("")
    lines.append(f"Total wall time {result.get('elapsed_s')} s.")
    return "\n".join(lines) + "\n"


def _ratio(a, b) -> str:
    return f"{a / b:.3f}" if a is not None and b else "–"


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3b,7b", help="comma-separated: 3b, 7b (ignored with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny random configs instead (CPU if no GPU): plumbing check")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per path, after one warm-up")
    ap.add_argument("--skip-train", action="store_true", help="skip the SFT and GRPO steps")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--image", default="1288x966", help="synthetic page WxH")
    ap.add_argument("--crops", default="0,4", help="forced crop ids of turn 2")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--budget-s", type=float, default=450, help="sections starting after this many seconds are skipped")
    ap.add_argument("--work", default=None, help="scratch folder for checkpoints (default: a temporary one)")
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    sizes = ["tiny"] if a.tiny else [s.strip().lower() for s in a.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in ARCH and s != "tiny"]
    if bad:
        ap.error(f"unknown sizes {bad}; legal: {', '.join(ARCH)}")
    out = Path(a.out) if a.out else Path(os.environ.get("OUT") or ".") / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = start + a.budget_s
    result: dict = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "args": vars(a), "sizes": {}}

    def save():
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(result))

    result["preflight"] = p = preflight()
    print_preflight(p)
    save()
    if "torch" in p["missing"] or "transformers" in p["missing"]:
        print("torch and transformers are required; nothing to run")
        return 1
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    result["device"] = device
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for size in sizes:
            if time.perf_counter() > deadline:
                result["sizes"][size] = {"error": "skipped: over the time budget"}
                continue
            print(f"== {size}: building and timing")
            try:
                result["sizes"][size] = bench_size(size, a, device, work)
            except Exception as e:
                result["sizes"][size] = _error(e)
            _free(torch)  # the model went with bench_size's frame; hand its blocks back before the next size
            save()
        if not a.skip_train:
            print("== training: one SFT step, one GRPO step")
            if p["missing_for"]["train"]:
                result["train"] = {"error": f"missing packages: {', '.join(p['missing_for']['train'])}"}
            elif time.perf_counter() > deadline:
                result["train"] = {"error": "skipped: over the time budget"}
            else:
                try:
                    result["train"] = train_section(a, device, work, deadline)
                except Exception as e:
                    result["train"] = _error(e)
            save()
    finally:
        if not a.work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        save()
    print(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
