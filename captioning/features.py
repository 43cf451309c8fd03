"""The feature cache: with a frozen encoder each image is encoded once, not once per caption per epoch, into an
on-disk HDF5 that ``datasets.ImageCaptions(features=path)`` reads instead of the pixels.

The cache stores the backbone's feature map *before* the adaptive pooling, (N, C, h, w) in fp16 — 8×8 for a
256-pixel ResNet input, 3× smaller than the pooled 14×14 grid — and ``Encoder.pool`` is applied on load, so the
decoder sees exactly what ``Encoder.forward`` would give (up to fp16 rounding).
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from captioning.atomic import atomic_path
from captioning.datasets import ImageCaptions, _check_files, normalize, split_paths
from captioning.errors import KitError
from captioning.locks import folder_lock

CACHE_VERSION = 1


def cache_path(cache_folder, data_name, split, encoder):
    return os.path.join(cache_folder, f"{split}_FEATURES_{data_name}_{encoder.arch}.hdf5")


def cache_key(images_path, encoder):
    st = os.stat(images_path)
    return json.dumps({"version": CACHE_VERSION, "images": os.path.abspath(images_path), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns, "arch": encoder.arch, "weights": encoder.weights_digest()},
                      sort_keys=True)


@torch.no_grad()
def build_feature_cache(encoder, data_folder, data_name, split, cache_folder=None, batch_size=None,
                        device="cpu", progress=True):
    """Encode every image of ``split`` once into an fp16 HDF5 cache; returns its path.

    Resumable (an interrupted run continues after the last finished batch; an unreadable leftover is rebuilt) and
    invalidated when the images file, the encoder's weights or its architecture change. Peak memory is one batch.
    Two runs on one data folder: the second waits for the first's cache (``locks.folder_lock``).
    ``batch_size``: images per encoder pass; None: 32 on a GPU, 4 on the CPU (there, with ResNet-101 at 256 px,
    the folded encoder was faster with 4 than with 8, 16 or 32, and took less memory: ``benchmarks/cache_batch.py``).
    """
    if batch_size is None:
        batch_size = 32 if torch.device(device).type == "cuda" else 4
    images_path = split_paths(data_folder, data_name, split)[0]
    _check_files([images_path])
    cache_folder = cache_folder or os.path.join(data_folder, "features")
    try:
        os.makedirs(cache_folder, exist_ok=True)
    except OSError as e:
        raise KitError(f"cannot create the feature cache folder '{cache_folder}': {e}") from None
    path = cache_path(cache_folder, data_name, split, encoder)
    key = cache_key(images_path, encoder)
    partial = path + ".partial"

    # one run builds a split's cache; a second one started meanwhile waits, then finds it built
    with folder_lock(cache_folder, f"{split}_{encoder.arch}", what=f"the {split} feature cache in {cache_folder}"):
        if _valid(path, key):
            return path
        if os.path.exists(path):
            os.remove(path)  # stale: images or encoder changed
        _encode(encoder, images_path, partial, key, split, batch_size, device, progress)
        os.replace(partial, path)
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
    key = json.dumps({"version": CACHE_VERSION, "images": os.path.abspath(images_path), "size": st.st_size,
                      "mtime_ns": st.st_mtime_ns, "arch": encoder.arch, "n": n_images,
                      "init": encoder.weights_digest()}, sort_keys=True)
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
    stats = {name: {b: getattr(m, b).detach().cpu().clone() for b in ("running_mean", "running_var",
                                                                        "num_batches_tracked")}
             for name, m in bns.items()}
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"key": key, "stats": stats}, tmp)
    except OSError:
        pass  # a read-only data folder: recalibrate again next time
    return path


def _valid(path, key):
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("key") == key
    except OSError:  # missing, or not an HDF5 file
        return False


def _open_partial(partial, key, n, probe):
    """The half-built cache to continue, or a new one, as ``(file, first)``: a .partial left by an interrupted run
    is continued when it is readable and belongs to these images and this encoder (``first`` is then None: the
    key fixes the map's shape, so nothing is encoded to size it), and replaced otherwise (a kill can leave it
    unreadable) by a file sized by ``first = probe()``, the first batch's features, which the caller writes."""
    if os.path.exists(partial):
        try:
            dst = h5py.File(partial, "a")
            if dst.attrs.get("key") == key and "features" in dst and dst["features"].shape[0] == n:
                return dst, None
            dst.close()
        except OSError:
            pass
        os.remove(partial)
    first = probe()
    shape = tuple(first.shape[1:])
    dst = h5py.File(partial, "w")
    dst.create_dataset("features", shape=(n, *shape), dtype="float16", chunks=(1, *shape))
    dst.attrs["key"] = key
    dst.attrs["n_done"] = 0
    return dst, first


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
        dst, first = _open_partial(partial, key, n, lambda: backbone(images[:batch_size]))
        with dst:
            start = int(dst.attrs["n_done"])
            bar.update(start)
            for lo in range(start, n, batch_size):
                hi = min(n, lo + batch_size)
                fmap = first if lo == 0 and first is not None else backbone(images[lo:hi])
                dst["features"][lo:hi] = fmap.float().cpu().numpy().astype(np.float16)
                dst.attrs["n_done"] = hi  # resume point, written after the batch's data
                dst.flush()  # on disk now: a kill after this batch leaves a file the next run continues
                bar.update(hi - lo)
            bar.close()
    encoder.train(was_training)
