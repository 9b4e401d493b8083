"""Views: what the model sees. View sizing (Qwen2.5-VL: sides multiples of patch x merge), the low-res
global view, crops cut from the original image, visual-token counts, and pixel preprocessing to patches.

The preprocessing reproduces transformers' Qwen2-VL image processor (resize with BICUBIC to the
`smart_resize` grid, rescale, CLIP normalisation, patchify in merge order) in numpy, because the runtime
must not import transformers; tests/test_views.py holds the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .crops import ALL, CropSet
from .errors import ConfigError, ImageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Geometry:
    """How images become visual tokens for one model family and protocol."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 32 * 28 * 28
    max_pixels: int = 2048 * 28 * 28
    lowres_scale: float = 0.5
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def factor(self) -> int:
        """Pixels per visual token along one side (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        """A geometry from its dict (missing fields keep their defaults, unknown ones are ignored), checked.

        Raises ConfigError naming the field and its legal range ("geometry.patch_size = 0 is out of range;
        legal: 1..64"): the manifest and the TensorRT profiles build views from these numbers, and a zero
        patch or a NaN std would only surface as a division by zero or NaN pixels later.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"geometry = {show(d)} is not a mapping of its fields")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**kw).check()

    def check(self) -> "Geometry":
        """This geometry if every field is of its type and in its range (GEOMETRY_LIMITS); else ConfigError."""
        for name, (lo, hi) in GEOMETRY_LIMITS.items():
            check_number(f"geometry.{name}", getattr(self, name), lo, hi)
        if self.max_pixels < self.min_pixels:
            raise ConfigError(f"geometry.max_pixels = {self.max_pixels} is below geometry.min_pixels = "
                              f"{self.min_pixels}; legal: min_pixels..{GEOMETRY_LIMITS['max_pixels'][1]}")
        if self.max_pixels < self.factor ** 2:
            raise ConfigError(f"geometry.max_pixels = {self.max_pixels} is under one visual token "
                              f"({self.factor}x{self.factor} px); legal: {self.factor ** 2}.."
                              f"{GEOMETRY_LIMITS['max_pixels'][1]}")
        check_number("geometry.lowres_scale", self.lowres_scale, 0, 1, integer=False, lo_open=True)
        for name, (lo, hi) in (("image_mean", (0, 1)), ("image_std", (1e-6, 10))):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3:
                raise ConfigError(f"geometry.{name} = {show(value)} is not 3 numbers (one per RGB channel)")
            for i, v in enumerate(value):
                check_number(f"geometry.{name}[{i}]", v, lo, hi, integer=False)
        return self

    def with_max_tokens(self, tokens: int) -> "Geometry":
        """The same geometry with the per-image cap set to `tokens` visual tokens."""
        return Geometry(**{**self.__dict__, "max_pixels": tokens * self.factor * self.factor})


# Legal ranges of the integer fields (a 64-px patch, an 8x8 merge and 2^28 px = 16k x 16k are far past any
# Qwen2.5-VL; they bound what a hand-written or corrupt manifest can ask the runtime to allocate).
GEOMETRY_LIMITS = {"patch_size": (1, 64), "merge_size": (1, 8), "temporal_patch_size": (1, 16),
                   "min_pixels": (1, 1 << 28), "max_pixels": (1, 1 << 28)}


def show(value, limit: int = 40) -> str:
    """repr(value), cut to `limit` characters: error messages stay one short line whatever a file holds."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def check_number(name: str, value, lo, hi, integer: bool = True, lo_open: bool = False):
    """`value` if it is a number in [lo, hi] ((lo, hi] with `lo_open`), an int when `integer` (a bool is
    never a number here); else ConfigError "NAME = VALUE is out of range; legal: LO..HI". The one range
    check the geometry and the engine manifest (edge_awares/manifest.py) share, so their messages read alike.
    """
    legal = f"over {lo} up to {hi}" if lo_open else f"{lo}..{hi}"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"{name} = {show(value)} is not {'an integer' if integer else 'a number'}; legal: {legal}")
    finite = isinstance(value, int) or math.isfinite(value)  # an int may be too large to convert to float
    if not (finite and (lo < value if lo_open else lo <= value) and value <= hi):
        raise ConfigError(f"{name} = {show(value)} is out of range; legal: {legal}")
    return value


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's sizing rule: both sides multiples of `factor`, area within [min, max], aspect kept."""
    if min(height, width) <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f"aspect ratio {width}x{height} is over 200:1, which the model cannot take")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass
