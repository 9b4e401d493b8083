"""Curation (AwaRes training step a): the base model answers each sample from the low-res and the native view;
a judge labels LR (low-res sufficed) or HR; for HR samples an oracle box becomes crop ids. Writes
OUT/trajectories.jsonl (target: the reference answer), OUT/curation.jsonl (one record per sample, appended as
it completes, so runs resume), OUT/config.json and OUT/report.{json,md}.
Usage: ``edge-awares curate --model CKPT --data DIR -o OUT`` or ``curate(CurateConfig(model=, data=, out=))``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DataError, ImageError, PromptError
from .format import Sample, Trajectory, _safe_name, iter_jsonl
from .judge import BOTH_WRONG, JUDGES, RULE_JUDGES, Judge, RuleJudge, make_judge
from .oracle import ORACLES, VLM_COORDS, Oracle, crops_for_box, make_oracle

CURATION = "curation.jsonl"
TRAJECTORIES = "trajectories.jsonl"
CONFIG = "config.json"
# A resumed run must label the same way as the run it continues; `limit` may grow, the rest may not change.
RESUME_KEYS = ("model", "data", "benchmark", "split", "judge", "judge_threshold", "both_wrong", "rule_metric",
               "judge_model", "judge_checkpoint", "oracle", "oracle_model", "oracle_coords", "ocr_min_similarity",
               "min_iou", "max_new_tokens")


@dataclass(frozen=True)
class CurateConfig:
    """One curation run. `judge_threshold` applies to the rule metric (the judge's, or the llm judge's
    fallback); None takes the metric's default (anls 0.85, exact/relaxed 1.0)."""

    model: str
    data: str
    out: str
    benchmark: str = "samples"  # loader for `data` (samples = our JSONL format; chartqa, docvqa, ...)
    split: str | None = None
    judge: str = "anls"
    judge_threshold: float | None = None
    both_wrong: str = "lr"
    rule_metric: str = "anls"  # the reference the llm judge's agreement is measured against
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str | None = None
    judge_checkpoint: str | None = None
    oracle: str = "auto"
    oracle_model: str | None = None  # grounding checkpoint for the vlm oracle (default: `model`)
    oracle_coords: str = "norm1000"
    ocr_min_similarity: float = 0.8
    min_iou: float = 0.5
    limit: int | None = None
    max_new_tokens: int = 32
    max_context: int = 4096
    resume: bool = True
    image_roots: tuple[str, ...] = ()  # folders images may lie in besides the data's own (--image-root)
    on_bad_sample: str = "skip"  # skip | stop (data.badsamples); bad samples are listed in the report
    allow_bad_samples: bool = False  # the CLI exits 0 even if samples were bad

    def validate(self) -> "CurateConfig":
        """Return self, or raise ConfigError naming the bad value and the legal ones, DataError for a missing
        data path."""
        choices = [("judge", JUDGES), ("rule_metric", RULE_JUDGES), ("both_wrong", BOTH_WRONG),
                   ("oracle", ORACLES), ("oracle_coords", VLM_COORDS)]
        for name, legal in choices:
            if getattr(self, name) not in legal:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of "
                                  f"{', '.join(legal)}")
        from ..ranges import Range, check_ranges, limit_range

        check_ranges(self, {
            "judge_threshold": Range(0.0, 1.0, lo_open=True, optional=True),
            "ocr_min_similarity": Range(0.0, 1.0, lo_open=True), "min_iou": Range(0.0, 1.0, lo_open=True),
            "limit": Range(1, 10**9, integer=True, optional=True),
            "max_new_tokens": limit_range("max_new_tokens"), "max_context": limit_range("max_context")})
        if not Path(self.data).exists():
            raise DataError(f"{self.data}: no such data file or folder")
        from .badsamples import check_policy
        from .loaders import check_image_roots

        check_policy(self.on_bad_sample)
        check_image_roots(self.image_roots)
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError(f"{self.out}: exists and is not a folder")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- JSONL state
def repair_tail(path: Path) -> bool:
    """Cut a torn last line (a run killed mid-write) so appends start on a fresh line; True if it cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
    return True


def read_records(path: Path) -> dict[str, dict]:
    """The curation records of `path` by sample id, the last record of an id winning (a retried error)."""
    if not path.is_file():
        return {}
    out = {}
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "id" not in obj:
            raise DataError(f"{path}:{lineno}: not a curation record")
        out[obj["id"]] = obj
    return out


def _append(f, obj: dict) -> None:
    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    f.flush()  # one record per line, on disk before the next sample starts: a kill loses at most one


# ----------------------------------------------------------------------------------------------- one sample
@dataclass
class Curator:
    """Curates one sample at a time with a plain-protocol session, a judge, a rule reference and an oracle."""

    session: Any
    judge: Judge
    rule: RuleJudge
    oracle: Oracle
    out: Path
    min_iou: float = 0.5
    max_new_tokens: int = 32

    def __call__(self, sample: Sample) -> tuple[dict, Trajectory | None]:
        rec: dict[str, Any] = {"id": sample.id, "status": "ok", "question": sample.question,
                               "answers": list(sample.answers)}
        if sample.needs_detail is not None or sample.crop_ids is not None:
            rec["data"] = {"needs_detail": sample.needs_detail, "crop_ids": sample.crop_ids}
        if not sample.answers:
            rec.update(status="skipped", reason="no reference answers: a judge needs them")
            return rec, None
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            image = sample.load_image()
            lr = self.session.run(image, sample.question, crops="none", view="lowres",
                                  max_new_tokens=self.max_new_tokens)
            t1 = time.perf_counter()
            nat = self.session.run(image, sample.question, crops="none", view="native",
                                   max_new_tokens=self.max_new_tokens)
        except (ImageError, DataError, PromptError) as e:
            # One unreadable page or one over-long prompt must not stop a long run; resume retries errors. Typed
            # errors only: anything else is a bug and surfaces.
            rec.update(status="error", error=f"{type(e).__name__}: {e}", where=sample.where)
            return rec, None
        t2 = time.perf_counter()
        ms["low_res"], ms["native"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        verdict = self.judge.verdict(sample.question, sample.answers, lr.answer, nat.answer)
        t3 = time.perf_counter()
        ms["judge"] = (t3 - t2) * 1e3
        ref = verdict if self.judge is self.rule else self.rule.verdict(
            sample.question, sample.answers, lr.answer, nat.answer)
        rec["low_res"] = {"answer": lr.answer, "visual_tokens": lr.visual_tokens, "ok": verdict.low_res_ok,
                          "score": ref.low_res_score}
        rec["native"] = {"answer": nat.answer, "visual_tokens": nat.visual_tokens, "ok": verdict.native_ok,
                         "score": ref.native_score}
        rec["judge"] = {"name": self.judge.name, **verdict.to_dict()}
        rec["rule"] = {"metric": self.rule.name, "threshold": self.rule.threshold, "label": ref.label,
                       "low_res_ok": ref.low_res_ok, "native_ok": ref.native_ok}
        rec["label"] = verdict.label
        crop_ids: list[str] = []
        if verdict.label == "HR":
            # Answer texts for a text-matching oracle: the references, then the native answer if it was right.
            texts = list(sample.answers) + ([nat.answer] if verdict.native_ok and nat.answer.strip() else [])
            located = self.oracle.locate(sample, image, texts)
            choice = crops_for_box(located.box, image.width, image.height, self.session.crop_set, self.min_iou)
            crop_ids = choice.crop_ids
            rec["oracle"] = {"name": self.oracle.name, "source": located.source,
                             "box": list(located.box) if located.box else None, **located.detail}
            rec["crop_rule"], rec["crop_iou"] = choice.rule, choice.iou
            ms["oracle"] = (time.perf_counter() - t3) * 1e3
        rec["crop_ids"] = crop_ids
        rec["ms"] = {k: round(v, 1) for k, v in ms.items()}
        rec["ms"]["total"] = round((time.perf_counter() - t0) * 1e3, 1)
        if verdict.label is None:
            rec["dropped"] = True
            return rec, None
        return rec, Trajectory.from_sample(self._with_image_path(sample), crop_ids, answer=sample.answers[0])

    def _with_image_path(self, sample: Sample) -> Sample:
        """Trajectories point at files; an in-memory image (a benchmark's decoded bytes) is saved under OUT."""
        if isinstance(sample.image, (str, os.PathLike)):
            return sample
        folder = self.out / "images"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{_safe_name(sample.id)}.png"
        if not target.exists():
            sample.load_image().save(target, format="PNG")
        return replace(sample, image=str(target))


# ----------------------------------------------------------------------------------------------- the run
def load_dataset(cfg: CurateConfig, out: Path, bad=None) -> list[Sample]:
    """The samples to curate (first `limit`), ids checked unique; bad rows go to `bad` (data.badsamples.BadSamples)
    if given, else raise. Raises DataError for an empty dataset."""
    from .loaders import iter_benchmark

    # Images stored as bytes (parquet, datasets) land in OUT/images, so trajectories can point at them.
    made = [p for p in (out, out / "images") if not p.exists()]
    try:
        samples = list(iter_benchmark(cfg.benchmark, cfg.data, split=cfg.split, limit=cfg.limit,
                                      image_cache=out / "images", image_roots=cfg.image_roots, bad=bad))
    finally:
        for p in reversed(made):  # the loader creates the cache folder up front; keep it only if used
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    if not samples:
        if bad:
            raise DataError(f"{cfg.data}: no usable samples; all {len(bad)} rows were bad (first: {bad.items[0]})")
        raise DataError(f"{cfg.data}: the dataset holds no samples")
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise DataError(f"{cfg.data}: sample id {s.id!r} appears twice (ids key the resumable record)")
        seen.add(s.id)
    return samples


def _check_resume(cfg: CurateConfig, out: Path, settings: dict) -> None:
    path = out / CONFIG
    if not path.is_file() or not (out / CURATION).is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    diff = [k for k in RESUME_KEYS if old.get(k) != settings.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError(f"{out} holds a curation run with {k}={old.get(k)!r}, this run has {settings.get(k)!r}: "
                          "use --no-resume to start over, or another -o")


def _settings(cfg: CurateConfig) -> dict:
    d = cfg.to_dict()
    for key in ("model", "data", "oracle_model", "judge_checkpoint"):
        if d[key]:
            d[key] = str(Path(d[key]).resolve())
    return d


def curate(cfg: CurateConfig, *, session=None, judge: Judge | None = None, oracle: Oracle | None = None,
           progress: bool = False, on_record: Callable[[dict], None] | None = None) -> dict:
    """Run curation; returns the report (also written to OUT/report.json and OUT/report.md).

    `session`, `judge`, `oracle` replace the ones the config would build (tests, custom judges). Samples whose
    id OUT/curation.jsonl already holds as done are skipped when `cfg.resume` (errors are retried); without it
    OUT's previous curation is discarded. Bad samples (malformed rows, refused or unreadable images, prompts that do
    not fit) are skipped and listed in the report's "bad_samples"; with cfg.on_bad_sample "stop" the first raises
    BadSamplesError (an unusable image's record is appended first, so a resume retries it). Raises ConfigError
    (bad value, resume over a different config), DataError (missing or empty data), ModelLoadError (model folder
    invalid), JudgeError (endpoint down).
    """
    cfg.validate()
    out = Path(cfg.out)
    settings = _settings(cfg)
    # Everything that can fail on a bad setting fails here, before OUT is touched.
    from ..outputs import ensure_marker, prepare_dir

    # OUT may be new, empty, or a curation of ours (resumed, or restarted with --no-resume); never the data.
    prepare_dir(out, "dataset", force=True, inputs=(cfg.data, cfg.model, cfg.oracle_model, cfg.judge_checkpoint))
    if session is None:
        from ..models import read_checkpoint

        read_checkpoint(cfg.model)
        if cfg.oracle == "vlm" and cfg.oracle_model:
            read_checkpoint(cfg.oracle_model)
    rule = RuleJudge(cfg.rule_metric if cfg.judge == "llm" else cfg.judge, cfg.judge_threshold, cfg.both_wrong)
    if judge is None:
        judge = rule if cfg.judge != "llm" else make_judge(
            "llm", cfg.judge_threshold, cfg.both_wrong, cfg.rule_metric, cfg.judge_url, cfg.judge_model,
            cfg.judge_key_env, cfg.judge_checkpoint)
    if oracle is None and cfg.oracle != "vlm":
        oracle = make_oracle(cfg.oracle, None, cfg.oracle_coords, cfg.ocr_min_similarity)
    if cfg.resume:
        _check_resume(cfg, out, settings)
    from .badsamples import BadSamples

    bad = BadSamples(cfg.on_bad_sample, cfg.allow_bad_samples)
    samples = load_dataset(cfg, out, bad)

    out.mkdir(parents=True, exist_ok=True)
    ensure_marker(out, "dataset")
    rec_path, traj_path = out / CURATION, out / TRAJECTORIES
    if cfg.resume:
        for p in (rec_path, traj_path):
            repair_tail(p)
    else:
        for p in (rec_path, traj_path, out / "report.json", out / "report.md"):
            p.unlink(missing_ok=True)
    records = read_records(rec_path)
    done = {i for i, r in records.items() if r.get("status") in ("ok", "skipped")}
    todo = [s for s in samples if s.id not in done]
    (out / CONFIG).write_text(json.dumps(settings, indent=1) + "\n")
    if session is None and todo:
        session = _open(cfg.model, cfg)
    if oracle is None and todo:  # vlm: the grounding model is the base model unless --oracle-model says
        same = not cfg.oracle_model or Path(cfg.oracle_model).resolve() == Path(cfg.model).resolve()
        oracle = make_oracle("vlm", session if same else _open(cfg.oracle_model, cfg), cfg.oracle_coords)

    t_start = time.perf_counter()
    new_trajs: dict[str, Trajectory] = {}
    if todo:
        curator = Curator(session, judge, rule, oracle, out, cfg.min_iou, cfg.max_new_tokens)
        with rec_path.open("a", encoding="utf-8") as rf, traj_path.open("a", encoding="utf-8") as tf, \
                _Progress(progress, len(samples), len(samples) - len(todo)) as bar:
            counts = Counter(r.get("label") for r in records.values() if r.get("status") == "ok")
            for sample in todo:
                rec, traj = curator(sample)
                if traj is not None:
                    # The trajectory line first: a kill between the two writes leaves the sample not done,
                    # and the final rewrite below drops the duplicate the retry writes.
                    _append(tf, traj.to_json(out.resolve()))
                    new_trajs[sample.id] = traj
                _append(rf, rec)
                records[sample.id] = rec
                counts[rec.get("label") if rec["status"] == "ok" else rec["status"]] += 1
                if on_record is not None:
                    on_record(rec)
                if rec["status"] == "error":
                    bad.add(sample.where, rec["error"], sample.id)  # with --on-bad-sample stop: raises here
                bar(f"LR {counts['LR']} HR {counts['HR']}" + (f" err {counts['error']}" if counts["error"] else ""))
    wall = time.perf_counter() - t_start
    _rewrite_trajectories(traj_path, records, samples, new_trajs, out)
    report = build_report(records, settings, n_data=len(samples), n_run=len(todo), wall_s=wall,
                          judge_name=judge.name, threshold=rule.threshold)
    report["bad_samples"] = bad.to_dict()
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def _open(model: str, cfg: CurateConfig):
    from ..api import open_session
    from ..session import SessionConfig

    # The plain protocol: the base model answers from one view and never requests crops.
    return open_session(model=model, protocol="plain",
                        config=SessionConfig(max_new_tokens=cfg.max_new_tokens, max_crop_turns=0,
                                             max_context=cfg.max_context))


def _rewrite_trajectories(path: Path, records: dict, samples: list[Sample], new: dict, out: Path) -> None:
    """Make trajectories.jsonl exactly the done records' trajectories, once each, in record order: the append
    log may hold a duplicate (a kill between its two writes) or a stale line (an earlier --no-resume)."""
    have: dict[str, dict] = {}
    if path.is_file():
        for _, obj in iter_jsonl(path):
            if isinstance(obj, dict) and "id" in obj:
                have[obj["id"]] = obj
    by_id = {s.id: s for s in samples}
    base = out.resolve()
    lines = []
    for sid, rec in records.items():
        if rec.get("status") != "ok" or rec.get("label") not in ("LR", "HR"):
            continue
        if sid in new:
            lines.append(new[sid].to_json(base))
        elif sid in have and have[sid].get("label") == rec["label"] and have[sid].get("crop_ids") == rec["crop_ids"]:
            lines.append(have[sid])
        elif sid in by_id and by_id[sid].answers:
            traj = Trajectory.from_sample(by_id[sid], rec["crop_ids"], answer=by_id[sid].answers[0])
            lines.append(traj.to_json(base))
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for d in lines:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tmp.replace(path)


class _Progress:
    """A rich progress bar on stderr (or nothing); calling it advances one sample with a status text."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed

    def __enter__(self):
        if not self.enabled:
            return lambda text: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self._p = Progress(TextColumn("curate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._p.__enter__()
        task = self._p.add_task("", total=self.total, completed=self.completed)
        return lambda text: self._p.update(task, advance=1, description=text)

    def __exit__(self, *exc):
        if self.enabled:
            self._p.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------------------------- report
def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def build_report(records: dict[str, dict], settings: dict, n_data: int, n_run: int, wall_s: float,
                 judge_name: str, threshold: float) -> dict:
    """Label rates, crop-id histogram, oracle coverage, judge agreement with the rule metric, timings."""
    recs = list(records.values())
    ok = [r for r in recs if r.get("status") == "ok"]
    labelled = [r for r in ok if r.get("label") in ("LR", "HR")]
    labels = Counter(r["label"] for r in labelled)
    hr = [r for r in labelled if r["label"] == "HR"]
    crops = Counter(c for r in hr for c in r["crop_ids"])
    located = [r for r in hr if (r.get("oracle") or {}).get("box")]
    report: dict[str, Any] = {
        "config": settings,
        "judge": {"name": judge_name, "rule_threshold": threshold, "both_wrong": settings.get("both_wrong")},
        "counts": {"in_data": n_data, "records": len(recs), "curated": len(ok), "labelled": len(labelled),
                   "dropped": sum(1 for r in ok if r.get("dropped")),
                   "errors": sum(1 for r in recs if r.get("status") == "error"),
                   "skipped": sum(1 for r in recs if r.get("status") == "skipped"), "this_run": n_run},
        "labels": {"LR": labels["LR"], "HR": labels["HR"], "LR_rate": _rate(labels["LR"], len(labelled)),
                   "HR_rate": _rate(labels["HR"], len(labelled))},
        "crop_ids": dict(sorted(crops.items())),
        "crop_rules": dict(Counter(r.get("crop_rule") for r in hr)),
        "oracle": {"name": settings.get("oracle"), "hr": len(hr), "with_box": len(located),
                   "coverage": _rate(len(located), len(hr)),
                   "by_source": dict(Counter((r.get("oracle") or {}).get("source") for r in located))},
        "accuracy": {"judge": judge_name,
                     "low_res": _rate(sum(r["low_res"]["ok"] for r in ok), len(ok)),
                     "native": _rate(sum(r["native"]["ok"] for r in ok), len(ok)),
                     "rule_metric": ok[0]["rule"]["metric"] if ok else None,
                     "low_res_score_mean": _mean([r["low_res"]["score"] for r in ok]),
                     "native_score_mean": _mean([r["native"]["score"] for r in ok])},
    }
    if judge_name == "llm" and ok:
        report["judge_agreement"] = {
            "rule_metric": ok[0]["rule"]["metric"], "n": len(ok),
            "label": _rate(sum(r["label"] == r["rule"]["label"] for r in ok), len(ok)),
            "low_res_correct": _rate(sum(r["low_res"]["ok"] == r["rule"]["low_res_ok"] for r in ok), len(ok)),
            "native_correct": _rate(sum(r["native"]["ok"] == r["rule"]["native_ok"] for r in ok), len(ok)),
            "unparsed_replies": sum(1 for r in ok if r["judge"].get("fallback")),
        }
    # Datasets that carry their own expectations (synthetic pages): how the labels and crops compare.
    with_nd = [r for r in labelled if (r.get("data") or {}).get("needs_detail") is not None]
    with_crops = [r for r in hr if (r.get("data") or {}).get("crop_ids")]
    if with_nd or with_crops:
        report["vs_data"] = {
            "n_needs_detail": len(with_nd),
            "label_matches_needs_detail": _rate(
                sum((r["label"] == "HR") == r["data"]["needs_detail"] for r in with_nd), len(with_nd)),
            "needs_detail_share": _rate(sum(r["data"]["needs_detail"] for r in with_nd), len(with_nd)),
            "n_hr_with_crop_ids": len(with_crops),
            "hr_crop_matches_data": _rate(sum(r["crop_ids"][:1] == r["data"]["crop_ids"][:1] for r in with_crops),
                                          len(with_crops)),
        }
    totals = [r["ms"]["total"] for r in ok if "ms" in r]
    stages = {k: _mean([r["ms"][k] for r in ok if k in r.get("ms", {})], 1)
              for k in ("low_res", "native", "judge", "oracle")}
    report["timing"] = {
        "this_run_wall_s": round(wall_s, 2), "this_run_samples": n_run,
        "this_run_s_per_sample": round(wall_s / n_run, 3) if n_run else None,
        "per_sample_ms": {"mean": _mean(totals, 1), "median": round(statistics.median(totals), 1) if totals else None,
                          "p90": _quantile(totals, 0.9)},
        "stage_mean_ms": stages,
    }
    return report


def _mean(xs, digits: int = 4) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), digits) if xs else None


def _quantile(xs, q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def render_markdown(r: dict) -> str:
    """report.md: the same figures as report.json, as tables."""
    c, lab, cfg = r["counts"], r["labels"], r["config"]
    bw = {"lr": "LR", "hr": "HR", "drop": "dropped"}[cfg["both_wrong"]]
    thr = r["judge"]["rule_threshold"]
    lines = [
        "# Curation report", "",
        f"- model: `{cfg['model']}`",
        f"- data: `{cfg['data']}` ({c['in_data']} samples{', limit ' + str(cfg['limit']) if cfg['limit'] else ''})",
        f"- judge: `{cfg['judge']}` ({'' if cfg['judge'] != 'llm' else cfg['rule_metric'] + ' fallback '}threshold "
        f"{thr}; LR if the low-res answer is correct, HR if only the native one is, both wrong → {bw})",
        f"- oracle: `{cfg['oracle']}`; box → crop: IoU ≥ {cfg['min_iou']} with a crop, else the smallest crop "
        "containing the box, no box → `all`",
        "", "| | count | share |", "| --- | ---: | ---: |",
        f"| LR | {lab['LR']} | {_pct(lab['LR_rate'])} |",
        f"| HR | {lab['HR']} | {_pct(lab['HR_rate'])} |",
        f"| dropped (both wrong) | {c['dropped']} | |",
        f"| errors | {c['errors']} | |",
        f"| skipped (no answers) | {c['skipped']} | |", "",
    ]
    bad = r.get("bad_samples") or {}
    if bad.get("count"):
        lines += [f"## Bad samples ({bad['count']}, skipped; the run exits 3 unless --allow-bad-samples)", ""]
        lines += [f"- `{b['where']}`: {b['reason']}" for b in bad["samples"][:200]]
        lines += ([f"- ... {bad['count'] - 200} more in report.json"] if bad["count"] > 200 else []) + [""]
    a = r["accuracy"]
    lines += [f"Judged correct: low-res {_pct(a['low_res'])}, native {_pct(a['native'])} "
              f"({c['curated']} samples); mean {a['rule_metric']} low-res {a['low_res_score_mean']}, "
              f"native {a['native_score_mean']}.", ""]
    lines += ["## Crop ids of HR samples", ""]
    if r["crop_ids"]:
        n = sum(r["crop_ids"].values())
        lines += ["| crop id | count | share |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v} | {_pct(v / n)} |" for k, v in r["crop_ids"].items()]
        lines += ["", "Rule used: " + ", ".join(f"{k} {v}" for k, v in sorted(r["crop_rules"].items())) + "."]
    else:
        lines += ["No HR samples."]
    o = r["oracle"]
    lines += ["", "## Oracle", "",
              f"Boxes found for {o['with_box']} of {o['hr']} HR samples ({_pct(o['coverage'])}); by source: "
              + (", ".join(f"{k} {v}" for k, v in sorted(o["by_source"].items())) or "none") + "."]
    if "judge_agreement" in r:
        g = r["judge_agreement"]
        lines += ["", f"## Judge agreement with the `{g['rule_metric']}` rule", "",
                  f"Labels agree on {_pct(g['label'])} of {g['n']} samples; correctness of the low-res answer "
                  f"{_pct(g['low_res_correct'])}, of the native answer {_pct(g['native_correct'])}; "
                  f"{g['unparsed_replies']} unparsed judge replies (the rule decided those)."]
    if "vs_data" in r:
        v = r["vs_data"]
        lines += ["", "## Against the data's own annotations", "",
                  f"- HR label ⇔ `needs_detail`: {_pct(v['label_matches_needs_detail'])} of {v['n_needs_detail']} "
                  f"(`needs_detail` share {_pct(v['needs_detail_share'])})",
                  (f"- HR crop id = the data's `crop_ids[0]`: {_pct(v['hr_crop_matches_data'])} of "
                   f"{v['n_hr_with_crop_ids']}" if v["n_hr_with_crop_ids"] else "- no HR sample to compare crop ids")]
    t = r["timing"]
    s = {k: "–" if v is None else v for k, v in t["stage_mean_ms"].items()}
    lines += ["", "## Timing", "",
              f"This run: {t['this_run_samples']} samples in {t['this_run_wall_s']} s "
              f"({t['this_run_s_per_sample']} s/sample). Per sample over all records: mean "
              f"{t['per_sample_ms']['mean']} ms, median {t['per_sample_ms']['median']} ms, p90 "
              f"{t['per_sample_ms']['p90']} ms; stage means (ms): low-res {s['low_res']}, native {s['native']}, "
              f"judge {s['judge']}, oracle {s['oracle']}.", ""]
    return "\n".join(lines)
