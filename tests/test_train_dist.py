"""`train sft` and `train grpo` under `accelerate launch` with the shipped DDP config: two CPU processes over gloo.

SFT on two processes with a per-process batch of 3 must give the single process's run with 3 x grad-accum 2 (and a
batch of 6): the same data per optimizer step, the same token-mean loss, the same weights. Rank 0 alone writes the
output folder; a refused output stops every rank with the one-line error instead of leaving one at a barrier.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_train_support import ground_truth_trajectories, hr_policy, samples_file, tiny_base

ROOT = Path(__file__).resolve().parents[1]
DDP = ROOT / "configs" / "accelerate" / "ddp.yaml"


def _env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _accelerate() -> list[str]:
    exe = Path(sys.executable).with_name("accelerate")
    if not exe.exists():
        pytest.skip("accelerate's launcher is not installed beside this Python")
    return [str(exe), "launch", "--config_file", str(DDP), "--num_processes", "2",
            "--num_cpu_threads_per_process", "1", "-m", "edge_awares.cli"]


def _single() -> list[str]:
    return [sys.executable, "-m", "edge_awares.cli"]


def _run(cmd, timeout=600):
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _sft(out, batch, accum=1):
    return ["train", "sft", "--model", str(tiny_base()), "--data", str(ground_truth_trajectories()), "--full",
            "--lr", "1e-3", "--max-steps", "3", "--val-fraction", "0", "--save-strategy", "no", "--seed", "0",
            "--batch-size", str(batch), "--grad-accum", str(accum), "-o", str(out)]


def _steps(out) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r and "grad_norm" in r]


def _weights(out) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))


def test_sft_on_two_processes_equals_one(tmp_path):
    launch = _accelerate()
    runs = {"dual": launch + _sft(tmp_path / "dual", 3), "accum": _single() + _sft(tmp_path / "accum", 3, 2),
            "batch": _single() + _sft(tmp_path / "batch", 6)}
    for name, cmd in runs.items():
        r = _run(cmd)
        assert r.returncode == 0, (name, r.stderr[-3000:])
    steps = {name: _steps(tmp_path / name) for name in runs}
    assert len(steps["dual"]) == 3
    for name in ("accum", "batch"):
        for (s1, l1, g1), (s2, l2, g2) in zip(steps["dual"], steps[name]):
            assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-4), name
    a, b = _weights(tmp_path / "dual"), _weights(tmp_path / "accum")
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    moved = max(float(np.abs(a[k] - _weights(tiny_base())[k]).max()) for k in a)
    assert worst < 1e-5 < moved  # the runs trained, and trained alike
    config = json.loads((tmp_path / "dual" / "run" / "config.json").read_text())
    assert config["resolved"]["processes"] == 2
    saved = [json.loads(x) for x in (tmp_path / "dual" / "run" / "metrics.jsonl").read_text().splitlines()
             if '"saved"' in x]
    assert len(saved) == 1 and saved[0]["processes"] == 2  # rank 0 alone wrote the run log


def test_a_refused_output_stops_every_rank(tmp_path):
    """A folder that is not ours: rank 0 refuses it, and rank 1 stops with the same error, not at a barrier."""
    launch = _accelerate()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    launch.insert(2, "--quiet")  # the launcher's own report without its traceback (accelerate >= 1.16)
    r = _run(launch + _sft(theirs, 3), timeout=300)  # a rank left at a barrier would hang here
    assert r.returncode != 0
    assert "is not a checkpoint edge-awares wrote" in r.stderr
    assert "edge_awares/" not in r.stderr.replace(str(theirs), "")  # no traceback through our code (older
    # accelerate launchers print their own ChildFailedError traceback even with --quiet)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"] and (theirs / "notes.txt").read_text() == "keep me"


def test_grpo_runs_on_two_processes(tmp_path):
    """GRPO's rollouts (the crop environment per rollout) and its reward metrics work per rank; rank 0 saves."""
    launch = _accelerate()
    policy = hr_policy()
    out = tmp_path / "g"
    cmd = launch + ["train", "grpo", "--model", str(policy), "--data", str(samples_file()), "--max-steps", "1",
                    "--num-generations", "2", "--val-fraction", "0", "--save-strategy", "no", "--seed", "0",
                    "--answer-metric", "exact", "--temperature", "0.5", "-o", str(out)]
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(x for x in rows if "rollout/request_rate" in x)
    assert step["tools/call_frequency"] > 0 and "rollout/parse_rate" in step
    assert (out / "model.safetensors").is_file() and sum("saved" in json.dumps(x) for x in rows) == 1
    shutil.rmtree(out)


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    """What accelerate itself reads from each shipped file (FSDP and ZeRO-3 need GPUs: they are not run here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(cfg.distributed_type).endswith(kind) and cfg.num_machines == 1
    if name == "fsdp":
        layers = cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        assert all(hasattr(m, layer) for layer in layers)
    if name == "zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3
