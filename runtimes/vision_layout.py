"""Host-side index computations of the Qwen2.5-VL vision encoder, in numpy, for any number of images.

The encoder attends within 112-px windows in most blocks and over each whole image in a few. The indices
that say which patch goes where depend on every image's grid, which an ONNX graph cannot loop over
(FACTS.md), so they are computed here and passed in: patches in window order, their rotary (row, col)
positions, and for each attention kind a padded [segments, length] gather layout plus the way back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The graph inputs this layout feeds, in order (the manifest records them too).
VISION_INPUTS = ("pixel_values", "rotary_pos", "window_index", "window_back", "image_index", "image_back",
                 "merge_order")
VISION_OUTPUT = "image_embeds"


@dataclass
class VisionLayout:
    """Everything the vision graph needs besides the weights, for one batched call."""

    order: np.ndarray  # [N] patch permutation: natural (merge) order -> window order
    rotary_pos: np.ndarray  # [N, 2] int64 (row, col) of each patch, in window order
    window_index: np.ndarray  # [Sw, Lw] int64 rows of each window (N = padding)
    window_back: np.ndarray  # [N] int64 row of each patch in the flattened [Sw * Lw] layout
    image_index: np.ndarray  # [Si, Li] the same for whole-image attention
    image_back: np.ndarray
    merge_order: np.ndarray  # [N / merge^2] merged tokens back from window order to natural order
    tokens: list[int]  # merged tokens per image

    def inputs(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """Graph feeds for `pixel_values` [N, features] given in natural (merge) order."""
        return {
            "pixel_values": np.ascontiguousarray(pixel_values[self.order]),
            "rotary_pos": self.rotary_pos, "window_index": self.window_index, "window_back": self.window_back,
            "image_index": self.image_index, "image_back": self.image_back, "merge_order": self.merge_order,
        }


def _segments(bounds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded gather layout for contiguous segments [bounds[i], bounds[i+1]) of n rows; pad rows point at n."""
    lengths = np.diff(bounds)
    length = int(lengths.max())
    cols = np.arange(length)
    index = bounds[:-1, None] + cols[None, :]
    index = np.where(cols[None, :] < lengths[:, None], index, n).astype(np.int64)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    back = (seg * length + (np.arange(n) - bounds[:-1][seg])).astype(np.int64)
    return index, back


def vision_layout(grids: list[tuple[int, int, int]], merge: int = 2, window_size: int = 112,
                  patch_size: int = 14) -> VisionLayout:
    """The layout for images with patch grids `grids` [(t, h, w), ...], encoded together in one call.

    Reproduces transformers' `get_vision_window_index` / `get_vision_position_ids` (Qwen2.5-VL): windows of
    `window_size // patch_size // merge` merged tokens per side, padded at the bottom/right edges.
    """
    unit = merge * merge
    win = window_size // merge // patch_size
    window_index, window_bounds, rotary = [], [0], []
    image_bounds, tokens = [0], []
    base = 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        idx = np.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = win - gh % win, win - gw % win
        nh, nw = (gh + ph) // win, (gw + pw) // win
        padded = np.pad(idx, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
        counts = (padded != -100).sum(-1).reshape(-1)
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + base)
        for c in counts[counts > 0]:  # empty windows vanish (transformers' unique_consecutive)
            window_bounds.append(window_bounds[-1] + int(c) * unit)
        # rotary positions in natural (merge-block-major) order
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows = rows.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        rotary.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
        for _ in range(t):
            image_bounds.append(image_bounds[-1] + h * w)
        tokens.append(t * gh * gw)
        base += t * gh * gw
    windex = np.concatenate(window_index)
    order = (windex[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    n = order.shape[0]
    w_index, w_back = _segments(np.asarray(window_bounds), n)
    i_index, i_back = _segments(np.asarray(image_bounds), n)
    return VisionLayout(
        order=order, rotary_pos=np.concatenate(rotary)[order].astype(np.int64),
        window_index=w_index, window_back=w_back, image_index=i_index, image_back=i_back,
        merge_order=np.argsort(windex).astype(np.int64), tokens=tokens,
    )
