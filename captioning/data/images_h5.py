"""Writing the images HDF5 of ``prepare``: images decoded in chunks by the worker pool (``images.decoded_chunks``)
and streamed into ``images`` (N, 3, S, S) uint8, one HDF5 chunk per image, with their ids and (shapes data) their
objects' boxes rescaled to S. A full disk gives an OSError, never a crash (see ``_Sink``).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from captioning.data.images import decoded_chunks
from captioning.internals.errors import KitError


def _rescale_objects(objects: list[dict], original: tuple[int, int], size: int) -> list[dict]:
    sx, sy = size / original[0], size / original[1]
    out = []
    for o in objects:
        o = dict(o)
        if o.get("bbox") is not None:
            x0, y0, x1, y1 = o["bbox"]
            o["bbox"] = [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)]
        out.append(o)
    return out


class _Sink:
    """The file HDF5 writes through (h5py's file-object driver). A failed write (a full disk) is recorded, not
    raised, and everything after it is discarded: an error raised into HDF5 while it flushes or frees an object
    leaves the library in a state that crashes the interpreter (segfault). The caller raises instead."""

    def __init__(self, f):
        self.f, self.failed = f, False

    def write(self, b):
        if self.failed:
            return len(b)
        view = memoryview(b).cast("B")
        try:
            while view:  # an unbuffered file may write less than asked
                view = view[self.f.write(view) :]
        except OSError as e:
            self.failed = e
        return len(b)

    def flush(self):
        if not self.failed:
            self.f.flush()

    def truncate(self, size=None):
        return size if self.failed else self.f.truncate(size)

    def read(self, n=-1):
        return self.f.read(n)

    def readinto(self, b):
        return self.f.readinto(b)

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)  # unbuffered: a seek never writes

    def tell(self):
        return self.f.tell()


def write_images(
    tmp_path: Path,
    items: list[dict],
    size: int,
    cpi: int,
    pool,
    workers: int,
    with_objects: bool,
    desc: str,
    set_id: str,
) -> None:
    """Decode ``items`` (dicts with path, image_id, objects) into a new HDF5 file, streaming chunk by chunk; the
    file is read back and checked (every image against the CRC32 of what was written, the ids) before the caller
    renames it into place: a KitError when it differs."""
    with open(tmp_path, "w+b", buffering=0) as f:
        sink = _Sink(f)
        h = h5py.File(sink, "w")
        try:
            crcs = _fill_images(h, items, size, cpi, pool, workers, with_objects, desc, set_id, sink)
        except BaseException:
            sink.failed = sink.failed or True  # the file is thrown away: close it without writing more
            h.close()
            raise
        h.close()
        if sink.failed:  # a write failed while HDF5 closed the file
            raise _write_error(sink, tmp_path)
    _verify(tmp_path, items, crcs)


def _verify(tmp_path, items, crcs):
    """KitError unless ``tmp_path`` holds the images whose CRC32s are ``crcs`` and the ids of ``items``: a disk
    (or network filesystem) that loses a write without reporting it must not give a file taken for good data."""
    problem = None
    try:
        with h5py.File(tmp_path, "r") as h:
            images, ids = h.get("images"), h.get("image_ids")
            if images is None or ids is None or images.shape[0] != len(items) or ids.shape != (len(items),):
                problem = "lacks images or their ids"
            else:
                for i, crc in enumerate(crcs):
                    if _crc(images[i]) != crc:
                        problem = f"holds other pixels than were written for image {i} ({items[i]['image_id']})"
                        break
                stored = [v.decode() if isinstance(v, bytes) else v for v in ids[:]]
                if problem is None and stored != [it["image_id"] for it in items]:
                    problem = "holds other image ids than were written"
    except OSError as e:
        problem = f"cannot be read back ({e})"
    if problem is not None:
        raise KitError(
            f"{tmp_path}, just written, {problem}: nothing was moved into place. Check the disk of "
            f"{tmp_path.parent} (free space, errors in the system log) and run prepare again"
        )


def _crc(image):
    return zlib.crc32(np.ascontiguousarray(image).tobytes())


def _write_error(sink, tmp_path):
    e = sink.failed
    if isinstance(e, OSError):
        return OSError(e.errno, f"{e.strerror} (writing {tmp_path.name})")
    return OSError(f"writing {tmp_path.name} failed")


def _fill_images(h, items, size, cpi, pool, workers, with_objects, desc, set_id, sink):
    """Stream the images into ``h``; returns the CRC32 of each image's pixels as written (for ``_verify``)."""
    n = len(items)
    crcs = []
    h.attrs["captions_per_image"] = cpi
    h.attrs["set_id"] = set_id  # which prepare run wrote it (manifest.py)
    # One chunk per image: the DataLoader reads single images at random.
    images = h.create_dataset("images", (n, 3, size, size), dtype="uint8", chunks=(1, 3, size, size))
    h.create_dataset("image_ids", data=[it["image_id"] for it in items], dtype=h5py.string_dtype("utf-8"))
    objects = h.create_dataset("objects", (n,), dtype=h5py.string_dtype("utf-8")) if with_objects else None
    start = 0
    chunks = decoded_chunks([it["path"] for it in items], size, pool, workers)
    # closing(): on an error, cancel queued work now rather than whenever the generator is collected.
    with tqdm(total=n, desc=desc, unit="img") as progress, contextlib.closing(chunks):
        for batch, originals in chunks:
            k = len(batch)
            images[start : start + k] = batch
            crcs.extend(_crc(image) for image in batch)
            if objects is not None:
                objects[start : start + k] = [
                    json.dumps(_rescale_objects(items[start + j]["objects"], originals[j], size)) for j in range(k)
                ]
            start += k
            progress.update(k)
            if sink.failed:
                raise _write_error(sink, Path(sink.f.name))
    return crcs
