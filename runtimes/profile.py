"""Profiling of the crop loop: per-turn vision / prefill / decode time, tokens/s, RTR, peak memory, and a
Chrome trace (chrome://tracing or ui.perfetto.dev) of every backend call.

    edge-awares profile doc.png "What is the total?" --engine engine/ --runs 5 --trace trace.json

Medians over `runs` after `warmup` runs. Works on any Session (engine or checkpoint), torch-free for engines.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_awares.backend import forward_embedded
from edge_awares.errors import ConfigError, PromptError


@dataclass(frozen=True)
class ProfileConfig:
    image: str
    question: str
    engine: str | None = None
    model: str | None = None
    protocol: str | None = None
    crops: str = "model"
    runs: int = 5
    warmup: int = 1
    provider: str = "cpu"
    max_new_tokens: int | None = None  # None: the engine's stored limits, else SessionConfig's
    max_context: int | None = None
    trace: str | None = None
    backend: str | None = None  # which backend of the engine folder (None: its default)
    memory_budget: float | None = None  # GiB (None: the runtime's default)

    def validate(self) -> "ProfileConfig":
        if bool(self.engine) == bool(self.model):
            raise ConfigError("give exactly one of --engine or --model")
        if not self.question or not self.question.strip():
            raise PromptError("the question is empty")
        from edge_awares.ranges import Range

        Range(1, 10**6, integer=True).check("--runs", self.runs)
        Range(0, 10**6, integer=True).check("--warmup", self.warmup)
        from edge_awares.ranges import MEMORY_BUDGET_GB

        MEMORY_BUDGET_GB.check("--memory-budget", self.memory_budget)
        from edge_awares.api import check_limits

        check_limits(self.max_new_tokens, None, self.max_context)
        if self.trace:
            from edge_awares.outputs import check_file

            check_file(self.trace, "trace", inputs=(self.image, self.engine, self.model))
        return self


class _Traced:
    """Wraps a backend and records one trace event per call (name, start, duration, sizes)."""

    def __init__(self, inner, events: list, clock0: float):
        self._inner, self._events, self._t0 = inner, events, clock0
        self.name, self.hidden_size, self.vocab_size = inner.name, inner.hidden_size, inner.vocab_size

    def _span(self, name, start, args):
        end = time.perf_counter()
        self._events.append({"name": name, "ph": "X", "pid": 1, "tid": 2, "ts": (start - self._t0) * 1e6,
                             "dur": (end - start) * 1e6, "args": args})

    def encode_images(self, views):
        t = time.perf_counter()
        out = self._inner.encode_images(views)
        self._span("vision", t, {"views": len(views), "visual_tokens": sum(v.n_tokens for v in views)})
        return out

    def embed_tokens(self, ids):
        return self._inner.embed_tokens(ids)

    def new_cache(self, capacity):
        return self._inner.new_cache(capacity)

    def forward(self, embeds, positions, cache):
        t = time.perf_counter()
        out = self._inner.forward(embeds, positions, cache)
        n = int(embeds.shape[0])
        self._span("prefill" if n > 1 else "decode_step", t, {"tokens": n, "cache_length": int(cache.length)})
        return out

    def forward_tokens(self, ids, images, positions, cache):
        if not hasattr(self._inner, "forward_tokens"):
            return forward_embedded(self, ids, images, positions, cache)  # through forward above: traced
        t = time.perf_counter()
        out = self._inner.forward_tokens(ids, images, positions, cache)
        n = len(ids)
        self._span("prefill" if n > 1 else "decode_step", t, {"tokens": n, "cache_length": int(cache.length)})
        return out


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, in bytes (Linux /proc; peak from getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024
    current = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024
    except OSError:
        pass
    return current, peak


def _median(xs):
    return float(statistics.median(xs)) if xs else 0.0


def profile(cfg: ProfileConfig, session=None) -> dict:
    """Run the loop `warmup + runs` times; returns a JSON-able report and writes the trace if asked."""
    from edge_awares.api import open_session
    from edge_awares.images import load_image
    from edge_awares.session import Sampler

    cfg.validate()
    image = load_image(cfg.image)
    rss_start, _ = rss_bytes()
    t_load = time.perf_counter()
    if session is None:
        session = open_session(model=cfg.model, engine=cfg.engine, protocol=cfg.protocol, provider=cfg.provider,
                               memory_budget=cfg.memory_budget, backend=cfg.backend,
                               overrides={"max_new_tokens": cfg.max_new_tokens, "max_crop_turns": 1,
                                          "max_context": cfg.max_context})
    load_ms = (time.perf_counter() - t_load) * 1e3
    rss_loaded, _ = rss_bytes()
    for _ in range(cfg.warmup):
        session.run(image, cfg.question, crops=cfg.crops, sampler=Sampler(), max_new_tokens=session.config.max_new_tokens)

    events: list[dict] = []
    t0 = time.perf_counter()
    inner = session.backend
    session.backend = _Traced(inner, events, t0)
    results, totals = [], []
    try:
        for i in range(cfg.runs):
            start = time.perf_counter()
            r = session.run(image, cfg.question, crops=cfg.crops, sampler=Sampler(), max_new_tokens=session.config.max_new_tokens)
            end = time.perf_counter()
            totals.append((end - start) * 1e3)
            results.append(r)
            events.append({"name": f"run {i + 1}", "ph": "X", "pid": 1, "tid": 1, "ts": (start - t0) * 1e6,
                           "dur": (end - start) * 1e6, "args": {"answer": r.answer, "crops": r.crops, "rtr": r.rtr}})
    finally:
        session.backend = inner
    _, peak = rss_bytes()

    turns = []
    for k in range(max(len(r.turns) for r in results)):
        rows = [r.turns[k] for r in results if len(r.turns) > k]
        gen = [len(t.generated_ids) for t in rows]
        dec = [t.decode_ms for t in rows]
        steps = [max(g - 1, 0) for g in gen]  # the first token comes from the prefill's logits
        turns.append({
            "turn": k + 1, "kind": rows[0].kind, "runs": len(rows),
            "visual_tokens": int(_median([t.visual_tokens for t in rows])),
            "prefill_tokens": int(_median([t.prefill_tokens for t in rows])),
            "generated_tokens": _median(gen),
            "vision_ms": _median([t.vision_ms for t in rows]), "prefill_ms": _median([t.prefill_ms for t in rows]),
            "decode_ms": _median(dec),
            "prefill_tokens_per_s": _median([t.prefill_tokens / (t.prefill_ms / 1e3) for t in rows if t.prefill_ms > 0]),
            "decode_tokens_per_s": _median([s / (d / 1e3) for s, d in zip(steps, dec) if s and d > 0]),
            "total_ms": _median([t.vision_ms + t.prefill_ms + t.decode_ms for t in rows]),
        })
    crop_turns = [t for t in turns if t["kind"] == "crop"]
    last = results[-1]
    report = {
        "config": asdict(cfg), "backend": inner.name,
        "precision": getattr(getattr(inner, "manifest", None), "precision", "fp32 (torch)"),
        "runs": cfg.runs, "warmup": cfg.warmup, "load_ms": load_ms,
        "total_ms": _median(totals), "total_ms_runs": totals,
        "turns": turns,
        "crop_turn_ms": crop_turns[0]["total_ms"] if crop_turns else 0.0,
        "rtr": last.rtr, "visual_tokens": last.visual_tokens, "native_visual_tokens": last.native_visual_tokens,
        "crops": last.crops, "answer": last.answer,
        "memory": {"rss_start_mb": rss_start / 2**20, "rss_after_load_mb": rss_loaded / 2**20,
                   "peak_rss_mb": peak / 2**20},
    }
    if cfg.trace:
        write_trace(cfg.trace, events, report)
        report["trace"] = cfg.trace
    return report


def write_trace(path: str | Path, events: list[dict], report: dict) -> Path:
    """Chrome trace-event JSON: runs on one row, backend calls (vision, prefill, decode steps) on another.
    Raises OutputError (see edge_awares.outputs.check_file: a missing folder, a folder, the input, a file not
    ours, a full disk or a read-only place); nothing partial is left."""
    meta = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"edge-awares ({report['backend']})"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "session runs"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "backend calls"}},
    ]
    from edge_awares.outputs import PRODUCER, write_file_atomic

    # Written whole into an existing folder, replacing only a trace of ours (otherData.producer marks it).
    write_file_atomic(path, json.dumps({"traceEvents": meta + events, "displayTimeUnit": "ms",
                                        "otherData": {"producer": PRODUCER, "total_ms": report["total_ms"],
                                                      "rtr": report["rtr"]}}),
                      "trace", inputs=tuple(report.get("config", {}).get(k) for k in ("image", "engine", "model")))
    return Path(path)


def format_report(report: dict) -> str:
    """A plain-text table of a profile report (the CLI prints it with rich when available)."""
    lines = [f"{report['backend']} ({report['precision']}): median {report['total_ms']:.1f} ms over "
             f"{report['runs']} runs (+{report['warmup']} warm-up); load {report['load_ms']:.0f} ms",
             f"crops {', '.join(report['crops']) or 'none'}; RTR {report['rtr']:.3f}; crop turn "
             f"{report['crop_turn_ms']:.1f} ms; peak RSS {report['memory']['peak_rss_mb']:.0f} MB"]
    head = ("turn", "kind", "vis tok", "prefill tok", "gen", "vision ms", "prefill ms", "decode ms", "decode tok/s")
    lines.append(" | ".join(head))
    for t in report["turns"]:
        lines.append(" | ".join([str(t["turn"]), t["kind"], str(t["visual_tokens"]), str(t["prefill_tokens"]),
                                 f"{t['generated_tokens']:.0f}", f"{t['vision_ms']:.1f}", f"{t['prefill_ms']:.1f}",
                                 f"{t['decode_ms']:.1f}", f"{t['decode_tokens_per_s']:.1f}"]))
    return "\n".join(lines)


__all__ = ["ProfileConfig", "profile", "write_trace", "format_report", "rss_bytes"]
