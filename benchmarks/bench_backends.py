"""End-to-end crop-loop latency per backend: PyTorch (transformers, eager mode) vs the ONNX engine at fp32, int8
and int4 vs llama.cpp (GGUF f32, q8_0, q4_K from the same export folder), on a mid-size random-init Qwen2.5-VL,
same image, question and forced crops (so equal visual tokens and positions on every side: the one session loop
feeds them all), runs interleaved, the same thread count everywhere.

    python benchmarks/bench_backends.py [--preset mid] [--runs 5] [--crops 0,4] [--max-new-tokens 32] [--threads 2]

Reports medians after a warm-up: total and per-turn vision / prefill / decode ms, decode tokens/s next to the
memory-bandwidth bound (decoder weight bytes read per token over a measured copy bandwidth), engine sizes and
the deviation each export recorded. Stop tokens are masked so every backend decodes the same token count.
Writes bench_backends.json and bench_backends.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Best-of-N numpy copy bandwidth in bytes/s, counting bytes read plus bytes written (STREAM 'Copy'),
    with one thread per core on disjoint slices (np.copyto releases the GIL), since onnxruntime decodes
    with one thread per core too; the single-thread figure is lower on most machines."""
    from concurrent.futures import ThreadPoolExecutor

    src = np.ones(mb * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    k = os.cpu_count() or 1
    parts = list(zip(np.array_split(dst, k), np.array_split(src, k)))
    best = float("inf")
    with ThreadPoolExecutor(k) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))
            best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


class NoStopSampler:
    """Greedy over all tokens but the stop tokens, so every backend decodes exactly max_new_tokens."""

    def __init__(self, stop_ids):
        self.stop = list(stop_ids)

    def __call__(self, logits):
        z = np.array(logits, dtype=np.float32, copy=True)
        z[self.stop] = -np.inf
        return int(np.argmax(z))


