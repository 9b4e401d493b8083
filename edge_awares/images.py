"""Safe image loading: EXIF orientation applied, any mode converted to RGB, a pixel limit enforced.

Every failure (missing, empty, truncated, not an image, too many pixels) is an ImageError with one line
that says which file and why, so the CLI never shows a traceback for a bad image.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# 64 MP: well beyond any document scan, well below what decompression bombs ask for.
DEFAULT_MAX_PIXELS = 64_000_000


def load_image(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `source` (a path, raw bytes or a PIL image) as an RGB image with EXIF orientation applied.

    Raises ImageError for a missing, empty, truncated or non-image file, or one over `max_pixels`.
    """
    name = "<image>"
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            path = Path(source)
            name = str(path)
            if not path.exists():
                raise ImageError(f"{name}: no such file")
            if path.is_dir():
                raise ImageError(f"{name}: is a directory, not an image")
            data = path.read_bytes()
        if not data:
            raise ImageError(f"{name}: file is empty")
        try:
            with warnings.catch_warnings():
                # Pillow warns before it raises on bombs; we check the size ourselves below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not a recognised image format") from None
        except Image.DecompressionBombError as e:
            raise ImageError(f"{name}: too many pixels ({e})") from None
        except OSError as e:
            raise ImageError(f"{name}: cannot read image ({e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: truncated or corrupt image ({e})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels are composited onto white (as a page would show them)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip.
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        hi = a.max() or 1.0
        return Image.fromarray((a * (255.0 / hi)).astype("uint8")).convert("RGB")
    return img.convert("RGB")
