"""Safe image loading: only regular files are opened, a byte cap applies before decoding, EXIF orientation is
applied, any mode is converted to RGB, and a pixel limit is enforced.

Every failure (missing, not a regular file, unreadable, too large, empty, truncated, not an image, too many
pixels) is an ImageError with one line that says which file and why, so the CLI never shows a traceback and
never blocks on a named pipe or reads a device until memory runs out.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# 64 MP: well beyond any document scan, well below what decompression bombs ask for.
DEFAULT_MAX_PIXELS = 64_000_000
# 256 MB: the largest allowed image stored uncompressed at 4 bytes per pixel (RGBA); no legitimate file of an
# allowed size is bigger, and a larger one is refused by its size before a byte is read.
DEFAULT_MAX_BYTES = 4 * DEFAULT_MAX_PIXELS

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_image_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the image file `path`, read only if it is a regular file of at most `max_bytes` bytes.

    The file is opened non-blocking (a FIFO never blocks) and checked with fstat on the open descriptor before
    anything is read; a file over `max_bytes` is refused by its size without reading, and at most
    `max_bytes` + 1 bytes are ever read (a file that grows meanwhile is refused too). Symlinks are followed:
    a path the user names is theirs to name; paths named by a data file are confined before they get here
    (edge_awares.data.loaders.confine_image). Raises ImageError: no such file, permission denied, not a regular
    file (directory, FIFO, device, socket), too large, or unreadable.
    """
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except ValueError as e:  # an embedded NUL byte
        raise ImageError(f"{name}: not a usable path ({e})") from None
    except OSError as e:
        # A socket cannot be opened at all (ENXIO); say what it is rather than the errno text.
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError:
            kind = None
        if e.errno == errno.ENXIO and kind:
            raise ImageError(f"{name}: is {kind}, not a regular image file") from None
        raise ImageError(f"{name}: cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{name}: is {_kind(st.st_mode)}, not a regular image file")
        if st.st_size > max_bytes:
            raise ImageError(f"{name}: {st.st_size} bytes exceeds the image file limit of {max_bytes} bytes")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ImageError(f"{name}: grew past the image file limit of {max_bytes} bytes while being read")
    return b"".join(chunks)


def load_image(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Open `source` (a path, raw bytes or a PIL image) as an RGB image with EXIF orientation applied.

    A path is read with read_image_file (regular files only, at most `max_bytes`); raw bytes get the same cap.
    Raises ImageError for a missing, unreadable, non-regular, oversized, empty, truncated or non-image file, or
    one over `max_pixels`.
    """
    name = "<image>"
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > max_bytes:
                raise ImageError(f"{name}: {len(data)} bytes exceeds the image file limit of {max_bytes} bytes")
        else:
            name = str(Path(source))
            data = read_image_file(source, max_bytes)
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
        except Exception as e:  # noqa: BLE001 (Pillow plugins raise many kinds; see below)
            raise ImageError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except MemoryError:
        raise ImageError(f"{name}: too large to decode in the memory available") from None
    except Exception as e:  # noqa: BLE001
        # Pillow's decoders answer a corrupt file with whatever their code trips over (OSError, SyntaxError,
        # ValueError, EOFError, struct.error, IndexError, ...); here every one means "this file is damaged".
        # Only Pillow calls (and the mode conversion) are inside this block, so our own bugs are not hidden.
        raise ImageError(f"{name}: truncated or corrupt image ({type(e).__name__}: {e})") from None


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
