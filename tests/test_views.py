"""View sizing and preprocessing, held equal to transformers' Qwen2-VL image processor (PIL backend)."""

import numpy as np
import pytest

from edge_awares.crops import AWARES_CROPS
from edge_awares.errors import ImageError
from edge_awares.views import Geometry, crop_views, lowres_view, native_view, smart_resize

from conftest import make_doc


@pytest.mark.parametrize("w,h", [(640, 480), (300, 900), (1000, 250), (57, 57), (2048, 1536)])
def test_pixel_values_match_transformers(w, h):
    pil_mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    g = Geometry(min_pixels=16 * 28 * 28, max_pixels=512 * 28 * 28)
    proc = pil_mod.Qwen2VLImageProcessorPil(min_pixels=g.min_pixels, max_pixels=g.max_pixels)
    img = make_doc(w, h, seed=w)
    ref = proc(images=[img], return_tensors="np")
    view = native_view(img, g)
    assert tuple(ref["image_grid_thw"][0]) == view.grid_thw
    ours = view.pixel_values()
    assert ours.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(ours, ref["pixel_values"], atol=2e-5)


def test_smart_resize_rules():
    assert smart_resize(480, 640, 28, 56 * 56, 10**8) == (476, 644)
    h, w = smart_resize(4000, 3000, 28, 56 * 56, 2048 * 28 * 28)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 2048 * 28 * 28
    h, w = smart_resize(20, 20, 28, 32 * 28 * 28, 10**8)
    assert h * w >= 32 * 28 * 28
    with pytest.raises(ImageError, match="aspect"):
        smart_resize(10, 3000, 28, 56 * 56, 10**8)


def test_lowres_is_quarter_tokens():
    g = Geometry(max_pixels=4096 * 28 * 28)
    img = make_doc(1120, 840)
    low, nat = lowres_view(img, g), native_view(img, g)
    assert low.source.size == (560, 420)
    assert nat.n_tokens == 40 * 30
    assert low.n_tokens == 20 * 15  # exactly a quarter here
    assert low.grid_thw == (1, 30, 40) and nat.grid_thw == (1, 60, 80)


def test_crops_cut_from_original_at_native_density():
    g = Geometry(max_pixels=4096 * 28 * 28)
    img = make_doc(1120, 840)
    v0, v4, vall = crop_views(img, AWARES_CROPS, ["0", "4", "all"], g)
    assert v0.box == (0, 0, 560, 420) and v0.source.size == (560, 420)
    assert np.array_equal(np.asarray(v0.source), np.asarray(img)[:420, :560])
    assert v4.box == (280, 210, 840, 630)
    assert v0.n_tokens == 20 * 15 and vall.n_tokens == native_view(img, g).n_tokens


def test_geometry_round_trip():
    g = Geometry(max_pixels=123 * 28 * 28)
    assert Geometry.from_dict(g.to_dict()) == g
    assert g.with_max_tokens(640).max_pixels == 640 * 784
