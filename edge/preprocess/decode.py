"""Image files and bytes -> RGB uint8 pixels, decoded as Keras' load_img decodes them (PIL)."""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ecosorter.edge.errors import ImageError

# A Pi HQ camera gives 12 MP; a 64 MP limit admits every real camera and refuses bombs.
DEFAULT_MAX_MEGAPIXELS = 64.0


def decode_image(source: str | Path | bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """Decode to an H x W x 3 RGB uint8 array, or raise ImageError naming the file and the fault."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else _open_file(source)
    except OSError as e:
        raise ImageError(name, f"cannot open: {e.strerror or e}") from None
    with fp:
        try:
            with warnings.catch_warnings():
                # Our own megapixel limit below is the one that applies (and names the key).
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fp)
                w, h = im.size
                if w * h > max_megapixels * 1e6:
                    raise ImageError(name, f"{w}x{h} is {w * h / 1e6:.0f} MP, above the "
                                           f"{max_megapixels:g} MP limit (preprocess.max_megapixels)")
                im.load()
        except ImageError:
            raise
        except UnidentifiedImageError:
            size = _size(source)
            what = "empty file (0 bytes)" if size == 0 else "not an image PIL can read (JPEG, PNG, BMP, ...)"
            raise ImageError(name, what) from None
        except Image.DecompressionBombError as e:
            raise ImageError(name, f"too large to decode safely ({e}); limit {max_megapixels:g} MP "
                                   "(preprocess.max_megapixels)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(name, f"corrupt or truncated: {e}") from None
        return to_rgb(im, name)


def _open_file(path: str | Path):
    """Open without blocking and only a regular file: a FIFO would wait forever for a writer (a stalled
    loop or CLI), a device (/dev/zero) never ends."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(str(path), "not a regular file (a FIFO, device or socket): not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def to_rgb(im: Image.Image, name: str = "<image>") -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs: keep the top 8 bits. (PIL's own convert('RGB') clips them to white.)
        a = np.asarray(im, dtype=np.uint32)
        shift = 8 if a.max(initial=0) > 255 else 0
        g = (a >> shift).clip(0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")  # what load_img(color_mode="rgb") does: L, P, RGBA, CMYK...
    a = np.asarray(im)
    if a.ndim != 3 or a.shape[2] != 3 or a.size == 0:
        raise ImageError(name, f"decoded to shape {a.shape}, expected H x W x 3")
    return a


def _size(source: str | Path | bytes) -> int:
    if isinstance(source, bytes | bytearray):
        return len(source)
    try:
        return Path(source).stat().st_size
    except OSError:
        return -1
