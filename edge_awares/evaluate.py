"""Evaluation: run the session over a dataset and report accuracy, RTR, request and parse rates, crop-id
histogram and latency — the numbers the paper compares (accuracy at a retained-token ratio).

    edge-awares eval --data DIR_OR_JSONL --model CKPT [--crops model|none|all|IDS] [--native] [--json]

A bad sample (malformed row, refused or unreadable image, prompt that does not fit) is skipped and listed with
its file:line (data.badsamples); the command then exits 3 unless --allow-bad-samples.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from .errors import BadSamplesError, ConfigError, DataError, ImageError, PromptError
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
    backend: str | None = None  # which backend of the engine folder (None: its default)
    memory_budget: float | None = None  # GiB (None: the runtime's default)
    out: str | None = None  # per-sample JSONL
    image_roots: tuple[str, ...] = ()  # folders images may lie in besides the data's own (--image-root)
    on_bad_sample: str = "skip"  # skip | stop (data.badsamples)
    allow_bad_samples: bool = False  # exit 0 even if samples were skipped

    def validate(self) -> "EvalConfig":
        if self.model and self.engine:
            raise ConfigError("give --model or --engine, not both")
        if not self.model and not self.engine:
            from .api import require_demo_engine

            shipped = require_demo_engine()
            if self.native:
                # The shipped engine is a policy: it asks for crops that a single native pass never serves, so its
                # "native" figure is no baseline (the base model's engine is what --native needs).
                raise ConfigError("--native needs --engine or --model of a base model: the shipped demo engine is a "
                                  "crop policy, not the native baseline")
            object.__setattr__(self, "engine", shipped)  # the default, as ask and profile use
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; legal: {', '.join(METRICS)}")
        if self.out:
            from .outputs import check_file

            check_file(self.out, "jsonl", inputs=(self.data, self.model, self.engine))  # before the model loads
        from .ranges import MEMORY_BUDGET_GB, Range, check_ranges, limit_range

        check_ranges(self, {"limit": Range(1, 10**9, integer=True, optional=True),
                            "max_new_tokens": limit_range("max_new_tokens"),
                            "memory_budget": MEMORY_BUDGET_GB})
        from .data.badsamples import check_policy
        from .data.loaders import check_image_roots

        check_policy(self.on_bad_sample)
        check_image_roots(self.image_roots)
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
    bad_samples: dict = field(default_factory=lambda: {"count": 0, "samples": []})  # skipped: where, reason, id
    records: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_records: bool = False) -> dict:
        d = asdict(self)
        if not with_records:
            d.pop("records")
        return d


def evaluate(cfg: EvalConfig, session: Session | None = None, progress: bool = True) -> EvalReport:
    """Run every sample through the session. Bad samples are skipped and listed in the report's `bad_samples`
    (with cfg.on_bad_sample "stop", the first raises BadSamplesError); the caller decides what they mean for the
    exit (data.badsamples.raise_if_bad). Raises DataError for a missing or empty dataset, BadSamplesError when
    no sample at all could be evaluated."""
    from .data.badsamples import BadSamples
    from .data.loaders import load_benchmark
    from .data.metrics import get_metric

    cfg.validate()
    bad = BadSamples(cfg.on_bad_sample, cfg.allow_bad_samples)
    samples = load_benchmark(cfg.benchmark, cfg.data, limit=cfg.limit, image_roots=cfg.image_roots, bad=bad)
    if not samples and not bad.items:
        raise DataError(f"{cfg.data}: no samples")
    if session is None:
        from .api import open_session

        session = open_session(model=cfg.model, engine=cfg.engine, protocol=cfg.protocol, provider=cfg.provider,
                               memory_budget=cfg.memory_budget, backend=cfg.backend,
                               overrides={"max_new_tokens": cfg.max_new_tokens})
    metric = get_metric(cfg.metric)
    records = []
    from .outputs import PRODUCER, open_output

    # Written beside --out and renamed onto it at the end: a failed run leaves no partial records file.
    out = open_output(cfg.out, "jsonl", inputs=(cfg.data, cfg.model, cfg.engine), mode="w") if cfg.out else None
    try:
        for sample in _progress(samples, progress):
            try:
                image = sample.load_image()
                t0 = time.perf_counter()
                r = session.run(image, sample.question, crops="none" if cfg.native else cfg.crops,
                                view="native" if cfg.native else "lowres")
            except (ImageError, PromptError) as e:  # typed per-sample errors only: a bug still surfaces
                bad.add(sample.where, str(e), sample.id)
                continue
            ms = (time.perf_counter() - t0) * 1e3
            rec = {"id": sample.id, "question": sample.question, "answers": list(sample.answers),
                   "prediction": r.answer, "score": float(metric(r.answer, sample.answers)), "rtr": r.rtr,
                   "visual_tokens": r.visual_tokens, "crops": r.crops, "requested": r.requested,
                   "parse_failures": r.parse_failures, "ms": ms,
                   "gold_crops": list(sample.crop_ids or []), "needs_detail": sample.needs_detail}
            records.append(rec)
            if out:
                out.write(json.dumps({**rec, "producer": PRODUCER}) + "\n")
                out.flush()
    except BaseException:
        if out:
            out.discard()
        raise
    finally:
        if out:
            out.close()
    if not records:
        first = bad.items[0]
        raise BadSamplesError(f"{cfg.data}: no sample could be evaluated; all {len(bad)} were bad (first: {first})")
    report = summarize(records, config={k: v for k, v in asdict(cfg).items()})
    report.bad_samples = bad.to_dict()
    return report


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

    from .data.badsamples import bad_sample_options
    from .ranges import backend_option, memory_budget_option

    @click.command("eval")
    @click.option("--data", required=True, type=click.Path(), help="Samples JSONL (or folder), or a benchmark copy.")
    @click.option("--model", type=click.Path(), help="Hugging Face checkpoint folder (torch reference backend).")
    @click.option("--engine", type=click.Path(),
                  help="Engine directory (torch-free runtime); default: the shipped demo engine.")
    @click.option("--benchmark", default="samples", show_default=True,
                  help="Loader: samples, chartqa, docvqa, textvqa, pope, vstar.")
    @click.option("--protocol", default=None, help=f"Default: the engine's own; {DEFAULT_PROTOCOL} for --model.")
    @click.option("--crops", default="model", show_default=True, help="model, none, all, or crop ids.")
    @click.option("--native", is_flag=True, help="Single pass at native resolution (the baseline).")
    @click.option("--metric", type=click.Choice(METRICS), default="exact", show_default=True)
    @click.option("--limit", type=int, default=None)
    @click.option("--max-new-tokens", type=int, default=32, show_default=True)
    @click.option("--provider", default="cpu", show_default=True)
    @backend_option
    @memory_budget_option
    @click.option("--out", type=click.Path(), default=None,
                  help="Write per-sample records (JSONL) into an existing folder, whole at the end; replaces only "
                       "records of ours.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @bad_sample_options
    def eval_command(as_json, **kw):
        """Accuracy, RTR, request/parse rates, crop histogram and latency over a dataset.

        Image paths in the data must resolve inside the data's folder (or an --image-root). Bad samples are
        skipped and listed (file:line and reason; "bad_samples" in --json); exit codes: 0 all samples used,
        3 some were bad (0 with --allow-bad-samples), 2 any other error."""
        from .data.badsamples import raise_if_bad

        cfg = EvalConfig(**kw).validate()
        report = evaluate(cfg, progress=not as_json)
        if as_json:
            click.echo(json.dumps(report.to_dict()))
            raise_if_bad(report.bad_samples, cfg.allow_bad_samples, report.n + report.bad_samples["count"])
            return
        lat = report.latency_ms
        click.echo(f"n={report.n}  accuracy={report.accuracy:.3f} ({cfg.metric})  RTR={report.rtr:.3f}  "
                   f"requests={report.request_rate:.2f}  parsed={report.parse_rate:.2f}  "
                   f"latency median={lat['median']:.0f} ms p90={lat['p90']:.0f} ms")
        click.echo(f"crops: {report.crop_histogram or 'none'}")
        for b in report.bad_samples["samples"]:
            click.echo(f"bad sample {b['where']}: {b['reason']}", err=True)
        raise_if_bad(report.bad_samples, cfg.allow_bad_samples, report.n + report.bad_samples["count"])

    return eval_command


COMMANDS = [_command()]
