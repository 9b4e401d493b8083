"""The demo's evaluation: one held-out card split through every configuration the paper compares, written as
JSON, a markdown table and an accuracy-vs-RTR plot.

    python benchmarks/bench_demo.py runs/demo          (or the last stage of `edge-awares train demo`)

Rows: the base model from the low-res view only and at native resolution (one pass each, plain protocol); the
SFT and GRPO policies (low-res first, crops on request) on the torch reference; the GRPO policy forced to fetch
the whole image ("always all"); and the GRPO policy's fp32 and int8 ONNX engines (the shipped one is int8).
"""

from __future__ import annotations

import json
from pathlib import Path

# (row name, what runs it, eval options)
ROWS = (
    ("low-res only (base)", "base", dict(protocol="plain", crops="none")),
    ("native single pass (base)", "base", dict(protocol="plain", native=True)),
    ("always all (GRPO policy)", "grpo", dict(crops="all")),
    ("SFT policy", "sft", dict()),
    ("GRPO policy", "grpo", dict()),
    ("GRPO policy, ONNX fp32", "engine-fp32", dict()),
    ("GRPO policy, ONNX int8 (shipped)", "engine-int8", dict()),
    ("GRPO policy, ONNX int4", "engine-int4", dict()),
    ("low-res only (base, ONNX int8 shipped)", "engine-base-int8", dict(crops="none")),
    ("native single pass (base, ONNX int8 shipped)", "engine-base-int8", dict(native=True)),
)


def evaluate_demo(run_dir: str | Path, results_dir: str | Path | None = None, limit: int | None = None,
                  log=print) -> list[dict]:
    """Evaluate every row on RUN/data/test; write RESULTS/demo_eval.{json,md,png} (default RUN/eval), and the
    per-sample records of each row to RUN/eval/records-*.jsonl."""
    from ..evaluate import EvalConfig, evaluate

    run = Path(run_dir)
    res = Path(results_dir) if results_dir else run / "eval"
    res.mkdir(parents=True, exist_ok=True)
    data = str(run / "data" / "test")
    (run / "eval").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, what, opts in ROWS:
        target = run / what
        if not target.exists():
            log(f"skip {name}: {target} missing")
            continue
        kind = "engine" if what.startswith("engine") else "model"
        records = run / "eval" / (f"records-{what}{'-' + opts['crops'] if opts.get('crops') else ''}"
                                  f"{'-native' if opts.get('native') else ''}.jsonl")
        cfg = EvalConfig(data=data, metric="exact", limit=limit, out=str(records),
                         **{kind: str(target)}, **opts)
        report = evaluate(cfg, progress=False)
        row = {"name": name, "backend": "onnxruntime" if kind == "engine" else "torch",
               **{k: getattr(report, k) for k in report.SCALARS},
               "crop_histogram": report.crop_histogram, "latency_ms": report.latency_ms,
               # the table's older column names, kept for readers of demo_eval.json
               "request_rate_detail": report.hr_request_rate, "request_rate_coarse": report.lr_request_rate}
        rows.append(row)
        log(f"{name}: accuracy {row['accuracy']:.3f} rtr {row['rtr']:.3f} requests {row['request_rate']:.2f} "
            f"parse {row['parse_rate']:.2f} median {row['latency_ms']['median']:.1f} ms")
    (res / "demo_eval.json").write_text(json.dumps({"data": data, "rows": rows}, indent=1))
    (res / "demo_eval.md").write_text(markdown_table(rows))
    plot(rows, res / "demo_eval.png")
    plot_grpo_curves(run / "grpo" / "run" / "metrics.jsonl", res / "grpo_curves.png")
    return rows


def markdown_table(rows: list[dict]) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}"  # noqa: E731
    lines = ["| configuration | backend | n | accuracy % | detail % | coarse % | RTR | requests % (detail / coarse) "
             "| low-res only % | parse % | evidence in crop % | crop ids | median ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hist = " ".join(f"{k}:{v}" for k, v in r["crop_histogram"].items()) or "–"
        lines.append(f"| {r['name']} | {r['backend']} | {r['n']} | {pct(r['accuracy'])} | {pct(r['accuracy_detail'])} "
                     f"| {pct(r['accuracy_coarse'])} | {r['rtr']:.3f} | {pct(r['request_rate_detail'])} / "
                     f"{pct(r['request_rate_coarse'])} | {pct(r.get('lowres_only_rate'))} | {pct(r['parse_rate'])} "
                     f"| {pct(r.get('evidence_hit_rate'))} | {hist} | {r['latency_ms']['median']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path | None:
    """Accuracy against RTR, one point per configuration (matplotlib, from the [bench] extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    points: dict[tuple[float, float], list[str]] = {}  # configurations that land on the same point share a label
    for r in rows:
        points.setdefault((round(r["rtr"], 3), round(100 * r["accuracy"], 1)), []).append(r["name"])
    for (x, y), names in points.items():
        ax.scatter(x, y, s=40)
        ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(6, -4 * len(names)), fontsize=7)
    ax.set_xlabel("retained-token ratio (visual tokens / native single pass)")
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_title("Demo policy on held-out cards")
    ax.set_xlim(0, max(1.35, max((r["rtr"] for r in rows), default=1) + 0.1))
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_grpo_curves(metrics: Path, path: Path) -> Path | None:
    """Reward, rollout RTR and validation accuracy (through the session) over GRPO steps, from the run log."""
    if not metrics.is_file():
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    series = {"reward (R_ans - C_tool)": ("reward", []), "rollout RTR": ("rollout/rtr", []),
              "validation accuracy": ("val/accuracy", []), "validation RTR": ("val/rtr", [])}
    for r in rows:
        for _, (key, points) in series.items():
            if key in r and "step" in r:
                points.append((r["step"], r[key]))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=110)
    panels = [("reward (R_ans - C_tool)",), ("rollout RTR", "validation RTR"), ("validation accuracy",)]
    for ax, names in zip(axes, panels):
        for name in names:
            points = series[name][1]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None,
                        label=name)
        ax.set_xlabel("GRPO step")
        ax.set_title(" / ".join(names), fontsize=9)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["evaluate_demo", "markdown_table", "plot", "plot_grpo_curves", "ROWS"]
