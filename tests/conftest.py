"""Shared fixtures: tiny random-init Qwen2.5-VL checkpoints (built once per test session) and test images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    pytest.importorskip("torch")
    from edge_awares.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny2_ckpt(tmp_path_factory):
    pytest.importorskip("torch")
    from edge_awares.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny2", preset="tiny2", seed=1)


def make_doc(width: int, height: int, seed: int = 0) -> Image.Image:
    """A page-like test image: coloured blocks and some text, deterministic."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(10, max(11, width // 3))), y0 + int(rng.integers(10, max(11, height // 3)))
        d.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    d.text((width // 4, height // 2), "TOTAL 42.7", fill="black")
    return img


@pytest.fixture
def doc_image():
    return make_doc(640, 480)


@pytest.fixture(params=[(640, 480), (300, 900), (1000, 250)], ids=["landscape", "portrait", "wide"])
def doc_image_sized(request):
    w, h = request.param
    return make_doc(w, h, seed=w + h)
