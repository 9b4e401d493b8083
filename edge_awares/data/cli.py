"""CLI commands for data: `edge-awares data synth` (synthetic documents) and `edge-awares curate` (LR/HR labels,
oracle crops and trajectories). Registered by edge_awares.cli through `COMMANDS`.

Import-light on purpose: only click here; the generator, torch and the model load inside the command bodies.
"""

from __future__ import annotations

import sys
from collections import Counter

import click

from .badsamples import bad_sample_options


@click.group("data")
def data():
    """Datasets: synthetic documents (sample format: see edge_awares.data.format)."""


@data.command("synth")
@click.option("-n", "n", type=int, required=True, help="Number of samples (one page, one question each).")
@click.option("-o", "--out", "out_dir", type=click.Path(), required=True, help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Stream seed: same seed, same pages.")
@click.option("--width", type=int, default=448, show_default=True, help="Page width in pixels.")
@click.option("--height", type=int, default=448, show_default=True, help="Page height in pixels.")
@click.option("--detail-share", type=float, default=0.6, show_default=True,
              help="Share of questions answered by small text (legible only at native resolution).")
@click.option("--force", is_flag=True, help="Replace a dataset `data synth` wrote before (never any other folder).")
def synth(n, out_dir, seed, width, height, detail_share, force):
    """Write N synthetic document samples to OUT/samples.jsonl and OUT/images/."""
    from .format import read_samples
    from .synth import SynthConfig, write_dataset

    from ..ranges import SEED, Range

    Range(1, 10**7, integer=True).check("-n", n)
    SEED.check("--seed", seed)
    cfg = SynthConfig(width=width, height=height, detail_share=detail_share).validate()
    path = write_dataset(out_dir, n, seed=seed, cfg=cfg, force=force)
    samples = read_samples(path)
    detail = [s for s in samples if s.needs_detail]
    hist = Counter((s.crop_ids or ["?"])[0] for s in detail)
    crops = " ".join(f"{k}:{v}" for k, v in sorted(hist.items())) or "none"
    click.echo(f"wrote {len(samples)} samples to {path} ({width}x{height}, seed {seed}); "
               f"needs detail {len(detail)} ({len(detail) / len(samples):.0%}); "
               f"crop ids of detail questions: {crops}")


@click.command("curate")
@click.option("--model", required=True, help="Base model checkpoint folder (Hugging Face, Qwen2.5-VL).")
@click.option("--data", "data_path", required=True, help="Samples: a folder with one .jsonl, a .jsonl file, "
              "or a benchmark copy (see --benchmark).")
@click.option("-o", "--out", "out_dir", required=True, help="Output folder.")
@click.option("--benchmark", default="samples", show_default=True,
              help="Loader for --data: samples (our format), chartqa, docvqa, textvqa, vstar, pope.")
@click.option("--split", default=None, help="Split of a parquet folder or saved DatasetDict.")
@click.option("--judge", type=click.Choice(["anls", "exact", "relaxed", "llm"]), default="anls",
              show_default=True, help="Who decides correctness: a rule metric, or an LLM.")
@click.option("--judge-threshold", type=float, default=None,
              help="Rule metric score counted as correct [default: anls 0.85, exact/relaxed 1.0].")
@click.option("--both-wrong", type=click.Choice(["lr", "hr", "drop"]), default="lr", show_default=True,
              help="Label when both answers are wrong (a tie: native does not help).")
@click.option("--rule-metric", type=click.Choice(["anls", "exact", "relaxed"]), default="anls",
              show_default=True, help="With --judge llm: fallback for unparsed replies, agreement reference.")
@click.option("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
              "[default: $EDGE_AWARES_JUDGE_URL].")
@click.option("--judge-model", default=None, help="Model name at the endpoint [default: $EDGE_AWARES_JUDGE_MODEL].")
@click.option("--judge-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the endpoint's API key (unset: no auth header).")
@click.option("--judge-checkpoint", default=None, help="Local text-LLM checkpoint as the judge (instead of a URL).")
@click.option("--oracle", type=click.Choice(["auto", "gt", "ocr", "vlm"]), default="auto", show_default=True,
              help="Evidence box of HR samples: ground truth, OCR match, grounding VLM; auto = gt else ocr.")
@click.option("--oracle-model", default=None, help="Grounding checkpoint for --oracle vlm [default: --model].")
@click.option("--oracle-coords", type=click.Choice(["norm1000", "pixels"]), default="norm1000", show_default=True,
              help="Box coordinates the grounding model writes.")
@click.option("--min-iou", type=float, default=0.5, show_default=True, help="IoU for a box to pick a crop.")
@click.option("--limit", type=int, default=None, help="Curate only the first N samples.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--max-context", type=int, default=4096, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip samples already in OUT/curation.jsonl, or start over.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
@bad_sample_options
def curate(model, data_path, out_dir, benchmark, split, judge, judge_threshold, both_wrong, rule_metric,
           judge_url, judge_model, judge_key_env, judge_checkpoint, oracle, oracle_model, oracle_coords, min_iou,
           limit, max_new_tokens, max_context, resume, progress, image_roots, on_bad_sample, allow_bad_samples):
    """Label samples LR/HR with the base model at low-res and native resolution; write trajectories.

    Image paths in the data must resolve inside the data's folder (or an --image-root). Bad samples are skipped,
    listed with file:line in OUT/report.{json,md} and retried on resume; exit codes: 0 all samples used, 3 some
    were bad (0 with --allow-bad-samples), 2 any other error."""
    from .badsamples import raise_if_bad
    from .curate import CurateConfig, curate as run_curate

    cfg = CurateConfig(model=model, data=data_path, out=out_dir, benchmark=benchmark, split=split, judge=judge,
                       judge_threshold=judge_threshold, both_wrong=both_wrong, rule_metric=rule_metric,
                       judge_url=judge_url, judge_model=judge_model, judge_key_env=judge_key_env,
                       judge_checkpoint=judge_checkpoint, oracle=oracle, oracle_model=oracle_model,
                       oracle_coords=oracle_coords, min_iou=min_iou, limit=limit, max_new_tokens=max_new_tokens,
                       max_context=max_context, resume=resume, image_roots=image_roots,
                       on_bad_sample=on_bad_sample, allow_bad_samples=allow_bad_samples).validate()
    if progress is None:
        progress = sys.stderr.isatty()
    r = run_curate(cfg, progress=progress)
    c, lab, o, t = r["counts"], r["labels"], r["oracle"], r["timing"]
    crops = " ".join(f"{k}:{v}" for k, v in r["crop_ids"].items()) or "none"
    pct = lambda x: "n/a" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    bad = r["bad_samples"]
    click.echo(f"curated {c['curated']} of {c['in_data']} samples ({c['this_run']} this run, {c['errors']} errors, "
               f"{c['skipped']} skipped, {c['dropped']} dropped, {bad['count']} bad): LR {lab['LR']} "
               f"({pct(lab['LR_rate'])}), HR {lab['HR']} ({pct(lab['HR_rate'])}); crop ids {crops}; oracle boxes "
               f"{o['with_box']}/{o['hr']}; {t['this_run_s_per_sample'] or 0:.2f} s/sample; report {out_dir}/report.md")
    for b in bad["samples"]:
        click.echo(f"bad sample {b['where']}: {b['reason']}", err=True)
    raise_if_bad(bad, allow_bad_samples)


COMMANDS = [data, curate]
