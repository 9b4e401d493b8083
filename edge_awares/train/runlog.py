"""Run hygiene: each run folder holds its resolved config, seed and library versions (JSON) and its metrics
(JSONL, one object per logging step or validation); the Trainer callbacks that fill them; and the policy sidecar
(`edge_awares_policy.json`) that records which protocol and crop set a trained checkpoint speaks.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from .. import __version__
from ..crops import CropSet
from ..errors import TrainError
from ..models import POLICY_FILE  # training writes it; read_checkpoint reads it
from ..protocols import Protocol


def library_versions() -> dict:
    """Versions of the libraries a run depends on, plus the device."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "edge_awares": __version__}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "numpy", "PIL"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    try:
        import torch

        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


class RunLog:
    """Writes config.json, versions.json and appends to metrics.jsonl under `run_dir`."""

    def __init__(self, run_dir: str | Path):
        from ..outputs import ensure_marker
        from .dist import is_main

        self.dir = Path(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.writes = is_main()  # under `accelerate launch` only rank 0 writes the run's files
        if self.writes:
            self.dir.mkdir(parents=True, exist_ok=True)
            ensure_marker(self.dir, "run")  # what lets --overwrite delete this folder (and only such a folder)

    def write_config(self, config, resolved: dict) -> Path:
        """The config as given (validated) and what it resolved to (device, precision, TRL arguments, sizes)."""
        path = self.dir / "config.json"
        if not self.writes:
            return path
        from .dist import world_size

        resolved = {**resolved, "processes": world_size()}
        path.write_text(json.dumps({"config": config.to_dict(), "resolved": resolved}, indent=1, default=str))
        return path

    def write_versions(self) -> Path:
        path = self.dir / "versions.json"
        if not self.writes:
            return path
        path.write_text(json.dumps(library_versions(), indent=1))
        return path

    def log(self, record: dict) -> None:
        if not self.writes:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def records(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def write_policy(out_dir: str | Path, protocol: Protocol, crop_set: CropSet, base: str, stage: str) -> Path:
    """Record what a trained checkpoint was trained to speak, for later stages and the exporter."""
    from .render import CHAT_TEMPLATE

    path = Path(out_dir) / POLICY_FILE
    prior = read_policy(base) or {}
    path.write_text(json.dumps({
        "protocol": protocol.to_dict(), "crop_set": crop_set.to_dict(), "chat_template": CHAT_TEMPLATE,
        "stages": [*prior.get("stages", []), {"stage": stage, "base": str(base), "edge_awares": __version__}],
    }, indent=1))
    return path


def read_policy(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / POLICY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainError(f"{path}: unreadable ({e})") from None


def check_policy(model_dir: str | Path, protocol: Protocol, crop_set: CropSet) -> None:
    """Raise TrainError if `model_dir` was trained for another protocol or crop set than the run asks for."""
    meta = read_policy(model_dir)
    if meta is None:
        return
    want = protocol.to_dict()
    if meta.get("protocol") != want:
        raise TrainError(f"{model_dir} was trained with protocol {meta.get('protocol')}, but this run uses {want}; "
                         "pass the matching --protocol (or train from the base model)")
    if meta.get("crop_set", {}).get("name") != crop_set.name:
        raise TrainError(f"{model_dir} was trained for crop set {meta.get('crop_set', {}).get('name')!r}, "
                         f"but this run uses {crop_set.name!r}")


def make_callbacks(runlog: RunLog, evaluate=None, eval_steps: int = 0):
    """Trainer callbacks: every log line to metrics.jsonl; `evaluate(model) -> dict` every `eval_steps` optimizer
    steps (0: only at the end) and at the end of training, logged as well."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                runlog.log({"step": state.global_step, "epoch": state.epoch, **logs})

    class SessionEvalCallback(TrainerCallback):
        def __init__(self):
            self.done_at = -1
            self.skipped = False

        def _run(self, state, model):
            from .dist import sharded

            if state.global_step == self.done_at or not state.is_world_process_zero:
                return  # validation runs on rank 0 (the model is whole there under DDP; other ranks go on)
            self.done_at = state.global_step
            if sharded():
                if not self.skipped:
                    self.skipped = True
                    runlog.log({"step": state.global_step, "event": "validation skipped: parameters are sharded "
                                "(FSDP / ZeRO-3); run edge-awares eval on the saved model"})
                return
            metrics = evaluate(model)
            if metrics:
                runlog.log({"step": state.global_step, "epoch": state.epoch, **metrics})

        def on_step_end(self, args, state, control, model=None, **kw):
            if eval_steps and state.global_step % eval_steps == 0:
                self._run(state, model)

        def on_train_end(self, args, state, control, model=None, **kw):
            self._run(state, model)

    out = [MetricsCallback()]
    if evaluate is not None:
        out.append(SessionEvalCallback())
    return out


__all__ = ["RunLog", "library_versions", "make_callbacks", "write_policy", "read_policy", "check_policy",
           "POLICY_FILE"]
