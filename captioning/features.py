"""What the decoders train on: one item per *image* with all its captions, the image side read either from the
prepared HDF5 (pixels, when the encoder is fine-tuned) or from an on-disk cache of encoder features (frozen
encoder: each image is encoded once, not once per caption per epoch).

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
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from captioning.errors import KitError

from captioning.datasets import IMAGENET_MEAN as _MEAN, IMAGENET_STD as _STD  # noqa: E402

IMAGENET_MEAN = torch.tensor(_MEAN).view(3, 1, 1)
IMAGENET_STD = torch.tensor(_STD).view(3, 1, 1)
CACHE_VERSION = 1


def split_paths(data_folder, data_name, split):
    """The prepared files of one split: (images .hdf5, captions .json, caplens .json)."""
    return tuple(os.path.join(data_folder, f"{split}_{kind}_{data_name}.{ext}")
                 for kind, ext in (("IMAGES", "hdf5"), ("CAPTIONS", "json"), ("CAPLENS", "json")))


def word_map_path(data_folder, data_name):
    return os.path.join(data_folder, f"WORDMAP_{data_name}.json")


def normalize(images_uint8):
    """uint8 (B, 3, H, W) → float in [0, 1], then ImageNet mean/std normalised."""
    return (images_uint8.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _check_files(paths):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise KitError(f"prepared data file '{missing[0]}' does not exist (missing: {len(missing)} file(s)). "
                       f"Run `python -m captioning prepare …` (or `python -m captioning shapes` then prepare) first, "
                       f"and check data_folder / data_name")


class ImageCaptions(Dataset):
    """Items per image: ``(x, captions, caplens)``.

    x: uint8 image (3, H, W) when ``features`` is None, else the cached feature map (C, h, w) fp16;
    captions: LongTensor (cpi, T); caplens: LongTensor (cpi,). The HDF5 files are opened lazily in each
    DataLoader worker and read one item at a time (never all in memory).
    """

    def __init__(self, data_folder, data_name, split, features=None, limit=None):
        self.images_path, cap_path, len_path = split_paths(data_folder, data_name, split)
        _check_files([self.images_path, cap_path, len_path])
        self.features_path = features
        with h5py.File(self.images_path, "r") as f:
            self.cpi = int(f.attrs["captions_per_image"])
            self.n_images = f["images"].shape[0]
            self.image_shape = tuple(f["images"].shape[1:])
        with open(cap_path) as fh:
            caps = json.load(fh)
        with open(len_path) as fh:
            lens = json.load(fh)
        if len(caps) != self.n_images * self.cpi or len(lens) != len(caps):
            raise KitError(f"'{cap_path}' holds {len(caps)} captions and '{len_path}' {len(lens)} lengths for "
                           f"{self.n_images} images × {self.cpi}: the files come from different runs; prepare again")
        if limit is not None:
            self.n_images = min(self.n_images, int(limit))
        self.captions = torch.tensor(caps[: self.n_images * self.cpi], dtype=torch.long).view(self.n_images,
                                                                                             self.cpi, -1)
        self.caplens = torch.tensor(lens[: self.n_images * self.cpi], dtype=torch.long).view(self.n_images, self.cpi)
        self._h5 = None
        self._pid = None

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            path = self.features_path or self.images_path
            self._h5 = h5py.File(path, "r")
            self._pid = os.getpid()
        return self._h5

    def __len__(self):
        return self.n_images

    def __getitem__(self, i):
        f = self._file()
        x = torch.from_numpy(f["features" if self.features_path else "images"][i])
        return x, self.captions[i], self.caplens[i]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state


def cache_path(cache_folder, data_name, split, encoder):
    return os.path.join(cache_folder, f"{split}_FEATURES_{data_name}_{encoder.arch}.hdf5")


def cache_key(images_path, encoder):
    st = os.stat(images_path)
    return json.dumps({"version": CACHE_VERSION, "images": os.path.abspath(images_path), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns, "arch": encoder.arch, "weights": encoder.weights_digest()},
                      sort_keys=True)


@torch.no_grad()
def build_feature_cache(encoder, data_folder, data_name, split, cache_folder=None, batch_size=32,
                        device="cpu", progress=True):
    """Encode every image of ``split`` once into an fp16 HDF5 cache; returns its path.

    Resumable (an interrupted run continues after the last finished batch) and invalidated when the images file,
    the encoder's weights or its architecture change. Peak memory is one batch.
    """
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

    if os.path.exists(path):
        with h5py.File(path, "r") as f:
            if f.attrs.get("key") == key:
                return path
        os.remove(path)  # stale: images or encoder changed

    was_training = encoder.training
    encoder.eval()
    dev = torch.device(device)
    use_amp = dev.type == "cuda"
    with h5py.File(images_path, "r") as src:
        images = src["images"]
        n = images.shape[0]
        probe = encoder.backbone(normalize(torch.from_numpy(images[:1])).to(dev))
        shape = tuple(probe.shape[1:])
        mode = "a" if os.path.exists(partial) else "w"
        with h5py.File(partial, mode) as dst:
            if dst.attrs.get("key") != key or "features" not in dst or tuple(dst["features"].shape[1:]) != shape:
                for name in list(dst.keys()):
                    del dst[name]
                dst.create_dataset("features", shape=(n, *shape), dtype="float16", chunks=(1, *shape))
                dst.attrs["key"] = key
                dst.attrs["n_done"] = 0
            start = int(dst.attrs["n_done"])
            bar = tqdm(total=n, initial=start, desc=f"encoding {split} images", unit="img", disable=not progress)
            for lo in range(start, n, batch_size):
                hi = min(n, lo + batch_size)
                x = normalize(torch.from_numpy(images[lo:hi])).to(dev, non_blocking=True)
                if use_amp:
                    x = x.to(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    fmap = encoder.backbone(x)
                dst["features"][lo:hi] = fmap.float().cpu().numpy().astype(np.float16)
                dst.attrs["n_done"] = hi  # resume point, written after the batch's data
                bar.update(hi - lo)
            bar.close()
    os.replace(partial, path)
    encoder.train(was_training)
    return path
