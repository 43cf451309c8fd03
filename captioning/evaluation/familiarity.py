"""Does an image look like the training data? A caption model answers every image with the words it knows: the
shapes model calls the astronaut photo "a yellow star with a big red star …" with the same confidence as a real
shapes image. ``caption`` uses this module to say when an image is far from what the model was trained on.

The measure: the encoder's mean feature over its grid, (C,), compared with those of the TRAIN images through a
Gaussian fitted to them — its mean, its ``RANK`` main directions with their variances, and one variance for all
the other directions (probabilistic PCA; a full C×C covariance cannot be estimated from a few hundred images).
The score is the Mahalanobis distance under that Gaussian: how many standard deviations the image lies from the
training images, counting directions in which they hardly vary at all (where photos fall) as far.

The threshold comes from images the fit has not seen: the VAL images' scores. Their logarithms are close to
normal, and the threshold is the 99th percentile of the normal fitted to them: 1 % of images like the training
data are flagged. A fitted percentile, not the 99th of the scores themselves: with the tens of VAL images of small
data the empirical one is the largest score, and it scatters with the sample (docs/results.md).

The statistics are computed once per data folder and encoder from the feature cache when it is there (else the
images are encoded, at most ``MAX_TRAIN`` and ``MAX_VAL`` of them) and stored beside the cache
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

VERSION = 1
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
class Familiarity:
    """A Gaussian fitted to the TRAIN images' mean features and the threshold its VAL images set.

    mean (C,), components (R, C) orthonormal rows, variances (R,), residual_variance: the variance in every
    direction outside the components; val_scores (n_val,); threshold: score above which an image is flagged."""

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    residual_variance: float
    val_scores: torch.Tensor
    threshold: float
    n_train: int
    what: str

    def score(self, features):
        """features (B, C) mean encoder features → (B,) float64 Mahalanobis distances to the TRAIN images."""
        y = features.double().cpu() - self.mean
        inside = y @ self.components.T  # (B, R)
        outside = (y * y).sum(1) - (inside * inside).sum(1)
        return ((inside * inside / self.variances).sum(1) + outside.clamp(min=0) / self.residual_variance).sqrt()

    def judge(self, features):
        """features (B, C) → per image {"score", "threshold", "unfamiliar", "data", "warning"} (warning: the text
        to show, None when the image looks like the training data)."""
        rows = []
        for s in self.score(features).tolist():
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
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def warning(score, threshold, what):
    return (
        f"this image looks unlike the training data (score {score:.3g}; 99 % of images like the training data "
        f"score ≤ {threshold:.3g}): "
        f"the model only knows {what}; its caption is a guess"
    )


def describe_data(data_name):
    """What the images of ``data_name`` (``{dataset}_{n}_cap_per_img_…``) show, for the warning."""
    dataset = re.sub(r"_\d+_cap_per_img_.*$", "", data_name)
    return DATA.get(dataset.lower(), f"images like those of its '{dataset}' training data")


def mean_features(encoder_output):
    """encoder output (B, S, S, C) → (B, C) float64 on the CPU: the mean over the grid."""
    return encoder_output.mean(dim=(1, 2)).double().cpu()


def fit(train, val, what):
    """train (N, C), val (M, C) mean features → :class:`Familiarity`. Needs N ≥ 2 and M ≥ 2."""
    train, val = train.double(), val.double()
    n, c = train.shape
    mean = train.mean(0)
    x = train - mean
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    rank = min(RANK, n - 1, c - 1)
    variances = s[:rank] ** 2 / (n - 1)
    total = float((x * x).sum()) / (n - 1)
    # floors: images that are all alike (or a feature that never varies) must not divide by zero
    floor = max(total, 1e-12) * 1e-9
    residual = max((total - float(variances.sum())) / (c - rank), floor)
    fam = Familiarity(mean, vt[:rank].clone(), variances.clamp(min=floor), residual, torch.zeros(0), 0.0, n, what)
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
            return Familiarity(**saved["state"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        pass  # missing, stale or unreadable: computed again
    net = None if encoder.folded else encoder.for_inference()  # encoder unchanged: the copy shares its weights
    feats = [
        _split_features(net or encoder, encoder, data_folder, data_name, s, m, device, progress)
        for s, m in (("TRAIN", MAX_TRAIN), ("VAL", MAX_VAL))
    ]
    if min(len(f) for f in feats) < 2:
        raise KitError(f"the data in '{data_folder}' ({data_name}) has fewer than 2 TRAIN or VAL images")
    fam = fit(*feats, describe_data(data_name))
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
    """(n, C) mean features of at most ``limit`` images of ``split``, evenly spread: read from the split's feature
    cache when it holds these images for this encoder, else encoded by ``net`` (``encoder``'s folded copy)."""
    from captioning.data.features import _check, cache_key, cache_path, encode_pixels
    from captioning.datasets import split_paths

    images_path = split_paths(data_folder, data_name, split)[0]
    cache = cache_path(os.path.join(data_folder, "features"), data_name, split, encoder)
    cached = _check(cache, cache_key(images_path, encoder)) is None
    with h5py.File(cache if cached else images_path, "r") as f:
        rows = f["features" if cached else "images"]
        n = rows.shape[0]
        picked = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int))
        out = []
        what = f"familiarity: {'reading' if cached else 'encoding'} {len(picked)} {split} images"
        for lo in tqdm(range(0, len(picked), BATCH), desc=what, disable=not progress or cached):
            batch = rows[picked[lo : lo + BATCH]]
            fmap = torch.from_numpy(batch).float().to(device) if cached else encode_pixels(net, batch, device)
            out.append(mean_features(encoder.pool(fmap.float())))
    return torch.cat(out) if out else torch.zeros(0, encoder.encoder_dim, dtype=torch.float64)
