"""Accuracy vs retained-token ratio of the demo policy on its held-out card split (issue #6).

    edge-awares train demo -o runs/demo            # trains everything (or reuses finished stages)
    python benchmarks/bench_demo.py runs/demo      # re-evaluates and writes benchmarks/results/demo_eval.*

Rows: base model low-res only / native single pass, GRPO policy forced to fetch everything, SFT and GRPO
policies (torch reference), and the GRPO policy's fp32 and int8 ONNX engines. Writes demo_eval.json (every
figure), demo_eval.md (the table) and demo_eval.png (accuracy against RTR).
"""

import argparse
from pathlib import Path

from edge_awares.train.demo_eval import evaluate_demo

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder of `edge-awares train demo`")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N test samples only")
    a = ap.parse_args()
    rows = evaluate_demo(a.run, a.out, limit=a.limit)
    print((Path(a.out) / "demo_eval.md").read_text())