def _med(xs):
    return float(statistics.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--crops", default="0,4")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--size", default="1288x966", help="image WxH")
    ap.add_argument("--precisions", default="fp32,int8,int4")
    ap.add_argument("--formats", default="onnx,gguf", help="engine formats per precision (gguf needs llama-cpp-python)")
    ap.add_argument("--threads", type=int, default=2, help="EDGE_AWARES_THREADS for every engine backend")
    ap.add_argument("--init-range", type=float, default=0.02,
                    help="weight init std (0.02 as Qwen's; larger ranges blow up activations and int8 error)")
    ap.add_argument("--work", default=None, help="keep the checkpoint and engines here (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ["EDGE_AWARES_THREADS"] = str(a.threads)
    formats = tuple(f for f in a.formats.split(",") if f)

    from conftest import make_doc
    from edge_awares.api import open_session
    from edge_awares.export.engine import ExportConfig, export_engine
    from edge_awares.manifest import load_manifest
    from edge_awares.runtimes import open_engine_session
    from edge_awares.session import STOP_TOKENS, SessionConfig
    from edge_awares.tiny import make_tiny_checkpoint

    tmp = None if a.work else tempfile.TemporaryDirectory()
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{a.preset}-init{a.init_range}"
    if not (ckpt / "config.json").is_file():
        make_tiny_checkpoint(ckpt, preset=a.preset, initializer_range=a.init_range)
    engines, export_s = {}, {}
    for p in a.precisions.split(","):
        out = work / f"{ckpt.name}-engine-{p}-{'-'.join(formats)}"
        if not out.is_dir():
            t = time.perf_counter()
            # gate=False: random weights (plumbing, not accuracy); the deviation each export measured is reported
            export_engine(ExportConfig(checkpoint=str(ckpt), output=str(out), precision=p, formats=formats,
                                       gate=False), log=lambda m: None)
            export_s[p] = time.perf_counter() - t
        engines[p] = out

    w, h = (int(v) for v in a.size.split("x"))
    image = make_doc(w, h)
    question = "What is the total written on the page?"
    cfg = SessionConfig(max_new_tokens=a.max_new_tokens)
    sessions = {"pytorch eager": open_session(model=ckpt, config=cfg)}
    names = {}  # session name -> (engine folder, backend)
    for p, e in engines.items():
        m = load_manifest(e, check_files=False)
        for b in m.backends:
            names[f"{b} {m.select(b).precision}"] = (e, b)
    for k, (e, b) in names.items():
        sessions[k] = open_engine_session(e, config=cfg, backend=b)
    torch_backend = sessions["pytorch eager"].backend
    tok = sessions["pytorch eager"].tok
    sampler = NoStopSampler([tok.token_id(t) for t in STOP_TOKENS])

    # Weight bytes read per decode step: the decoder graph (every layer and the LM head) plus one embedding row.
    lm = torch_backend.model.model.language_model
    torch_bytes = sum(p.numel() * p.element_size() for p in lm.layers.parameters())
    torch_bytes += sum(p.numel() * p.element_size() for p in [*lm.norm.parameters(), *torch_backend.model.lm_head.parameters()])
    bytes_per_token = {"pytorch eager": torch_bytes}
    sizes = {}
    for k, (e, b) in names.items():
        m = load_manifest(e, check_files=False, backend=b)
        if b == "onnx":
            dec = m.graph("decoder")
            decoder_files = [dec["file"], *dec["data_files"]]
        else:
            decoder_files = [m.entry["files"]["model"]]  # the whole language model (its token table included)
        bytes_per_token[k] = sum(m.data["files"][f]["bytes"] for f in decoder_files)
        sizes[k] = {"engine_bytes": m.size_bytes(), "ratio_to_fp32": m.size_bytes() / m.data["sizes"]["fp32_bytes"],
                    "deviation": m.verification["candidate"]}
    bandwidth = copy_bandwidth()

    def once(s):
        t = time.perf_counter()
        r = s.run(image, question, crops=a.crops, sampler=sampler, max_new_tokens=a.max_new_tokens)
        return (time.perf_counter() - t) * 1e3, r

    for s in sessions.values():  # warm-up
        once(s)
    raw = {k: [] for k in sessions}
    for _ in range(a.runs):  # interleaved, so background load hits every backend alike
        for k, s in sessions.items():
            raw[k].append(once(s))

    rows = {}
    for k, runs in raw.items():
        turns = []
        for i in range(len(runs[0][1].turns)):
            ts = [r.turns[i] for _, r in runs]
            steps = len(ts[0].generated_ids) - 1
            dec = _med([t.decode_ms for t in ts])
            turns.append({"kind": ts[0].kind, "visual_tokens": ts[0].visual_tokens,
                          "prefill_tokens": ts[0].prefill_tokens, "generated": len(ts[0].generated_ids),
                          "vision_ms": _med([t.vision_ms for t in ts]), "prefill_ms": _med([t.prefill_ms for t in ts]),
                          "decode_ms": dec, "decode_tok_s": steps / (dec / 1e3) if steps and dec else 0.0})
        decode = [t for t in turns if t["generated"] > 1][-1]
        rows[k] = {"total_ms": _med([ms for ms, _ in runs]), "total_ms_runs": [ms for ms, _ in runs], "turns": turns,
                   "decode_tok_s": decode["decode_tok_s"], "weight_bytes_per_token": bytes_per_token[k],
                   "bound_tok_s": bandwidth / bytes_per_token[k], **sizes.get(k, {})}
    eager = rows["pytorch eager"]["total_ms"]
    fp32 = rows.get("onnx fp32")
    for k, r in rows.items():
        r["speedup_vs_eager"] = eager / r["total_ms"]
        if fp32:
            r["decode_vs_fp32"] = r["decode_tok_s"] / fp32["decode_tok_s"]

    # ONNX engine over llama.cpp at matching precisions (fp32/f32, int8/q8_0, int4/q4_K): time ratios < 1 mean the
    # ONNX engine is faster; the decode ratio is tokens/s (> 1: ONNX decodes faster).
    pairs = {}
    from edge_awares.manifest import BACKEND_PRECISIONS

    for gname, canon in BACKEND_PRECISIONS["gguf"].items():
        o, g = rows.get(f"onnx {canon}"), rows.get(f"gguf {gname}")
        if not (o and g):
            continue
        pair = {"total": o["total_ms"] / g["total_ms"], "decode_tok_s": o["decode_tok_s"] / g["decode_tok_s"]}
        for i, (to, tg) in enumerate(zip(o["turns"], g["turns"])):
            for stage in ("vision_ms", "prefill_ms"):
                if tg[stage] > 0:
                    pair[f"t{i + 1}_{stage[:-3]}"] = to[stage] / tg[stage]
        pairs[f"onnx {canon} / gguf {gname}"] = pair

    first = raw["pytorch eager"][0][1]
    report = {
        "preset": a.preset, "init_range": a.init_range, "parameters": int(sum(p.numel() for p in torch_backend.model.parameters())),
        "image": [w, h], "crops": a.crops, "max_new_tokens": a.max_new_tokens, "runs": a.runs,
        "rtr": first.rtr, "visual_tokens": first.visual_tokens,
        "copy_bandwidth_gb_s": bandwidth / 1e9, "export_seconds": export_s,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "attention_torch": torch_backend.model.config._attn_implementation,
        "threads": a.threads, "backends": rows, "onnx_over_llama_cpp": pairs,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_backends.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (out / "bench_backends.md").write_text(md)
    print(md)
    if tmp:
        tmp.cleanup()


def markdown(rep: dict) -> str:
    lines = [
        f"# Crop loop per backend ({rep['preset']}, {rep['parameters'] / 1e6:.0f}M parameters, random init)",
        "",
        f"Image {rep['image'][0]}x{rep['image'][1]}, forced crops {rep['crops']} (RTR {rep['rtr']:.2f}, "
        f"{rep['visual_tokens']} visual tokens), {rep['max_new_tokens']} new tokens in the crop turn; medians of "
        f"{rep['runs']} interleaved runs after a warm-up; {rep['machine']['cores']} cores. Copy bandwidth "
        f"{rep['copy_bandwidth_gb_s']:.1f} GB/s (read + write, one thread per core); bound = bandwidth / decoder "
        f"weight bytes per token. PyTorch: transformers in eager mode (no torch.compile), "
        f"{rep.get('attention_torch', 'sdpa')} attention, fp32; weights initialised with std {rep.get('init_range')}.",
        "",
        "| backend | total ms | vs eager | t1 vision | t1 prefill | t2 vision | t2 prefill | t2 decode | "
        "decode tok/s | bound tok/s | of bound | vs fp32 decode | size MB | size vs fp32 | rel logit err | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in rep["backends"].items():
        t1, t2 = r["turns"][0], r["turns"][-1]
        dev = r.get("deviation", {})
        lines.append(" | ".join([
            f"| {k}", f"{r['total_ms']:.0f}", f"{r['speedup_vs_eager']:.2f}x", f"{t1['vision_ms']:.0f}",
            f"{t1['prefill_ms']:.0f}", f"{t2['vision_ms']:.0f}", f"{t2['prefill_ms']:.0f}", f"{t2['decode_ms']:.0f}",
            f"{r['decode_tok_s']:.1f}", f"{r['bound_tok_s']:.1f}", f"{r['decode_tok_s'] / r['bound_tok_s']:.0%}",
            f"{r.get('decode_vs_fp32', 0):.2f}x", f"{r.get('engine_bytes', 0) / 1e6:.0f}" if "engine_bytes" in r else "-",
            f"{r['ratio_to_fp32']:.2f}" if "ratio_to_fp32" in r else "-",
            f"{dev['rel_logit_err']:.2%}" if dev else "-", f"{dev['top1_agreement']:.0%}" if dev else "-",
        ]) + " |")
    t = rep["backends"]["pytorch eager"]["turns"]
    lines += ["", f"Turn 1: {t[0]['visual_tokens']} visual / {t[0]['prefill_tokens']} prefill tokens; turn 2 (crop): "
              f"{t[-1]['visual_tokens']} visual / {t[-1]['prefill_tokens']} prefill tokens, "
              f"{t[-1]['generated']} generated. Deviation: the export's teacher-forced comparison against the "
              "PyTorch fp32 reference (random weights: plumbing, not accuracy)."]
    if rep.get("onnx_over_llama_cpp"):
        lines += ["", f"ONNX engine / llama.cpp, same run ({rep.get('threads')} threads; time ratios: < 1 = ONNX faster; "
                  "decode: tokens/s ratio, > 1 = ONNX faster):", "",
                  "| pair | end to end | t1 vision | t1 prefill | t2 vision | t2 prefill | decode tok/s |",
                  "|---|---|---|---|---|---|---|"]
        for k, p in rep["onnx_over_llama_cpp"].items():
            cells = [p.get(c) for c in ("total", "t1_vision", "t1_prefill", "t2_vision", "t2_prefill", "decode_tok_s")]
            lines.append(f"| {k} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
