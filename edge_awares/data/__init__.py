"""Data: the sample and trajectory formats, synthetic documents, benchmark loaders and answer metrics.

Import-light on purpose (no torch): the submodules are imported where they are used, e.g.
``from edge_awares.data.synth import make_sample`` or ``from edge_awares.data.metrics import get_metric``.
"""

from .format import Sample, Trajectory, read_samples, read_trajectories, write_samples, write_trajectories

__all__ = ["Sample", "Trajectory", "read_samples", "read_trajectories", "write_samples", "write_trajectories"]
