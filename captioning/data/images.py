"""Image files → uint8 RGB arrays of a fixed size: what ``prepare`` stores and ``caption`` feeds the encoder.
Any mode Pillow opens becomes 8-bit RGB (``to_rgb``); ``decoded_chunks`` decodes many files in worker processes
with a bounded window, so memory stays flat however many images there are.
"""

from __future__ import annotations

import collections
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from captioning.internals.errors import KitError

CHUNK = 16  # images per task sent to a worker: big enough to amortise pickling, small enough to stream


def die_with_parent():
    """Initializer of a decoding worker (Linux): the kernel kills the worker when the process that started it dies,
    even by ``kill -9``, so an interrupted ``prepare`` leaves no orphan workers holding memory."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: transparency is composited on white, 16/32-bit greyscale is scaled to 8 bits
    (65535 -> 255) instead of being clipped, which is what ``convert("RGB")`` would do."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow opens 16-bit PNG / TIFF greyscale as "I;16" or "I": the range is 0..65535 either way.
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def load_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` and return (uint8 array (3, size, size), original (width, height)).

    Raises KitError naming the file if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            original = img.size
            rgb = to_rgb(img)
            if rgb.size != (size, size):
                # Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.uint8)
    except KitError:
        raise
    except Exception as e:  # PIL reports a bad file with many exception types (OSError, SyntaxError, ...)
        raise KitError(
            f"cannot read image {path}: {type(e).__name__}: {e}. The file is corrupt or not an image; "
            "replace it or leave it out."
        ) from e
    return pixels.transpose(2, 0, 1), original


def _load_chunk(paths: list[str], size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    arrays, originals = zip(*(load_image(p, size) for p in paths))
    return np.stack(arrays), list(originals)


def decoded_chunks(paths: list[str], size: int, pool: ProcessPoolExecutor | None, workers: int):
    """Yield (uint8 (k, 3, size, size), original sizes) for consecutive chunks of ``paths``, in order.

    With a pool at most ``2 * workers`` chunks are in flight, so memory stays flat however many images there are
    (``Pool.imap`` would queue every result if the HDF5 writer fell behind).  Without one, decode in-process.
    """
    chunks = (paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK))
    if pool is None:
        for chunk in chunks:
            yield _load_chunk(chunk, size)
        return
    pending = collections.deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_load_chunk, chunk, size))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(_load_chunk, nxt, size))
            yield result
    finally:
        for future in pending:  # after an error: don't decode the rest of the window for nothing
            future.cancel()
