"""Crop geometry of the AwaRes 10-crop set, checked against values computed by hand from the released rule
(side = max(100, W//2); edge crops anchored; centre crops centred; images under 100 px -> whole image)."""

import pytest

from edge_awares.crops import ALL, AWARES_CROPS, Crop, CropSet
from edge_awares.errors import CropError


def test_ids_and_names():
    assert AWARES_CROPS.ids == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "all"]
    assert AWARES_CROPS.resolve("top-left") == "0"
    assert AWARES_CROPS.resolve("Bottom Right") == "3"
    assert AWARES_CROPS.resolve("bottom_right") == "3"
    assert AWARES_CROPS.resolve("centre") is None
    assert AWARES_CROPS.resolve("ALL") == ALL


@pytest.mark.parametrize("w,h,expected", [
    (640, 480, {"0": (0, 0, 320, 240), "1": (320, 0, 640, 240), "2": (0, 240, 320, 480),
                "3": (320, 240, 640, 480), "4": (160, 120, 480, 360), "5": (0, 0, 640, 240),
                "6": (0, 240, 640, 480), "7": (0, 0, 320, 480), "8": (320, 0, 640, 480), "all": (0, 0, 640, 480)}),
    # odd sizes: W//2 and centring by floor division
    (641, 481, {"0": (0, 0, 320, 240), "1": (321, 0, 641, 240), "4": (160, 120, 480, 360),
                "6": (0, 241, 641, 481)}),
    # a narrow image: the half width 75 is raised to the 100 px minimum
    (150, 1000, {"0": (0, 0, 100, 500), "1": (50, 0, 150, 500), "4": (25, 250, 125, 750),
                 "5": (0, 0, 150, 500), "8": (50, 0, 150, 1000)}),
])
def test_pixel_boxes(w, h, expected):
    for cid, box in expected.items():
        assert AWARES_CROPS.pixel_box(cid, w, h) == box, cid


def test_small_image_falls_back_to_whole():
    for cid in AWARES_CROPS.ids:
        assert AWARES_CROPS.pixel_box(cid, 99, 500) == (0, 0, 99, 500)


def test_covering_smallest_first():
    # a box inside the top-left quadrant and the centre
    assert AWARES_CROPS.covering((170, 130, 300, 230), 640, 480)[:2] == ["0", "4"]
    assert AWARES_CROPS.covering((10, 10, 630, 470), 640, 480) == [ALL]
    assert AWARES_CROPS.covering((330, 10, 630, 470), 640, 480) == ["8", ALL]


def test_roundtrip_and_validation():
    assert CropSet.from_dict(AWARES_CROPS.to_dict()) == AWARES_CROPS
    with pytest.raises(CropError):
        CropSet("bad", (Crop("0", "x", (0.5, 0, 0.2, 1)), Crop(ALL, "all", (0, 0, 1, 1))))
    with pytest.raises(CropError):
        CropSet("noall", (Crop("0", "x", (0, 0, 0.5, 1)),))
    with pytest.raises(CropError):
        CropSet.from_dict({"name": "x"})
    with pytest.raises(CropError, match="legal ids"):
        AWARES_CROPS.get("9")
