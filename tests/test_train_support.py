"""Shared builders for the training tests (no tests here): synthetic data, trajectories and tiny policies trained
once per test process (cached), one torch thread while training (two threads on a shared 2-core box run ~10x
slower than one)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

_ROOT: Path | None = None


def root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="edge-awares-train-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


@contextlib.contextmanager
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.cache
def tiny_base() -> Path:
    pytest.importorskip("trl")
    from edge_awares.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(root() / "tiny", preset="tiny", seed=0)


@functools.cache
def samples_file() -> Path:
    """Six synthetic samples (448 px pages): three need detail (HR), three do not (LR)."""
    from edge_awares.data.synth import write_dataset

    return write_dataset(root() / "synth", n=6, seed=0)


def samples():
    from edge_awares.data.format import read_samples

    return read_samples(samples_file())


@functools.cache
def ground_truth_trajectories() -> Path:
    """LR trajectories for samples with needs_detail False, HR with their ground-truth crop ids."""
    from edge_awares.data.format import Trajectory, write_trajectories

    trajs = [Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []) for s in samples()]
    return write_trajectories(root() / "synth" / "trajectories.jsonl", trajs, image_dir=None)


@functools.cache
def fixed_request_trajectories() -> Path:
    """The three HR samples, each requesting crop 3: a format to overfit and then reproduce."""
    from edge_awares.data.format import Trajectory, write_trajectories

    trajs = [Trajectory.from_sample(s, ["3"]) for s in samples() if s.needs_detail]
    return write_trajectories(root() / "synth" / "hr3.jsonl", trajs, image_dir=None)


@functools.cache
def mixed_trajectories() -> Path:
    """Three pages, each once answered directly (LR) and once after requesting crop 3 (HR): a policy trained on
    them requests on about half of its samples, which GRPO can then move."""
    from edge_awares.data.format import Trajectory, write_trajectories

    trajs = []
    for s in samples()[:3]:
        trajs.append(Trajectory.from_sample(s, ["3"]))
        lr = Trajectory.from_sample(s, [])
        lr.id = s.id + "-lr"
        trajs.append(lr)
    return write_trajectories(root() / "synth" / "mixed.jsonl", trajs, image_dir=None)


@functools.cache
def hr_policy() -> Path:
    """LoRA SFT (the default path: LoRA, merge, save) overfit on `fixed_request_trajectories`."""
    from edge_awares.train.config import SFTRunConfig
    from edge_awares.train.sft import train_sft

    cfg = SFTRunConfig(model=str(tiny_base()), data=str(fixed_request_trajectories()), output=str(root() / "hr"),
                       lr=2e-2, max_steps=100, val_data=str(ground_truth_trajectories()), val_samples=2,
                       max_new_tokens=24, logging_steps=10, save_strategy="no", eval_metric="exact")
    with one_thread():
        return train_sft(cfg, log=lambda *a: None)


@functools.cache
def mixed_policy() -> Path:
    """Full fine-tuning on `mixed_trajectories` (full FT reaches the mixed policy in fewer steps than LoRA)."""
    from edge_awares.train.config import SFTRunConfig
    from edge_awares.train.sft import train_sft

    cfg = SFTRunConfig(model=str(tiny_base()), data=str(mixed_trajectories()), output=str(root() / "mixed"),
                       lora=False, lr=3e-3, max_steps=120, val_fraction=0.0, logging_steps=20, save_strategy="no")
    with one_thread():
        return train_sft(cfg, log=lambda *a: None)
