"""Does an image look like the training data? A caption model answers every image with the words it knows: the
shapes model calls the astronaut photo "a yellow star with a big red star …" with the same confidence as a real
shapes image. ``caption`` uses this module to say when an image is far from what the model was trained on.

Two descriptions of an image: the encoder's mean feature over its grid, (C,), and 11 simple pixel statistics
(:func:`image_statistics`). For each, a Gaussian is fitted to the TRAIN images' — its mean, its main directions
(at most ``RANK``) with their variances, and one variance for all the other directions (probabilistic PCA; a full
covariance cannot be estimated from a few hundred images) — and an image's distance is the Mahalanobis distance
under it, in units of the median VAL image's. The score is the larger of the two: the features know what a shape
is, the pixel statistics catch what a briefly trained encoder may map near the shapes (uniform noise did, with the
tests' tiny encoder).

The threshold comes from images the fits have not seen: the VAL images' scores. Their logarithms are close to
normal, and the threshold is the 99th percentile of the normal fitted to them: about 1 % of images like the
training data are flagged. A fitted percentile, not the 99th of the scores themselves: with the tens of VAL
images of small data the empirical one is the largest score, and it scatters with the sample.

The statistics are computed once per data folder and encoder, from the feature cache when it is there (else the
images are encoded; at most ``MAX_TRAIN`` and ``MAX_VAL`` of them), and stored beside the cache
(``features/FAMILIARITY_….pt``, keyed by the images files, the encoder's weights and grid size); later calls load
them. No data folder: no statistics, and no warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from statistics import NormalDist

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from captioning.internals.atomic import atomic_path
from captioning.internals.errors import KitError

VERSION = 2
RANK = 64  # main directions of the fitted Gaussian (fewer when there are fewer images or channels)
MAX_TRAIN = 2000  # TRAIN images the Gaussian is fitted to (evenly spread over the split)
MAX_VAL = 500  # VAL images that set the threshold
FALSE_ALARMS = 0.01  # share of images like the training data that are flagged
BATCH = 32
# what the model has seen, by the dataset name that starts the prepared files' names
DATA = {
    "shapes": "1-3 coloured shapes (circles, squares, triangles, stars, crosses) on a plain background",
    "coco": "the everyday scenes of COCO photos",
    "flickr8k": "the everyday scenes of Flickr8k photos",
    "flickr30k": "the everyday scenes of Flickr30k photos",
}


@dataclass
class Gaussian:
    """A Gaussian fitted to N vectors (N, D): mean (D,), components (R, D) orthonormal rows, variances (R,),
    residual_variance (the variance in every direction outside the components) and typical: the median distance
    of held-out (VAL) vectors, the unit in which distances of different kinds of vectors are compared."""

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    residual_variance: float
    typical: float = 1.0

    def distance(self, x):
        """x (B, D) → (B,) float64 Mahalanobis distances."""
        y = x.double().cpu() - self.mean
        inside = y @ self.components.T  # (B, R)
        outside = (y * y).sum(1) - (inside * inside).sum(1)
        return ((inside * inside / self.variances).sum(1) + outside.clamp(min=0) / self.residual_variance).sqrt()


@dataclass
class Familiarity:
    """Gaussians fitted to the TRAIN images' mean encoder features ("features", (N, C)) and simple pixel
    statistics ("pixels", :func:`image_statistics`), and the threshold the VAL images set. An image's score is
    its larger distance of the two, each in units of a typical VAL image's: the features see what a shape is,
    the pixel statistics what a weakly trained encoder may not (noise, a colour gradient)."""

    parts: dict
    val_scores: torch.Tensor
    threshold: float
    n_train: int
    what: str

    def score(self, inputs):
        """inputs: {part name: (B, D)} → (B,) float64 scores (1: as far as a typical VAL image)."""
        return torch.stack([g.distance(inputs[k]) / g.typical for k, g in self.parts.items()]).amax(0)

    def judge(self, features, pixels):
        """features (B, C) mean encoder features, pixels (B, 3, H, W) uint8 → per image {"score", "threshold",
        "unfamiliar", "data", "warning"} (warning: the text to show, None when the image looks familiar)."""
        rows = []
        for s in self.score({"features": features, "pixels": image_statistics(pixels)}).tolist():
            far = s > self.threshold
            rows.append(
                {
                    "score": s,
                    "threshold": self.threshold,
                    "unfamiliar": far,
                    "data": self.what,
                    "warning": warning(s, self.threshold, self.what) if far else None,
                }
            )
        return rows

    def state(self):
        return {
            "parts": {k: vars(g) for k, g in self.parts.items()},
            **{k: getattr(self, k) for k in ("val_scores", "threshold", "n_train", "what")},
        }

    @classmethod
    def from_state(cls, state):
        return cls(**dict(state, parts={k: Gaussian(**v) for k, v in state["parts"].items()}))


def warning(score, threshold, what):
    return (
        f"this image looks unlike the training data (score {score:.3g}; 99 % of images like the training data "
        f"score ≤ {threshold:.3g}): the model only knows {what}; its caption is a guess"
    )


def describe_data(data_name):
    """What the images of ``data_name`` (``{dataset}_{n}_cap_per_img_…``) show, for the warning."""
    dataset = re.sub(r"_\d+_cap_per_img_.*$", "", data_name)
    return DATA.get(dataset.lower(), f"images like those of its '{dataset}' training data")


def mean_features(encoder_output):
    """encoder output (B, S, S, C) → (B, C) float64 on the CPU: the mean over the grid."""
    return encoder_output.mean(dim=(1, 2)).double().cpu()


def image_statistics(pixels):
    """uint8 images (B, 3, H, W) → (B, 11) float64: per channel the mean, the spread and the mean step to the next
    pixel (edges and noise), then the mean and spread of the saturation (max - min channel)."""
    x = torch.tensor(np.asarray(pixels), dtype=torch.float64) / 255  # a copy: the images may be read-only
    step = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))
    sat = x.amax(1) - x.amin(1)
    return torch.cat([x.mean((2, 3)), x.std((2, 3)), step, sat.mean((1, 2))[:, None], sat.std((1, 2))[:, None]], 1)


def gaussian(train):
    """train (N, D) → :class:`Gaussian` (``typical`` 1). Needs N ≥ 4.

    At most N/4 main directions: N vectors span N - 1 directions, and with as many components there would be no
    variance left to measure outside them (every new image would be infinitely far)."""
    train = train.double()
    n, c = train.shape
    mean = train.mean(0)
    x = train - mean
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    rank = min(RANK, n // 4, c - 1)  # the other directions' variance is estimated from the images' rest
    variances = s[:rank] ** 2 / (n - 1)
    total = float((x * x).sum()) / (n - 1)
    # floors: images that are all alike (or a feature that never varies) must not divide by zero
    floor = max(total, 1e-12) * 1e-9
    residual = max((total - float(variances.sum())) / (c - rank), floor)
    return Gaussian(mean, vt[:rank].clone(), variances.clamp(min=floor), residual)


def fit(train, val, what):
    """train, val: {part name: (N, D) / (M, D)} → :class:`Familiarity` (N ≥ 4, M ≥ 2)."""
    parts = {}
    for k in train:
        parts[k] = gaussian(train[k])
        parts[k].typical = max(float(parts[k].distance(val[k]).median()), 1e-12)
    n = len(next(iter(train.values())))
    fam = Familiarity(parts, torch.zeros(0), 0.0, n, what)
    fam.val_scores = fam.score(val)
    logs = fam.val_scores.log()
    fam.threshold = float(torch.exp(logs.mean() + NormalDist().inv_cdf(1 - FALSE_ALARMS) * logs.std()))
    return fam


def load_or_fit(encoder, data_folder, data_name, device="cpu", progress=True):
    """The :class:`Familiarity` of ``data_name``'s TRAIN/VAL images as ``encoder`` sees them: loaded from
    ``data_folder/features`` when stored there for these images and this encoder, else computed and stored
    (a folder that cannot be written: computed and not stored)."""
    from captioning.datasets import _check_files, split_paths

    paths = [split_paths(data_folder, data_name, split)[0] for split in ("TRAIN", "VAL")]
    _check_files(paths)
    key = _key(encoder, paths)
    name = f"FAMILIARITY_{data_name}_{encoder.arch}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    path = os.path.join(data_folder, "features", name)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return Familiarity.from_state(saved["state"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        pass  # missing, stale or unreadable: computed again
    net = None if encoder.folded else encoder.for_inference()  # encoder unchanged: the copy shares its weights
    feats = [
        _split_features(net or encoder, encoder, data_folder, data_name, s, m, device, progress)
        for s, m in (("TRAIN", MAX_TRAIN), ("VAL", MAX_VAL))
    ]
    if len(feats[0]["features"]) < 4 or len(feats[1]["features"]) < 2:
        raise KitError(f"the data in '{data_folder}' ({data_name}) has fewer than 4 TRAIN or 2 VAL images")
    fam = fit(feats[0], feats[1], describe_data(data_name))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"key": key, "state": fam.state()}, tmp)
    except (OSError, RuntimeError):  # torch.save reports a file it cannot create as RuntimeError
        pass  # a read-only data folder (or a full disk): computed again next time
    return fam


def for_checkpoint(encoder, cfg, checkpoint, device="cpu", progress=True):
    """(Familiarity or None, note or None) for a checkpoint's model: None and a note saying why when its training
    data cannot be found (captions then come without the check)."""
    from captioning.checkpoints import data_folder_of

    try:
        return load_or_fit(encoder, data_folder_of(cfg, checkpoint), cfg["data_name"], device, progress), None
    except (KitError, OSError) as e:  # OSError: an images file that h5py cannot read
        return None, (
            f"note: no check of how familiar the images are ({e}); the captions of images unlike the "
            f"training data come without a warning"
        )


def _key(encoder, paths):
    stamps = []
    for p in paths:
        st = os.stat(p)
        stamps.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return json.dumps(
        {
            "version": VERSION,
            "images": stamps,
            "arch": encoder.arch,
            "weights": encoder.weights_digest(),
            "grid": encoder.enc_image_size,
            "limits": [RANK, MAX_TRAIN, MAX_VAL, FALSE_ALARMS],
        },
        sort_keys=True,
    )


@torch.no_grad()
def _split_features(net, encoder, data_folder, data_name, split, limit, device, progress):
    """{"features": (n, C) mean encoder features, "pixels": (n, 11) image statistics} of at most ``limit`` images
    of ``split``, evenly spread. The features are read from the split's feature cache when it holds these images
    for this encoder, else encoded by ``net`` (``encoder``'s folded copy)."""
    from captioning.data.features import _check, cache_key, cache_path, encode_pixels
    from captioning.datasets import split_paths

    images_path = split_paths(data_folder, data_name, split)[0]
    cache = cache_path(os.path.join(data_folder, "features"), data_name, split, encoder)
    cached = _check(cache, cache_key(images_path, encoder)) is None
    feats, stats = [], []
    with h5py.File(images_path, "r") as f, h5py.File(cache if cached else images_path, "r") as c:
        images = f["images"]
        n = images.shape[0]
        picked = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
        what = f"familiarity: {'reading' if cached else 'encoding'} {len(picked)} {split} images"
        for lo in tqdm(range(0, len(picked), BATCH), desc=what, disable=not progress or cached):
            rows = picked[lo : lo + BATCH]
            pixels = images[rows]
            fmap = torch.from_numpy(c["features"][rows]).to(device) if cached else encode_pixels(net, pixels, device)
            feats.append(mean_features(encoder.pool(fmap.float())))
            stats.append(image_statistics(pixels))
    if not feats:
        return {"features": torch.zeros(0, encoder.encoder_dim, dtype=torch.float64), "pixels": torch.zeros(0, 11)}
    return {"features": torch.cat(feats), "pixels": torch.cat(stats)}
