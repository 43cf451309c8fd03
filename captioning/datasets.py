"""The files written by ``captioning.data.prepare`` as PyTorch datasets, and their paths.

* ``CaptionDataset`` — the course's API: one item per caption (below).
* ``ImageCaptions`` — what training reads: one item per *image* with all its captions, the image side read either
  from the prepared HDF5 (pixels, when the encoder is fine-tuned) or from the feature cache (``data/features.py``).

One item per caption (N images x cpi captions); item i belongs to image i // cpi::

    TRAIN:     (img, caption, caplen)
    VAL/TEST:  (img, caption, caplen, allcaps)

    img      float32 (3, S, S)        pixels / 255, then ImageNet-normalised (or ``transform`` applied instead)
    caption  int64 (max_len + 2,)     [<start>, w1..wn, <end>, <pad>...]
    caplen   int64 (1,)               n + 2
    allcaps  int64 (cpi, max_len + 2) every caption of the image, the references for BLEU

Images are read one at a time from the HDF5 file, which each DataLoader worker opens for itself on first use,
so ``num_workers > 1`` works and memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import torch
from torch.utils.data import Dataset

from captioning.data.manifest import check_prepared
from captioning.internals.errors import KitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("TRAIN", "VAL", "TEST")
# CPU-side: what ``CaptionDataset.image`` normalises a CPU image with; ``normalize`` makes its own on the device
_MEAN = torch.tensor(IMAGENET_MEAN, device="cpu").view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, device="cpu").view(3, 1, 1)


def _require(path: Path, data_name: str) -> Path:
    if not path.is_file():
        raise KitError(
            f"{path} does not exist. Create the input files first, e.g. `python -m captioning prepare "
            f"--dataset ... --output-folder {path.parent}` (data_name {data_name!r} must match the "
            "prepare options: {dataset}_{cpi}_cap_per_img_{min_word_freq}_min_word_freq)."
        )
    return path


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KitError(f"{path} is not valid JSON ({e}); run `python -m captioning prepare` again.") from e


def split_paths(data_folder, data_name, split):
    """The prepared files of one split: (images .hdf5, captions .json, caplens .json)."""
    return tuple(
        os.path.join(data_folder, f"{split}_{kind}_{data_name}.{ext}")
        for kind, ext in (("IMAGES", "hdf5"), ("CAPTIONS", "json"), ("CAPLENS", "json"))
    )


def word_map_path(data_folder, data_name):
    return os.path.join(data_folder, f"WORDMAP_{data_name}.json")


def normalize(images_uint8):
    """uint8 (B, 3, H, W) → float32 (B, 3, H, W) in [0, 1], then ImageNet mean/std normalised, on the images'
    device (the solver moves the uint8 images to the GPU first: a quarter of the bytes of floats)."""
    x = images_uint8.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def _check_files(paths):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise KitError(
            f"prepared data file '{missing[0]}' does not exist (missing: {len(missing)} file(s)). "
            f"Run `python -m captioning prepare …` (or `python -m captioning shapes` then prepare) first, "
            f"and check data_folder / data_name"
        )


def load_word_map(data_folder, data_name) -> dict[str, int]:
    """The ``WORDMAP_{data_name}.json`` of ``data_folder`` as {word: index}."""
    path = _require(Path(data_folder) / f"WORDMAP_{data_name}.json", data_name)
    return _read_json(path)


class _LazyH5:
    """The HDF5 file at ``self.h5_path``, opened on first use in each process: h5py handles can neither be pickled
    (DataLoader workers under spawn) nor shared across a fork."""

    _h5 = None
    _pid = None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.h5_path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's HDF5 handle (it is reopened if the dataset is used again)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None


class CaptionDataset(_LazyH5, Dataset):
    """Captions and images of one split (``'TRAIN'``, ``'VAL'`` or ``'TEST'``) of prepared data.

    Attributes: ``split``, ``cpi`` (captions per image), ``n_images``, ``word_map`` (dict), ``captions``
    (int64 (n_images * cpi, max_len + 2)), ``caplens`` (int64 (n_images * cpi,)).
    ``transform``, if given, receives the (3, S, S) float tensor in [0, 1] and replaces the default ImageNet
    normalisation.
    """

    def __init__(self, data_folder, data_name, split, transform=None):
        split = str(split).upper()
        if split not in SPLITS:
            raise KitError(f"split must be one of {SPLITS}, got {split!r}")
        folder = Path(data_folder)
        self.split = split
        self.transform = transform
        self.h5_path = _require(folder / f"{split}_IMAGES_{data_name}.hdf5", data_name)
        check_prepared(folder, data_name)
        captions = _read_json(_require(folder / f"{split}_CAPTIONS_{data_name}.json", data_name))
        caplens = _read_json(_require(folder / f"{split}_CAPLENS_{data_name}.json", data_name))
        self.word_map = load_word_map(folder, data_name)

        try:
            with h5py.File(self.h5_path, "r") as h:
                self.cpi = int(h.attrs["captions_per_image"])
                self.n_images = int(h["images"].shape[0])
                self.image_size = int(h["images"].shape[-1])
        except (OSError, KeyError) as e:
            raise KitError(
                f"{self.h5_path} is not a complete images file ({e}); run `python -m captioning prepare` again."
            ) from e
        if len(captions) != self.n_images * self.cpi or len(caplens) != len(captions):
            raise KitError(
                f"{folder}: {self.h5_path.name} holds {self.n_images} images x {self.cpi} captions, but "
                f"the CAPTIONS/CAPLENS files hold {len(captions)} / {len(caplens)}: the files come from "
                "different runs. Run `python -m captioning prepare` again."
            )
        # CPU-side: dataset items, moved to the device by the training loop
        self.captions = torch.tensor(captions, dtype=torch.long, device="cpu").view(len(captions), -1)
        self.caplens = torch.tensor(caplens, dtype=torch.long, device="cpu")
        self._image_ids = None

    def __len__(self) -> int:
        return self.n_images * self.cpi

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float32 (3, S, S): [0, 1], then normalised (or ``transform``)."""
        if not 0 <= i < self.n_images:
            raise IndexError(f"image index {i} out of range for {self.n_images} images")
        img = torch.from_numpy(self._file()["images"][i]).float().div_(255.0)
        if self.transform is not None:
            return self.transform(img)
        return (img - _MEAN) / _STD

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"caption index {i} out of range for {len(self)} captions")
        img_index = i // self.cpi
        img = self.image(img_index)
        # clone(): a view would drag the whole captions storage through a DataLoader worker's queue.
        caption = self.captions[i].clone()
        caplen = self.caplens[i : i + 1].clone()
        if self.split == "TRAIN":
            return img, caption, caplen
        first = img_index * self.cpi
        return img, caption, caplen, self.captions[first : first + self.cpi].clone()

    @property
    def image_ids(self) -> list[str]:
        """Per image, its path relative to the prepare image folder (``str(i)`` for files without that record)."""
        if self._image_ids is None:
            h = self._file()
            if "image_ids" in h:
                self._image_ids = list(h["image_ids"].asstr()[:])
            else:
                self._image_ids = [str(i) for i in range(self.n_images)]
        return self._image_ids

    def objects(self, i: int) -> list[dict]:
        """Objects of image ``i`` (shape, color, size, bbox in S x S pixels) or [] if the data has none."""
        h = self._file()
        if "objects" not in h:
            return []
        return json.loads(h["objects"].asstr()[i])


