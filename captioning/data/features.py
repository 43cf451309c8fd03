"""The feature cache: with a frozen encoder each image is encoded once, not once per caption per epoch, into an
on-disk HDF5 that ``datasets.ImageCaptions(features=path)`` reads instead of the pixels.

The cache stores the backbone's feature map *before* the adaptive pooling, (N, C, h, w) in fp16 — 8×8 for a
256-pixel ResNet input, 3× smaller than the pooled 14×14 grid — and ``Encoder.pool`` is applied on load, so the
decoder sees exactly what ``Encoder.forward`` would give (up to fp16 rounding).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zlib

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from captioning.data.images_h5 import _Sink
from captioning.datasets import ImageCaptions, _check_files, normalize, split_paths
from captioning.internals.atomic import atomic_path
from captioning.internals.errors import KitError
from captioning.internals.locks import folder_lock

# 2: every row carries a CRC32 ("crc32", written with the row) that is checked before the cache is renamed into
# place and again when a run finds it; a version-1 cache (whose rows a full disk could leave as zeros) is rebuilt.
CACHE_VERSION = 2
FULL_CHECK_BYTES = 2**30  # caches up to this size are checked row by row when a run finds them, larger ones sampled
_checked = {}  # (path, size, mtime_ns) -> True: a cache checked once per process, not at every epoch
STALE = "belongs to other images or another encoder"  # replaced without a warning: the usual reason


def cache_path(cache_folder, data_name, split, encoder):
    return os.path.join(cache_folder, f"{split}_FEATURES_{data_name}_{encoder.arch}.hdf5")


def cache_key(images_path, encoder):
    st = os.stat(images_path)
    return json.dumps(
        {
            "version": CACHE_VERSION,
            # the real path: one data folder reached through a symlink and directly is one cache, not two runs
            # taking each other's for stale and rebuilding it under a reader's feet
            "images": os.path.realpath(images_path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "arch": encoder.arch,
            "weights": encoder.weights_digest(),
        },
        sort_keys=True,
    )


@torch.no_grad()
def build_feature_cache(
    encoder,
    data_folder,
    data_name,
    split,
    cache_folder=None,
    batch_size=None,
    device="cpu",
    progress=True,
    required=True,
):
    """Encode every image of ``split`` once into an fp16 HDF5 cache; returns its path.

    Resumable (an interrupted run continues after the last finished batch; an unreadable leftover is rebuilt) and
    invalidated when the images file, the encoder's weights or its architecture change. Peak memory is one batch.
    Every row carries a CRC32: the whole file is checked before it is renamed into place, and a cache found later
    is checked again (``_check``) and rebuilt when it fails. A cache that will not fit on the disk stops before the
    encoding, and a write that fails midway (a full disk) stops the run with a KitError naming the space; the
    half-written file is removed, never taken for a cache.
    A folder that cannot be written: a checked cache is used as it is; without one, a KitError, or None when
    ``required`` is False (the caller then encodes the images itself).
    Two runs on one data folder: the second waits for the first's cache (``locks.folder_lock``).
    ``batch_size``: images per encoder pass; None: 32 on a GPU, 4 on the CPU (there, with ResNet-101 at 256 px,
    the folded encoder was faster with 4 than with 8, 16 or 32, and took less memory: ``benchmarks/cache_batch.py``).
    """
    if batch_size is None:
        batch_size = 32 if torch.device(device).type == "cuda" else 4
    images_path = split_paths(data_folder, data_name, split)[0]
    _check_files([images_path])
    cache_folder = cache_folder or os.path.join(data_folder, "features")
    path = cache_path(cache_folder, data_name, split, encoder)
    key = cache_key(images_path, encoder)
    partial = path + ".partial"

    # a checked cache is read as it is, without the lock: it was renamed into place whole, and a read-only data
    # folder (where no lock file can be made) can still be trained on or tested with its cache
    problem = _check(path, key)
    if problem is None:
        return path
    try:
        os.makedirs(cache_folder, exist_ok=True)
    except OSError as e:
        if not required:
            return None
        raise KitError(f"cannot create the feature cache folder '{cache_folder}': {e}") from None
    if not _writable(cache_folder):
        if not required:
            return None
        raise KitError(
            f"the {split} feature cache {path} {problem}, and it cannot be (re)built: {cache_folder} is "
            f"not writable. Make the folder writable, or set feature_cache=False (train; encodes the "
            f"images at every epoch, slower)"
        )
    # one run builds a split's cache; a second one started meanwhile waits, then finds it built
    with folder_lock(cache_folder, f"{split}_{encoder.arch}", what=f"the {split} feature cache in {cache_folder}"):
        problem = _check(path, key)
        if problem is None:
            return path
        if os.path.exists(path):
            if problem != STALE:
                print(
                    f"warning: the {split} feature cache {path} {problem}: building it again",
                    file=sys.stderr,
                    flush=True,
                )
            os.remove(path)  # stale (images or encoder changed) or failed its check
        _encode(encoder, images_path, partial, key, split, batch_size, device, progress)
        problem = _check(partial, key, full=True)
        if problem is not None:  # a disk that lost writes without an error: never renamed into place
            os.remove(partial)
            raise KitError(
                f"the {split} feature cache just written to {partial} {problem}: it was removed. Check "
                f"the disk of {cache_folder} (free space, errors in the system log) and run again"
            )
        os.replace(partial, path)
        _checked[_stamp(path)] = True  # checked in full just now
    return path


def recalibrate_once(encoder, data_folder, data_name, n_images, progress=True):
    """Recalibrate the BatchNorm statistics of a random ``encoder`` on the first ``n_images`` training images —
    once per data folder: the statistics are kept beside the feature cache (``features/BN_….pt``, keyed by the
    encoder's initial weights, the images file and ``n_images``) and later runs load them (``weights_only``)
    instead of recomputing them (15 s for 128 images at 256 px through ResNet-101 on 2 CPU cores,
    ``benchmarks/encoder_speed.py``)."""
    import hashlib

    images_path = split_paths(data_folder, data_name, "TRAIN")[0]
    _check_files([images_path])
    st = os.stat(images_path)
    key = json.dumps(
        {
            "version": CACHE_VERSION,
            "images": os.path.realpath(images_path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "arch": encoder.arch,
            "n": n_images,
            "init": encoder.weights_digest(),
        },
        sort_keys=True,
    )
    folder = os.path.join(data_folder, "features")
    path = os.path.join(folder, f"BN_{data_name}_{encoder.arch}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt")
    bns = {name: m for name, m in encoder.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key and set(saved["stats"]) == set(bns):
            for name, m in bns.items():
                for buf, value in saved["stats"][name].items():
                    getattr(m, buf).copy_(value)
            return path
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError, EOFError):
        pass  # missing or unreadable: recompute
    data = ImageCaptions(data_folder, data_name, "TRAIN")
    n = min(n_images, len(data))
    batches = (normalize(data.images(i, min(n, i + 32))) for i in range(0, n, 32))
    encoder.recalibrate(tqdm(batches, total=-(-n // 32), desc="recalibrating BatchNorm", disable=not progress))
    data.close()
    stats = {
        name: {b: getattr(m, b).detach().cpu().clone() for b in ("running_mean", "running_var", "num_batches_tracked")}
        for name, m in bns.items()
    }
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"key": key, "stats": stats}, tmp)
    except (OSError, RuntimeError):  # torch.save reports a file it cannot create as RuntimeError
        pass  # a read-only data folder (or a full disk): recalibrate again next time
    return path


def _writable(folder):
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            return True
    except OSError:
        return False


def _row_crc(row):
    """CRC32 of one cached row (C, h, w) fp16, as stored in the cache's ``crc32`` dataset."""
    return zlib.crc32(np.ascontiguousarray(row, dtype=np.float16).tobytes())


def _check(path, key, full=False):
    """None when ``path`` is a complete cache of ``key`` whose rows match their checksums, else what is wrong with
    it (a phrase: "does not exist", "is not a readable HDF5 file", …). ``full``: check every row; otherwise every
    row of a cache up to ``FULL_CHECK_BYTES`` and 256 rows spread over a larger one, once per process."""
    if not os.path.exists(path):
        return "does not exist"
    stamp = _stamp(path)
    if not full and _checked.get(stamp):
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") != key:
                return STALE
            feats, crcs = f.get("features"), f.get("crc32")
            if feats is None or crcs is None or crcs.shape != (feats.shape[0],):
                return "lacks its rows or their checksums"
            n = feats.shape[0]
            if int(f.attrs.get("n_done", -1)) != n:
                return f"holds {int(f.attrs.get('n_done', -1))} of its {n} rows"
            rows = range(n)
            if not full and feats.size * 2 > FULL_CHECK_BYTES:
                rows = sorted(set(np.linspace(0, n - 1, 256).round().astype(int).tolist()))
            stored = crcs[:]
            for i in rows:
                if _row_crc(feats[i]) != int(stored[i]):
                    return f"is damaged: row {i} does not match its checksum (a write that never reached the disk)"
    except (OSError, KeyError, RuntimeError, ValueError) as e:  # not an HDF5 file, or damaged beyond reading
        return f"is not a readable HDF5 file ({e})"
    _checked[stamp] = True
    return None


def _stamp(path):
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def _open_partial(partial, key, n, probe):
    """The half-built cache to continue, or a new one, as ``(file, sink, first)``: a .partial left by an interrupted
    run is continued when it is readable and belongs to these images and this encoder (``first`` is then None: the
    key fixes the map's shape, so nothing is encoded to size it), and replaced otherwise (a kill can leave it
    unreadable) by a file sized by ``first = probe()``, the first batch's features, which the caller writes.

    HDF5 writes through ``images_h5._Sink``: a failed write (a full disk) is recorded there and raised by the
    caller as a KitError, instead of HDF5 printing errors, carrying on and crashing the interpreter at exit."""
    if os.path.exists(partial):
        fh = None
        try:
            fh = open(partial, "r+b", buffering=0)
            sink = _Sink(fh)
            dst = h5py.File(sink, "r+")
            if dst.attrs.get("key") == key and "features" in dst and dst["features"].shape[0] == n and "crc32" in dst:
                return dst, sink, None
            dst.close()
        except OSError:
            pass
        if fh is not None:
            fh.close()
        os.remove(partial)
    first = probe()
    shape = tuple(first.shape[1:])
    fh = open(partial, "w+b", buffering=0)
    sink = _Sink(fh)
    dst = h5py.File(sink, "w")
    dst.create_dataset("features", shape=(n, *shape), dtype="float16", chunks=(1, *shape))
    dst.create_dataset("crc32", shape=(n,), dtype="uint32")
    dst.attrs["key"] = key
    dst.attrs["n_done"] = 0
    return dst, sink, first


def _space_error(split, partial, n, row_bytes, error=None):
    """The KitError for a cache that does not fit: names the file, the space needed and free, and what to do."""
    folder = os.path.dirname(os.path.abspath(partial))
    free = shutil.disk_usage(folder).free
    what = f"writing the {split} feature cache {partial} failed ({error}); " if error else ""
    return KitError(
        f"{what}the cache needs about {n * row_bytes / 2**20:.1f} MB and {folder} has "
        f"{free / 2**20:.1f} MB free: free some space and run again (the cache is rebuilt), or set "
        f"feature_cache=False (train; encodes the images at every epoch, slower)"
    )


def encode_pixels(net, pixels, device):
    """The feature cache's encode step: uint8 images (B, 3, H, W) as a numpy array → backbone feature map
    (B, C, h, w) on ``device`` (bf16 under autocast on a GPU). The uint8 images go to the device before they are
    normalised there (a quarter of the bytes of floats)."""
    dev = torch.device(device)
    x = normalize(torch.from_numpy(pixels).to(dev, non_blocking=True))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        return net.backbone(x)


def _encode(encoder, images_path, partial, key, split, batch_size, device, progress):
    was_training = encoder.training
    net = encoder.for_inference()  # BatchNorm folded, channels_last: the same features, 1.5x faster on a CPU

    def backbone(pixels):
        return encode_pixels(net, pixels, device)

    with h5py.File(images_path, "r") as src:
        images = src["images"]
        n = images.shape[0]
        bar = tqdm(total=n, desc=f"encoding {split} images", unit="img", disable=not progress)
        dst, sink, first = _open_partial(partial, key, n, lambda: backbone(images[:batch_size]))
        row_bytes = 2 * int(np.prod(dst["features"].shape[1:])) + 4
        start = int(dst.attrs["n_done"])
        # checked before the work: a cache that cannot fit stops now, not after hours of encoding
        if (n - start) * row_bytes > shutil.disk_usage(os.path.dirname(os.path.abspath(partial))).free:
            sink.failed = True  # write nothing more: the file is removed
            dst.close()
            sink.f.close()
            os.remove(partial)
            raise _space_error(split, partial, n, row_bytes)
        try:
            bar.update(start)
            for lo in range(start, n, batch_size):
                hi = min(n, lo + batch_size)
                fmap = first if lo == 0 and first is not None else backbone(images[lo:hi])
                rows = fmap.float().cpu().numpy().astype(np.float16)
                dst["features"][lo:hi] = rows
                dst["crc32"][lo:hi] = [_row_crc(r) for r in rows]
                dst.attrs["n_done"] = hi  # resume point, written after the batch's data
                dst.flush()  # on disk now: a kill after this batch leaves a file the next run continues
                if sink.failed:
                    break
                bar.update(hi - lo)
        finally:
            dst.close()
            sink.f.close()
            bar.close()
        if isinstance(sink.failed, OSError):
            os.remove(partial)  # which of its rows reached the disk is unknown: not continued
            raise _space_error(split, partial, n, row_bytes, sink.failed.strerror or sink.failed)
    encoder.train(was_training)
