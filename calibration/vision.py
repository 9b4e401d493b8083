"""Calibration sets for the vision encoder: the views and crops the runtime will actually encode.

For each image, the protocol's first (low-res) view, then the crops of a turn encoded together as the
session does (quadrants, centre, whole image), so activation ranges cover both the small global view and
full-density crops. Without user images, a few procedural pages and scenes of several aspect ratios are
drawn (labelled `synthetic` in the manifest: calibrate on real images of the target domain for accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge_awares.crops import CropSet
from edge_awares.images import load_image
from edge_awares.runtimes.vision_layout import vision_layout
from edge_awares.views import Geometry, View, crop_views

DEFAULT_CROP_BATCHES = (("0", "4"), ("5",), ("all",))


def synthetic_images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    """Deterministic images of several aspect ratios: text-like strokes, boxes, gradients and noise."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 720), (900, 300), (512, 512), (1000, 700), (360, 640)]
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, ((xx + yy) % 97) / 97], -1) * 200 + rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 20))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            d.rectangle([x0, y0, x0 + int(rng.integers(20, w // 3)), y0 + int(rng.integers(10, h // 4))],
                        outline=colour, width=3)
            d.text((x0 + 4, y0 + 2), f"Total {int(rng.integers(0, 9999))}", fill=(0, 0, 0))
        images.append(img)
    return images


@dataclass
class CalibrationSet:
    """Batches of views, each batch encoded in one vision call; `source` says where the images came from."""

    batches: list[list[View]]
    source: str

    def summary(self) -> dict:
        return {"source": self.source, "batches": len(self.batches),
                "views": sum(len(b) for b in self.batches),
                "visual_tokens": sum(v.n_tokens for b in self.batches for v in b)}


def make_calibration_set(images: list[str | Path] | None, protocol, crop_set: CropSet, geometry: Geometry,
                         crop_batches=DEFAULT_CROP_BATCHES, max_images: int = 16) -> CalibrationSet:
    """Views and crops of `images` (paths) as the session would encode them; synthetic images if none."""
    if images:
        pil = [load_image(p) for p in list(images)[:max_images]]
        source = f"{len(pil)} user image(s)"
    else:
        pil = synthetic_images()
        source = f"synthetic ({len(pil)} procedural images)"
    geo = protocol.geometry(geometry)
    batches: list[list[View]] = []
    for img in pil:
        first = protocol.first_view(img, geo)
        batches.append([first])
        for ids in crop_batches:
            batches.append(crop_views(img, crop_set, list(ids), geo))
    return CalibrationSet(batches, source)


class VisionCalibrationReader:
    """An onnxruntime CalibrationDataReader over a CalibrationSet: one feed dict per batched vision call."""

    def __init__(self, calib: CalibrationSet, merge: int, window: int, patch: int):
        self._calib, self._merge, self._window, self._patch = calib, merge, window, patch
        self._it = None

    def _feeds(self):
        for views in self._calib.batches:
            layout = vision_layout([v.grid_thw for v in views], self._merge, self._window, self._patch)
            yield layout.inputs(np.concatenate([v.pixel_values() for v in views], axis=0))

    def get_next(self):
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self):
        self._it = None
