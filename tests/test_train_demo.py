"""The whole demo pipeline at smoke scale: base -> data -> curate -> SFT -> GRPO -> export -> eval -> ship.

Random-ish weights (a few steps), so accuracy is not checked here; what is checked is that every stage runs from
one command, records itself, resumes, and that the evaluation writes its table, plot and JSON. The shipped
engine's accuracy is checked in test_demo_engine.py.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from edge_awares.train.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = DemoConfig(output=str(out), task="v2", base_steps=2, base_batch=2, n_train=10, n_test=4, grpo_steps=1,
                     grpo_generations=2, grpo_prompts_per_step=1, grpo_eval_steps=1, sft_epochs=1, both_wrong="hr",
                     all_share=0.5, threads=1)
    logs = []
    record = run_demo(cfg, log=logs.append)
    return out, cfg, record, logs


def test_every_stage_runs_and_is_recorded(demo_run):
    out, _, record, _ = demo_run
    stages = record["stages"]
    for name in ("base", "data/train", "data/test", "curate", "sft", "grpo", "export/engine-fp32",
                 "export/engine-int8", "export/engine-int4", "export/engine-base-int8", "eval"):
        assert name in stages, name
        assert stages[name]["seconds"] >= 0
    base = stages["base"]["config"]
    assert base["cards"]["max_cards"] == 4 and base["look_weight"] > 0  # the v2 task's pages and base recipe
    # the v2 pages, and a share of the HR trajectories fetching the whole image
    from edge_awares.data.format import read_samples, read_trajectories
    from edge_awares.manifest import load_manifest

    assert max(len(s.meta["cards"]) for s in read_samples(out / "data" / "train" / "samples.jsonl")) > 1
    trajs = read_trajectories(out / "curate" / "sft_trajectories.jsonl", (str(out / "data" / "train"),))
    hr = [t for t in trajs if t.label == "HR"]
    assert sum(t.crop_ids == ["all"] for t in hr) == round(0.5 * len(hr)) and stages["sft_data"]["all_share"] == 0.5
    assert load_manifest(out / "engine-base-int8").protocol().name == "plain"
    assert stages["data/train"]["seed"] != stages["data/test"]["seed"]
    assert len(stages["data/test"]["samples_sha256"]) == 16
    assert json.loads((out / "demo_run.json").read_text())["config"]["n_train"] == 10
    for precision in ("fp32", "int8"):
        assert (out / f"engine-{precision}" / "manifest.json").is_file()


def test_eval_writes_table_plot_and_json(demo_run):
    out, _, record, _ = demo_run
    rows = json.loads((out / "eval" / "demo_eval.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert names[:2] == ["low-res only (base)", "native single pass (base)"]
    assert "GRPO policy, ONNX int8 (shipped)" in names and len(rows) == 10
    by = {r["name"]: r for r in rows}
    assert by["low-res only (base)"]["rtr"] == pytest.approx(0.25)
    assert by["native single pass (base)"]["rtr"] == pytest.approx(1.0)
    assert by["always all (GRPO policy)"]["rtr"] == pytest.approx(1.25)
    for torch_row, engine_row in (("low-res only (base)", "low-res only (base, ONNX int8 shipped)"),
                                  ("native single pass (base)", "native single pass (base, ONNX int8 shipped)")):
        assert by[engine_row]["rtr"] == pytest.approx(by[torch_row]["rtr"])
    assert all(r["n"] == 4 for r in rows)
    table = (out / "eval" / "demo_eval.md").read_text()
    assert table.count("\n") == 2 + len(rows)
    for name in ("demo_eval.png", "grpo_curves.png"):
        png = out / "eval" / name
        if png.exists():  # matplotlib is in the [bench] extra
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_stages(demo_run):
    from edge_awares.train.demo import run_demo

    out, cfg, _, _ = demo_run
    logs = []
    run_demo(cfg, log=logs.append)
    ran = [m[3:] for m in logs if m.startswith("== ")]
    assert ran == ["eval"]  # everything else was already there


def test_ship_places_the_engine_whole(demo_run, tmp_path):
    from edge_awares.manifest import load_manifest
    from edge_awares.train.demo import ship_engine

    out, _, _, _ = demo_run
    dst = tmp_path / "assets" / "demo-engine"
    dst.parent.mkdir()
    ship_engine(out / "engine-int8", dst)
    ship_engine(out / "engine-int8", dst)  # replacing works too
    assert load_manifest(dst).precision == "int8"
    assert not list(dst.parent.glob(".*partial*"))
