"""The host-side vision layout (window order, rotary positions, padded segment gathers) equals transformers'
own index computations for Qwen2.5-VL, for single images and batches of mixed sizes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_awares.runtimes.vision_layout import vision_layout

GRIDS = [[(1, 16, 16)], [(1, 22, 36), (1, 8, 14)], [(1, 40, 12)], [(1, 4, 4), (1, 64, 64), (1, 6, 30)]]


@pytest.mark.parametrize("grids", GRIDS, ids=lambda g: "+".join(f"{h}x{w}" for _, h, w in g))
def test_layout_matches_transformers(grids):
    torch = pytest.importorskip("torch")
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    g = torch.tensor(grids)
    window_index, cu_window = get_vision_window_index(g, 2, 112, 14)
    order = (window_index[:, None] * 4 + torch.arange(4)).reshape(-1).numpy()
    lay = vision_layout(grids)
    n = order.shape[0]
    np.testing.assert_array_equal(lay.order, order)
    np.testing.assert_array_equal(lay.rotary_pos, get_vision_position_ids(g, 2).numpy()[order])
    np.testing.assert_array_equal(lay.merge_order, np.argsort(window_index.numpy()))
    cu = cu_window.numpy()
    assert lay.window_index.shape[0] == len(cu) - 1
    for s in range(len(cu) - 1):
        rows = lay.window_index[s][lay.window_index[s] < n]
        np.testing.assert_array_equal(rows, np.arange(cu[s], cu[s + 1]))
    bounds = np.cumsum([0] + [t * h * w for t, h, w in grids])
    for s in range(len(grids)):
        rows = lay.image_index[s][lay.image_index[s] < n]
        np.testing.assert_array_equal(rows, np.arange(bounds[s], bounds[s + 1]))
    # the way back is the inverse of the gather
    np.testing.assert_array_equal(lay.window_index.reshape(-1)[lay.window_back], np.arange(n))
    np.testing.assert_array_equal(lay.image_index.reshape(-1)[lay.image_back], np.arange(n))
    assert lay.tokens == [t * h * w // 4 for t, h, w in grids]
