"""Ground-truth ("oracle") trajectories from annotated samples, for demos and tests: an LR trajectory for a sample
that needs no detail, an HR one requesting its annotated crop ids otherwise. Training data for real models comes
from curation (the base model's own low-res vs native answers, judged); this skips the model.

    edge-awares train oracle data/samples.jsonl -o data/trajectories.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data.format import Trajectory, read_samples, write_trajectories
from ..errors import DataError


def oracle_trajectories(samples_path: str | Path, out_path: str | Path, image_roots: Sequence[str] = ()) -> Path:
    """Write one trajectory per sample of `samples_path` to `out_path` (images stay where they are; they must lie
    inside the samples' folder or `image_roots`).

    Raises DataError for a sample without `needs_detail`, or one that needs detail but has no `crop_ids`;
    OutputError when `out_path` is the samples file, lies in a missing folder, or is a file other than trajectories
    of ours (it is written whole, beside it then renamed).
    """
    from ..outputs import atomic_path, check_file

    check_file(out_path, "trajectories", inputs=(samples_path,))
    trajs = []
    for s in read_samples(samples_path, image_roots=image_roots):
        if s.needs_detail is None:
            raise DataError(f"sample {s.id!r} has no needs_detail annotation; the oracle cannot label it")
        if s.needs_detail and not s.crop_ids:
            raise DataError(f"sample {s.id!r} needs detail but has no crop_ids")
        trajs.append(Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []))
    with atomic_path(out_path, "trajectories", inputs=(samples_path,)) as tmp:
        write_trajectories(tmp, trajs, image_dir=None)
    return Path(out_path)


__all__ = ["oracle_trajectories"]
