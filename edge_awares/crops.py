"""Crop sets: named, normalized regions of the original image that a policy may request.

A crop set is data (it travels in the engine manifest), not code: a policy is trained for one set and
exported with it. The geometry below reproduces the released AwaRes evaluation code
(github.com/NimrodShabtay/AwaRes, lmms_eval/qwen2_5_vl_awares.py, `get_crop_box`): every side of a crop is
at least `min_side` px, edge-anchored crops stay on their edge, others stay centred, and an image with a
side under `min_side` falls back to the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import CropError

ALL = "all"


@dataclass(frozen=True)
class Crop:
    """One region: an id the model names, a human name, and (x0, y0, x1, y1) in [0, 1]."""

    id: str
    name: str
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True)
class CropSet:
    """An ordered, named set of crops. `all` (the whole image) is always a member."""

    name: str
    crops: tuple[Crop, ...]
    min_side: int = 100
    _by_id: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        by_id = {}
        for crop in self.crops:
            x0, y0, x1, y1 = crop.box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise CropError(f"crop {crop.id!r} has an invalid normalized box {crop.box}")
            if crop.id in by_id:
                raise CropError(f"crop id {crop.id!r} appears twice in crop set {self.name!r}")
            by_id[crop.id] = crop
        if ALL not in by_id:
            raise CropError(f"crop set {self.name!r} must contain {ALL!r}")
        object.__setattr__(self, "_by_id", by_id)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.crops]

    def get(self, crop_id: str) -> Crop:
        try:
            return self._by_id[crop_id]
        except KeyError:
            raise CropError(f"unknown crop id {crop_id!r}; legal ids: {', '.join(self.ids)}") from None

    def resolve(self, token: str) -> str | None:
        """Map an id or a name (case-insensitive, '_' or ' ' for '-') to an id; None if neither."""
        t = token.strip().lower().replace("_", "-").replace(" ", "-")
        if t in self._by_id:
            return t
        for c in self.crops:
            if c.name.lower() == t:
                return c.id
        return None

    def pixel_box(self, crop_id: str, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop's (left, top, right, bottom) box in pixels of a width x height image."""
        crop = self.get(crop_id)
        if crop_id == ALL or width < self.min_side or height < self.min_side:
            return (0, 0, width, height)
        x0, y0, x1, y1 = crop.box
        left, right = _span(x0, x1, width, self.min_side)
        top, bottom = _span(y0, y1, height, self.min_side)
        return (left, top, right, bottom)

    def covering(self, box: tuple[float, float, float, float], width: int, height: int) -> list[str]:
        """Ids of crops (whole-image last) whose pixel box contains `box` (pixels), smallest area first."""
        x0, y0, x1, y1 = box
        hits = []
        for c in self.crops:
            l, t, r, b = self.pixel_box(c.id, width, height)
            if l <= x0 and t <= y0 and r >= x1 and b >= y1:
                hits.append(((r - l) * (b - t), c.id == ALL, c.id))
        return [cid for _, _, cid in sorted(hits)]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "min_side": self.min_side,
            "crops": [{"id": c.id, "name": c.name, "box": list(c.box)} for c in self.crops],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CropSet":
        try:
            crops = tuple(Crop(str(c["id"]), str(c["name"]), tuple(float(v) for v in c["box"])) for c in d["crops"])
            return cls(name=str(d["name"]), crops=crops, min_side=int(d.get("min_side", 100)))
        except (KeyError, TypeError, ValueError) as e:
            raise CropError(f"malformed crop set: {e}") from None


def _span(a: float, b: float, size: int, min_side: int) -> tuple[int, int]:
    """Pixel interval for normalized [a, b] of `size`, at least `min_side` long, anchored like AwaRes."""
    length = min(size, max(min_side, int(size * (b - a))))
    if a <= 0.0:
        return 0, length
    if b >= 1.0:
        return size - length, size
    centre = (a + b) / 2
    left = max(0, min(size - length, int(centre * size * 2 - length) // 2))
    return left, left + length


AWARES_CROPS = CropSet(
    name="awares10",
    crops=(
        Crop("0", "top-left", (0.0, 0.0, 0.5, 0.5)),
        Crop("1", "top-right", (0.5, 0.0, 1.0, 0.5)),
        Crop("2", "bottom-left", (0.0, 0.5, 0.5, 1.0)),
        Crop("3", "bottom-right", (0.5, 0.5, 1.0, 1.0)),
        Crop("4", "center", (0.25, 0.25, 0.75, 0.75)),
        Crop("5", "top", (0.0, 0.0, 1.0, 0.5)),
        Crop("6", "bottom", (0.0, 0.5, 1.0, 1.0)),
        Crop("7", "left", (0.0, 0.0, 0.5, 1.0)),
        Crop("8", "right", (0.5, 0.0, 1.0, 1.0)),
        Crop(ALL, "all", (0.0, 0.0, 1.0, 1.0)),
    ),
)

CROP_SETS = {AWARES_CROPS.name: AWARES_CROPS}


def get_crop_set(name: str) -> CropSet:
    try:
        return CROP_SETS[name]
    except KeyError:
        raise CropError(f"unknown crop set {name!r}; known: {', '.join(CROP_SETS)}") from None
