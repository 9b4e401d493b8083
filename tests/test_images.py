"""Hostile and unusual images: typed errors, never a traceback; EXIF orientation and modes handled."""

import io

import numpy as np
import pytest
from PIL import Image

from edge_awares.errors import ImageError
from edge_awares.images import load_image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_missing_empty_dir_and_garbage(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "text.jpg").write_text("this is not a picture")
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(tmp_path / "text.jpg")


def test_truncated(tmp_path):
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|cannot read"):
        load_image(tmp_path / "cut.png")


def test_pixel_limit_and_bomb(tmp_path):
    big = Image.new("1", (12000, 12000))  # 144 MP, a few KB as PNG
    (tmp_path / "bomb.png").write_bytes(_png(big))
    with pytest.raises(ImageError, match="pixels"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="exceeds the limit of 1000"):
        load_image(Image.new("RGB", (50, 50)), max_pixels=1000)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (300, 100), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (100, 300)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    img = Image.new(mode, (40, 30))
    out = load_image(_png(img) if mode not in ("CMYK",) else img)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_transparent_becomes_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert load_image(img).getpixel((5, 5)) == (255, 255, 255)
