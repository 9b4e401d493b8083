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
    max_new_tokens: int | None = None  # per turn; None: the engine's own (or the runtime default)
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

            # The defaults: the shipped policy, and for the paper's baselines (one native pass, the low-res view
            # alone) the shipped base model: the policy would still ask for crops a baseline never serves.
            baseline = self.native or str(self.crops).strip().lower() == "none"
            object.__setattr__(self, "engine", require_demo_engine(baseline=baseline))
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; legal: {', '.join(METRICS)}")
        if self.out:
            from .outputs import check_file

            check_file(self.out, "jsonl", inputs=(self.data, self.model, self.engine))  # before the model loads
        from .ranges import MEMORY_BUDGET_GB, Range, check_ranges, limit_range

        check_ranges(self, {"limit": Range(1, 10**9, integer=True, optional=True),
                            "max_new_tokens": limit_range("max_new_tokens", optional=True),
                            "memory_budget": MEMORY_BUDGET_GB})
        from .data.badsamples import check_policy
        from .data.loaders import check_image_roots

        check_policy(self.on_bad_sample)
        check_image_roots(self.image_roots)
        return self


@dataclass
class EvalReport:
    """What `summarize` makes of per-run records: the one definition of every figure, for `edge-awares eval`, the
    trainers' validation (train/evaluate.py) and the benchmarks. Rates whose denominator is empty are None."""

    n: int
    accuracy: float  # mean metric score, 0..1
    rtr: float  # mean retained-token ratio
    request_rate: float  # share of samples where the policy asked for crops
    parse_rate: float  # share of requests that parsed (1.0 when there were none)
    crop_histogram: dict[str, int]  # crops fetched, by id ("box" for a free box), over all samples
    latency_ms: dict[str, float]  # median, p90, mean per sample (session only, model loaded)
    visual_tokens: float  # mean visual tokens per sample
    lowres_only_rate: float = 0.0  # share of samples answered with no crop fetched (from the first view alone)
    hr_request_rate: float | None = None  # request rate on samples that need detail (needs_detail / HR label)
    lr_request_rate: float | None = None  # ... and on those that do not
    accuracy_detail: float | None = None  # accuracy on samples that need detail
    accuracy_coarse: float | None = None  # ... and on those that do not
    evidence_hit_rate: float | None = None  # share of runs that fetched crops where one holds the evidence box
    gold_crop_hit: float | None = None  # share of runs that fetched crops where one is an annotated best crop
    config: dict = field(default_factory=dict)
    bad_samples: dict = field(default_factory=lambda: {"count": 0, "samples": []})  # skipped: where, reason, id
    records: list[dict] = field(default_factory=list, repr=False)

    SCALARS = ("n", "accuracy", "rtr", "request_rate", "parse_rate", "visual_tokens", "lowres_only_rate",
               "hr_request_rate", "lr_request_rate", "accuracy_detail", "accuracy_coarse", "evidence_hit_rate",
               "gold_crop_hit")

    def to_dict(self, with_records: bool = False) -> dict:
        d = asdict(self)
        if not with_records:
            d.pop("records")
        return d

    def flat(self, prefix: str = "") -> dict[str, float]:
        """The report as flat scalar metrics (`prefix + name`; None rates left out; crops/<id>: fetch counts),
        as training logs them."""
        out = {k: getattr(self, k) for k in self.SCALARS if getattr(self, k) is not None}
        out["latency_ms/median"] = self.latency_ms["median"]
        out.update({f"crops/{cid}": k for cid, k in self.crop_histogram.items()})
        return {prefix + k: v for k, v in out.items()}


def session_record(sample_id: str, question: str, answers, result, score: float, ms: float, *,
                   needs_detail: bool | None = None, gold_crops=(), evidence_box=None) -> dict:
    """One run's record (`summarize` reads these; `eval --out` writes them): what the session did and how it
    scored. `result` is a SessionResult."""
    return {"id": sample_id, "question": question, "answers": list(answers), "prediction": result.answer,
            "score": float(score), "rtr": result.rtr, "visual_tokens": result.visual_tokens, "crops": result.crops,
            "boxes": [list(b) for b in result.boxes], "requested": result.requested,
            "parse_failures": result.parse_failures, "ms": ms, "gold_crops": list(gold_crops or []),
            "needs_detail": needs_detail, "evidence_box": list(evidence_box) if evidence_box is not None else None}


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
            rec = session_record(sample.id, sample.question, sample.answers, r, metric(r.answer, sample.answers), ms,
                                 needs_detail=sample.needs_detail, gold_crops=sample.crop_ids,
                                 evidence_box=sample.evidence_box)
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
    """Every figure of an EvalReport from per-run records (session_record)."""
    n = len(records)
    if not n:
        raise DataError("no records to summarize")
    requests = [r for r in records if r["requested"]]
    failures = sum(r["parse_failures"] for r in records)
    ms = sorted(r["ms"] for r in records)
    fetched = [r for r in records if r["crops"]]
    detail = [r for r in records if r.get("needs_detail") is True]
    coarse = [r for r in records if r.get("needs_detail") is False]
    located = [r for r in fetched if r.get("evidence_box") is not None and r.get("boxes")]
    annotated = [r for r in fetched if r.get("gold_crops")]
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
        lowres_only_rate=1.0 - len(fetched) / n,
        hr_request_rate=_share(detail, lambda r: r["requested"]),
        lr_request_rate=_share(coarse, lambda r: r["requested"]),
        accuracy_detail=sum(r["score"] for r in detail) / len(detail) if detail else None,
        accuracy_coarse=sum(r["score"] for r in coarse) / len(coarse) if coarse else None,
        evidence_hit_rate=_share(located, lambda r: any(_contains(b, r["evidence_box"]) for b in r["boxes"])),
        gold_crop_hit=_share(annotated, lambda r: bool(set(r["crops"]) & set(r["gold_crops"]))),
        config=config or {},
        records=records,
    )


def _share(records: list[dict], test) -> float | None:
    return sum(bool(test(r)) for r in records) / len(records) if records else None


def _contains(box, inner) -> bool:
    """Whether pixel box `box` holds box `inner` (both x0, y0, x1, y1)."""
    return box[0] <= inner[0] and box[1] <= inner[1] and inner[2] <= box[2] and inner[3] <= box[3]


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
    @click.option("--max-new-tokens", type=int, default=None,
                  help="Tokens per turn (default: the engine's own, else the runtime's 64).")
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
