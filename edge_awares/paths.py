"""The user cache folder: EDGE_AWARES_CACHE, else ~/.cache/edge-awares (tiny checkpoints, integrity stamps,
TensorRT plans)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_AWARES_CACHE", Path.home() / ".cache" / "edge-awares"))