class View:
    """One image shown to the model: its source region and its patch grid."""

    kind: str  # "lowres", "native", "crop" or "box"
    source: Image.Image = field(repr=False)  # the region before model resizing
    box: tuple[int, int, int, int]  # region of the original image, pixels
    height: int  # model-input size, multiples of geometry.factor
    width: int
    geometry: Geometry = field(repr=False)
    crop_id: str | None = None

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        """(t, h, w) in patches, as transformers' `image_grid_thw`."""
        p = self.geometry.patch_size
        return (1, self.height // p, self.width // p)

    @property
    def merged_hw(self) -> tuple[int, int]:
        """Visual-token grid (after the 2x2 merge)."""
        f = self.geometry.factor
        return (self.height // f, self.width // f)

    @property
    def n_tokens(self) -> int:
        h, w = self.merged_hw
        return h * w

    @property
    def n_pixels(self) -> int:
        """Pixels of the source region (the released AwaRes pixel ratio counts these)."""
        return self.source.width * self.source.height

    def pixel_values(self) -> np.ndarray:
        """Patches as [n_patches, C * temporal * patch * patch] float32, in the model's merge order."""
        return pixel_values(self.source, self.height, self.width, self.geometry)

    def model_image(self) -> Image.Image:
        """The region resized to the model-input size (what `pixel_values` normalises and patchifies)."""
        return model_image(self.source, self.height, self.width)


def make_view(source: Image.Image, geometry: Geometry, kind: str, box=None, crop_id=None) -> View:
    h, w = smart_resize(source.height, source.width, geometry.factor, geometry.min_pixels, geometry.max_pixels)
    box = box if box is not None else (0, 0, source.width, source.height)
    return View(kind=kind, source=source, box=tuple(box), height=h, width=w, geometry=geometry, crop_id=crop_id)


def native_view(image: Image.Image, geometry: Geometry) -> View:
    """The whole image at the resolution the model would normally use."""
    return make_view(image, geometry, "native")


def lowres_view(image: Image.Image, geometry: Geometry) -> View:
    """The whole image downscaled by `lowres_scale` per side (LANCZOS, as the released AwaRes code)."""
    s = geometry.lowres_scale
    w, h = max(1, int(image.width * s)), max(1, int(image.height * s))
    small = image.resize((w, h), Image.Resampling.LANCZOS)
    return make_view(small, geometry, "lowres")


def crop_views(image: Image.Image, crop_set: CropSet, crop_ids: list[str], geometry: Geometry) -> list[View]:
    """One view per requested crop, cut from the original image and shown at native token density."""
    views = []
    for cid in crop_ids:
        box = crop_set.pixel_box(cid, image.width, image.height)
        region = image if box == (0, 0, image.width, image.height) else image.crop(box)
        views.append(make_view(region, geometry, "crop", box=box, crop_id=cid))
    return views


def box_view(image: Image.Image, box: tuple[int, int, int, int], geometry: Geometry) -> View:
    """A free box (ERGO), already clamped to the image, cut and shown under the geometry's cap."""
    region = image.crop(box)
    return make_view(region, geometry, "box", box=box, crop_id=ALL if box == (0, 0, image.width, image.height) else None)


def model_image(source: Image.Image, height: int, width: int) -> Image.Image:
    """`source` at the model-input size (BICUBIC, as the Qwen2-VL processor resizes)."""
    if (source.width, source.height) != (width, height):
        source = source.resize((width, height), Image.Resampling.BICUBIC)
    return source


def pixel_values(source: Image.Image, height: int, width: int, g: Geometry) -> np.ndarray:
    """Resize (BICUBIC), rescale, normalise and patchify one image, as the Qwen2-VL processor does."""
    source = model_image(source, height, width)
    x = np.asarray(source, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(g.image_mean, np.float32)) / np.asarray(g.image_std, np.float32)
    x = x.transpose(2, 0, 1)  # C, H, W
    c, p, m, t = 3, g.patch_size, g.merge_size, g.temporal_patch_size
    gh, gw = height // p, width // p
    x = x.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    # A still image is repeated over the temporal patch axis.
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p))
