"""Qwen2.5-VL's 3-D rotary positions (M-RoPE), in numpy, for a whole conversation or a continuation.

Text tokens get the same index on the t, h and w axes and advance it by one. An image's tokens all share
t = start, with h = start + row and w = start + column on the merged grid; the next token starts at
start + max(rows, cols). So positions advance more slowly than the cache length: the session tracks the two
apart (the position counter is `next_position`, the cache length is the token count).
"""

from __future__ import annotations

import numpy as np

from .chat import Encoded


def positions_for(enc: Encoded, start: int) -> tuple[np.ndarray, int]:
    """Positions [3, len(enc)] int64 for tokens that follow a prefix whose next position is `start`.

    Returns the positions and the next position after them.
    """
    n = len(enc)
    pos = np.empty((3, n), dtype=np.int64)
    cursor, p = 0, start
    for offset, view in enc.images:
        # text before the image (including its <|vision_start|>)
        k = offset - cursor
        pos[:, cursor:offset] = np.arange(p, p + k)
        p += k
        h, w = view.merged_hw
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        pos[0, offset:offset + h * w] = p
        pos[1, offset:offset + h * w] = p + rows.ravel()
        pos[2, offset:offset + h * w] = p + cols.ravel()
        cursor = offset + h * w
        p += max(h, w)
    k = n - cursor
    pos[:, cursor:] = np.arange(p, p + k)
    return pos, p + k
