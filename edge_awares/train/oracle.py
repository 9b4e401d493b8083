"""Ground-truth ("oracle") trajectories from annotated samples, for demos and tests: an LR trajectory for a sample
that needs no detail, an HR one requesting its annotated crop ids otherwise. Training data for real models comes
from curation (the base model's own low-res vs native answers, judged); this skips the model.

    edge-awares train oracle data/samples.jsonl -o data/trajectories.jsonl
"""

from __future__ import annotations

from pathlib import Path

from ..data.format import Trajectory, read_samples, write_trajectories
from ..errors import DataError


def oracle_trajectories(samples_path: str | Path, out_path: str | Path) -> Path:
    """Write one trajectory per sample of `samples_path` to `out_path` (images stay where they are).

    Raises DataError for a sample without `needs_detail`, or one that needs detail but has no `crop_ids`.
    """
    trajs = []
    for s in read_samples(samples_path):
        if s.needs_detail is None:
            raise DataError(f"sample {s.id!r} has no needs_detail annotation; the oracle cannot label it")
        if s.needs_detail and not s.crop_ids:
            raise DataError(f"sample {s.id!r} needs detail but has no crop_ids")
        trajs.append(Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []))
    return write_trajectories(out_path, trajs, image_dir=None)


__all__ = ["oracle_trajectories"]