class ImageCaptions(_LazyH5, Dataset):
    """Items per image: ``(x, captions, caplens)``.

    x: uint8 image (3, H, W) when ``features`` is None, else the cached feature map (C, h, w) fp16;
    captions: LongTensor (cpi, T); caplens: LongTensor (cpi,). The HDF5 files are opened lazily in each
    DataLoader worker and read one item at a time (never all in memory).
    """

    def __init__(self, data_folder, data_name, split, features=None, limit=None):
        self.images_path, cap_path, len_path = split_paths(data_folder, data_name, split)
        _check_files([self.images_path, cap_path, len_path])
        check_prepared(data_folder, data_name)
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
            raise KitError(
                f"'{cap_path}' holds {len(caps)} captions and '{len_path}' {len(lens)} lengths for "
                f"{self.n_images} images × {self.cpi}: the files come from different runs; prepare again"
            )
        if limit is not None:
            self.n_images = min(self.n_images, int(limit))
        # CPU-side: dataset items, moved to the device by the training loop
        self.captions = torch.tensor(caps[: self.n_images * self.cpi], dtype=torch.long, device="cpu").view(
            self.n_images, self.cpi, -1
        )
        self.caplens = torch.tensor(lens[: self.n_images * self.cpi], dtype=torch.long, device="cpu").view(
            self.n_images, self.cpi
        )
        self.h5_path = self.features_path or self.images_path

    def __len__(self):
        return self.n_images

    def __getitem__(self, i):
        f = self._file()
        x = torch.from_numpy(f["features" if self.features_path else "images"][i])
        return x, self.captions[i], self.caplens[i]

    def images(self, lo, hi):
        """uint8 images lo..hi-1 (n, 3, H, W) of the split (also when the items are cached features)."""
        with h5py.File(self.images_path, "r") as f:
            return torch.from_numpy(f["images"][lo:hi])


def save_prepared_image(data_folder, data_name, split, index, folder):
    """Image ``index`` (modulo the split's size) of a prepared split as it was prepared (S×S), written once as
    ``folder/test_image_<index>_<its file name>.png``; returns the path. What caption.ipynb captions by default
    on data whose source image folder the prepared files do not record (COCO, Flickr)."""
    import re

    from PIL import Image

    from captioning.internals.atomic import atomic_path

    h5_path = split_paths(data_folder, data_name, split)[0]
    if not os.path.isfile(h5_path):
        raise KitError(
            f"there is no {split} images file {h5_path}: prepare the data, or set image to the path of an image file"
        )
    with h5py.File(h5_path, "r") as f:
        if not f["images"].shape[0]:
            raise KitError(f"{h5_path} holds no image: set image to the path of an image file")
        i = index % f["images"].shape[0]
        pixels = f["images"][i]  # uint8 (3, S, S)
        name = f["image_ids"].asstr()[i] if "image_ids" in f else str(i)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(name))[0])[:80]
    out = os.path.join(folder, f"{split.lower()}_image_{i}_{stem}.png")
    if not os.path.isfile(out):
        with atomic_path(out) as tmp:
            Image.fromarray(pixels.transpose(1, 2, 0)).save(tmp, format="PNG")
    return out
