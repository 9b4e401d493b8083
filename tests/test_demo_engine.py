"""The shipped demo engine (edge_awares/assets/demo-engine): `ask` and `profile` use it when no engine or model
is given, it answers the example card questions, and it runs with torch unimportable.

The engine is trained by `edge-awares train demo --ship`; a checkout without it skips these tests (saying so).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import import_blocker

from edge_awares.api import DEMO_ENGINE, demo_engine
from edge_awares.cli import cli
from edge_awares.data.format import read_samples

ROOT = Path(__file__).resolve().parents[1]
README_IMAGE, README_QUESTION, README_ANSWER = "examples/cards_a.png", "What is the code on the orange card?", "62"

pytestmark = pytest.mark.skipif(demo_engine() is None, reason="no shipped demo engine in this checkout "
                                "(edge-awares train demo --ship builds it)")


def test_manifest_is_the_int8_policy():
    from edge_awares.manifest import load_manifest

    manifest = load_manifest(DEMO_ENGINE)  # hashes every file: the shipped bytes are the verified ones
    m = manifest.data
    assert manifest.backends == ["onnx"] and manifest.precision == "int8"
    assert m["protocol"]["name"] == "tool_call"
    size = sum(f.stat().st_size for f in DEMO_ENGINE.rglob("*") if f.is_file())
    assert size < 12e6


def test_readme_question_is_answered_by_default():
    res = CliRunner().invoke(cli, ["ask", str(ROOT / README_IMAGE), README_QUESTION, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["answer"] == README_ANSWER
    assert out["random_weights"] is False and out["engine"] == str(DEMO_ENGINE)
    assert out["crops"] == ["0"]  # the orange card is the top-left quadrant: one crop, RTR 0.5
    assert out["rtr"] == pytest.approx(0.5)


def test_the_summary_names_what_was_fetched():
    """Without --json the summary says "crop id 0" and its pixels, never a bare "0" that reads as "none"; a
    low-res-only answer says it fetched nothing."""
    res = CliRunner().invoke(cli, ["ask", str(ROOT / README_IMAGE), README_QUESTION])
    assert res.exit_code == 0, res.output
    assert "Fetched: crop id 0 at pixels (0, 0, 112, 112)" in res.output
    res = CliRunner().invoke(cli, ["ask", str(ROOT / README_IMAGE), README_QUESTION, "--crops", "none"])
    assert res.exit_code == 0, res.output
    assert "Fetched: nothing (answered from the low-res view)" in res.output


def test_example_cards_are_mostly_answered():
    from edge_awares.api import open_session
    from edge_awares.data.metrics import get_metric

    session = open_session(engine=DEMO_ENGINE)
    samples = read_samples(ROOT / "examples" / "cards_questions.jsonl")
    exact = get_metric("exact")
    results = [(s, session.run(s.load_image(), s.question)) for s in samples]
    acc = sum(exact(r.answer, s.answers) for s, r in results) / len(results)
    assert acc >= 0.8, [(s.question, s.answers, r.answer) for s, r in results]
    # Letters are read from the low-res view; codes need the card's crop.
    coarse = [r for s, r in results if not s.needs_detail]
    detail = [r for s, r in results if s.needs_detail]
    assert sum(r.requested for r in coarse) <= len(coarse) // 4
    assert sum(r.requested for r in detail) >= 3 * len(detail) // 4
    assert all(r.parse_failures == 0 for _, r in results)


def test_profile_defaults_to_the_demo_engine():
    res = CliRunner().invoke(cli, ["profile", str(ROOT / README_IMAGE), README_QUESTION, "--runs", "1",
                                   "--warmup", "0", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["config"]["engine"] == str(DEMO_ENGINE) and report["backend"] == "onnx"
    assert report["answer"] == README_ANSWER and report["crops"] == ["0"]


def test_default_ask_is_torch_free():
    script = import_blocker("torch", "transformers", "onnx") + textwrap.dedent("""
        import json, sys
        from edge_awares.cli import main
        code = main(["ask", sys.argv[1], sys.argv[2], "--json"])
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))
        print(json.dumps({"code": code, "leaked": leaked}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(ROOT / README_IMAGE), README_QUESTION],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])["answer"] == README_ANSWER
    assert json.loads(lines[-1]) == {"code": 0, "leaked": []}
