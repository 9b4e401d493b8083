"""Evaluation: run the session over a dataset and report accuracy, RTR, request and parse rates, crop-id
histogram and latency — the numbers the paper compares (accuracy at a retained-token ratio).

    edge-awares eval --data DIR_OR_JSONL --model CKPT [--crops model|none|all|IDS] [--native] [--json]
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from .errors import ConfigError, DataError
from .protocols import DEFAULT_PROTOCOL
from .session import Session

METRICS = ("exact", "anls", "relaxed", "mc", "embedding")


@dataclass(frozen=True)
class EvalConfig:
    data: str
    model: str | None = None
    engine: str | None = None
    benchmark: str = "samples"  # loader name: samples (our JSONL), chartqa, docvqa, textvqa, pope, vstar
    protocol: str | None = None  # None: the engine's own protocol, or tool_call for a checkpoint
    crops: str = "model"
    native: bool = False  # single pass at native resolution (the paper's baseline)
    metric: str = "exact"
    limit: int | None = None
    max_new_tokens: int = 32
    provider: str = "cpu"
    out: str | None = None  # per-sample JSONL

    def validate(self) -> "EvalConfig":
        if self.model and self.engine:
            raise ConfigError("give --model or --engine, not both")
        if not self.model and not self.engine:
            raise ConfigError("give --model CKPT or --engine DIR")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; legal: {', '.join(METRICS)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be at least 1")
        return self


@dataclass
class EvalReport:
    n: int
    accuracy: float  # mean metric score, 0..1
    rtr: float  # mean retained-token ratio
    request_rate: float  # share of samples where the policy asked for crops
    parse_rate: float  # share of requests that parsed (1.0 when there were none)
    crop_histogram: dict[str, int]
    latency_ms: dict[str, float]  # median, p90, mean per sample (session only, model loaded)
    visual_tokens: float  # mean visual tokens per sample
    config: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_records: bool = False) -> dict:
        d = asdict(self)
        if not with_records:
            d.pop("records")
        return d


def evaluate(cfg: EvalConfig, session: Session | None = None, progress: bool = True) -> EvalReport:
    """Run every sample through the session; raises DataError for a missing or empty dataset."""
    from .data.loaders import load_benchmark
    from .data.metrics import get_metric

    cfg.validate()
    samples = load_benchmark(cfg.benchmark, cfg.data, limit=cfg.limit)
    if not samples:
        raise DataError(f"{cfg.data}: no samples")
    if session is None:
        from .api import open_session

        session = open_session(model=cfg.model, engine=cfg.engine, protocol=cfg.protocol, provider=cfg.provider,
                               overrides={"max_new_tokens": cfg.max_new_tokens})
    metric = get_metric(cfg.metric)
    records = []
    out = open(cfg.out, "w") if cfg.out else None
    try:
        for sample in _progress(samples, progress):
            image = sample.load_image()
            t0 = time.perf_counter()
            r = session.run(image, sample.question, crops="none" if cfg.native else cfg.crops,
                            view="native" if cfg.native else "lowres")
            ms = (time.perf_counter() - t0) * 1e3
            rec = {"id": sample.id, "question": sample.question, "answers": list(sample.answers),
                   "prediction": r.answer, "score": float(metric(r.answer, sample.answers)), "rtr": r.rtr,
                   "visual_tokens": r.visual_tokens, "crops": r.crops, "requested": r.requested,
                   "parse_failures": r.parse_failures, "ms": ms,
                   "gold_crops": list(sample.crop_ids or []), "needs_detail": sample.needs_detail}
            records.append(rec)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
    finally:
        if out:
            out.close()
    return summarize(records, config={k: v for k, v in asdict(cfg).items()})


def summarize(records: list[dict], config: dict | None = None) -> EvalReport:
    n = len(records)
    requests = [r for r in records if r["requested"]]
    failures = sum(r["parse_failures"] for r in records)
    ms = sorted(r["ms"] for r in records)
    return EvalReport(
        n=n,
        accuracy=sum(r["score"] for r in records) / n,
        rtr=sum(r["rtr"] for r in records) / n,
        request_rate=len(requests) / n,
        parse_rate=1.0 - failures / len(requests) if requests else 1.0,
        crop_histogram=dict(sorted(Counter(c for r in records for c in r["crops"]).items())),
        latency_ms={"median": statistics.median(ms), "p90": ms[min(n - 1, int(0.9 * n))],
                    "mean": sum(ms) / n},
        visual_tokens=sum(r["visual_tokens"] for r in records) / n,
        config=config or {},
        records=records,
    )


def _progress(items, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("evaluating", total=len(items))
        for it in items:
            yield it
            bar.advance(task)


def _command():
    import click

    @click.command("eval")
    @click.option("--data", required=True, type=click.Path(), help="Samples JSONL (or folder), or a benchmark copy.")
    @click.option("--model", type=click.Path(), help="Hugging Face checkpoint folder (torch reference backend).")
    @click.option("--engine", type=click.Path(), help="Engine directory (torch-free runtime).")
    @click.option("--benchmark", default="samples", show_default=True,
                  help="Loader: samples, chartqa, docvqa, textvqa, pope, vstar.")
    @click.option("--protocol", default=None, help=f"Default: the engine's own; {DEFAULT_PROTOCOL} for --model.")
    @click.option("--crops", default="model", show_default=True, help="model, none, all, or crop ids.")
    @click.option("--native", is_flag=True, help="Single pass at native resolution (the baseline).")
    @click.option("--metric", type=click.Choice(METRICS), default="exact", show_default=True)
    @click.option("--limit", type=int, default=None)
    @click.option("--max-new-tokens", type=int, default=32, show_default=True)
    @click.option("--provider", default="cpu", show_default=True)
    @click.option("--out", type=click.Path(), default=None, help="Write per-sample records (JSONL).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    def eval_command(as_json, **kw):
        """Accuracy, RTR, request/parse rates, crop histogram and latency over a dataset."""
        cfg = EvalConfig(**kw).validate()
        report = evaluate(cfg, progress=not as_json)
        if as_json:
            click.echo(json.dumps(report.to_dict()))
            return
        lat = report.latency_ms
        click.echo(f"n={report.n}  accuracy={report.accuracy:.3f} ({cfg.metric})  RTR={report.rtr:.3f}  "
                   f"requests={report.request_rate:.2f}  parsed={report.parse_rate:.2f}  "
                   f"latency median={lat['median']:.0f} ms p90={lat['p90']:.0f} ms")
        click.echo(f"crops: {report.crop_histogram or 'none'}")

    return eval_command


COMMANDS = [_command()]
