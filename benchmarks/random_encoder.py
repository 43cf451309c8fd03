"""Does a random-weights ResNet-101 keep what the shapes captions talk about? The measurement behind
``Encoder._damp_residual_branches``, side by side with and without the damping.

    python benchmarks/random_encoder.py [--threads N] [--n 250] [--image-size 160] [--recal-images 64]
    python benchmarks/random_encoder.py --n 500          # the docstring's setting: 400 train / 100 test

A linear probe (ridge regression on standardised, spatially mean-pooled ResNet-101 output features, 2048 of them)
predicts, for each generated shapes image, which of the 5 colours are present and which of the 5 shapes are present
(10 yes/no attributes, multi-label). Train on the first 80 % of the images, test on the rest; λ is picked per
attribute and variant by 5-fold cross-validation on the training part from --lambdas (a large λ makes the probe
predict the training mean, i.e. fall back to the majority answer when the features carry nothing). Variants:

* majority  — the training set's majority answer for each attribute (the floor);
* γ = 1     — ``Encoder(5, weights=None)`` with every Bottleneck's ``bn3.weight`` set back to 1 (torchvision's
              init: each residual branch as strong as the skip path), then BatchNorm recalibration;
* damped    — the default ``Encoder(5, weights=None)`` (branches' last γ = 0.1), then the same recalibration.

Both encoders share all convolution weights (one is a copy of the other). Recalibration uses the first
--recal-images training images, like ``solver.build_encoder`` (which uses 128). The encoders run in channels-last
memory format (same numbers up to rounding, ~1.4x faster on this CPU) to keep the default run short.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar from generate_shapes in the output

import numpy as np  # noqa: E402
import torch
from _common import THREADS_HELP, load_note, setup, table

from captioning.data.images import load_image
from captioning.data.shapes import COLORS, SHAPES, generate_shapes
from captioning.datasets import normalize
from captioning.models import Encoder

ATTRIBUTES = [("colour", c) for c in COLORS] + [("shape", s) for s in SHAPES]


def load_data(folder, n, n_train, size):
    json_path = generate_shapes(folder, n_train=n_train, n_val=0, n_test=n - n_train, image_size=size, seed=0)
    records = json.loads(Path(json_path).read_text())["images"]
    images = np.stack([load_image(str(Path(folder) / r["filepath"] / r["filename"]), size)[0] for r in records])
    labels = np.array(
        [
            [any(o["color"] == v if k == "colour" else o["shape"] == v for o in r["objects"]) for k, v in ATTRIBUTES]
            for r in records
        ],
        dtype=np.float64,
    )
    train = np.array([r["split"] == "train" for r in records])
    return torch.from_numpy(images), labels, train


@torch.no_grad()
def features(encoder, images, recal, batch=32):
    """Recalibrate BatchNorm on ``images[:recal]``, then mean-pooled backbone output (N, 2048) in eval mode."""
    encoder = encoder.to(memory_format=torch.channels_last)
    prep = lambda x: normalize(x).contiguous(memory_format=torch.channels_last)  # noqa: E731
    encoder.recalibrate(prep(images[i : min(recal, i + batch)]) for i in range(0, recal, batch))
    encoder.eval()
    out = [encoder.backbone(prep(images[i : i + batch])).mean(dim=(2, 3)) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def ridge_fit(x, y, lam):
    """Dual-form ridge (n < d): W = Xᵀ (X Xᵀ + λI)⁻¹ (Y − ȳ); returns a predict function."""
    mu = y.mean(axis=0)
    alpha = np.linalg.solve(x @ x.T + lam * np.eye(len(x)), y - mu)
    w = x.T @ alpha
    return lambda z: z @ w + mu


def standardise(train, test):
    m, s = train.mean(axis=0), train.std(axis=0) + 1e-6
    return (train - m) / s, (test - m) / s


def accuracy(pred, y):
    return ((pred > 0.5) == (y > 0.5)).mean(axis=0)  # per attribute


def choose_lambdas(x, y, lambdas, folds=5):
    """Per attribute, the λ with the best 5-fold cross-validated accuracy on the training part (ties: larger λ)."""
    idx = np.arange(len(x))
    acc = np.zeros((len(lambdas), y.shape[1]))
    for f in range(folds):
        te = idx % folds == f
        xtr, xte = standardise(x[~te], x[te])
        for i, lam in enumerate(lambdas):
            acc[i] += accuracy(ridge_fit(xtr, y[~te], lam)(xte), y[te]) / folds
    best = [max(range(len(lambdas)), key=lambda i: (acc[i, j], i)) for j in range(y.shape[1])]
    return np.array([lambdas[i] for i in best]), acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--n", type=int, default=250, help="images: 80%% train, 20%% test")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--recal-images", type=int, default=64, help="training images for BatchNorm recalibration")
    p.add_argument(
        "--lambdas",
        default="30,100,300,1000,3000,10000",
        help="ridge λ candidates, picked per attribute by 5-fold CV on the training part",
    )
    a = p.parse_args(argv)
    setup(a.threads, "random ResNet-101 encoder: linear probe on shapes attributes, with and without damping")
    lambdas = [float(x) for x in a.lambdas.split(",")]
    n_train = int(round(0.8 * a.n))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        images, labels, train = load_data(tmp, a.n, n_train, a.image_size)
    size = a.image_size
    print(
        f"{a.n} shapes images of {size} px ({n_train} train / {a.n - n_train} test), 10 attributes; "
        f"recalibration on {min(a.recal_images, n_train)} training images; encoder grid {size // 32}x{size // 32}, "
        f"features mean-pooled to 2048",
        flush=True,
    )

    torch.manual_seed(0)
    damped = Encoder(size // 32, weights=None)
    plain = copy.deepcopy(damped)
    n_bn3 = 0
    for m in plain.resnet.modules():
        if hasattr(m, "bn3"):
            torch.nn.init.ones_(m.bn3.weight)
            n_bn3 += 1
    y_tr, y_te = labels[train], labels[~train]
    majority = (y_tr.mean(axis=0) > 0.5).astype(float)
    results = {"majority": ((majority[None, :] > 0.5) == (y_te > 0.5)).mean(axis=0)}
    chosen = {}
    for name, enc in (("γ = 1 (recalibration only)", plain), ("damped γ = 0.1 (default)", damped)):
        t = time.perf_counter()
        f = features(enc, images, min(a.recal_images, n_train))
        x_tr, x_te = f[train], f[~train]
        lams, cv = choose_lambdas(x_tr, y_tr, lambdas)
        xs_tr, xs_te = standardise(x_tr, x_te)
        preds = {lam: ridge_fit(xs_tr, y_tr, lam)(xs_te) for lam in set(lams)}
        pred = np.stack([preds[lam][:, j] for j, lam in enumerate(lams)], axis=1)
        results[name] = accuracy(pred, y_te)
        chosen[name] = lams
        spread = np.median(f.std(axis=0) / (np.abs(f.mean(axis=0)) + 1e-12))
        print(
            f"{name}: features in {time.perf_counter() - t:.0f} s; median over features of sd/|mean| across "
            f"images = {spread:.3g}; mean 5-fold CV accuracy on train by λ: "
            + ", ".join(f"{lam:g}: {v:.3f}" for lam, v in zip(lambdas, cv.mean(axis=1))),
            flush=True,
        )
        del enc

    names = list(results)
    rows = []
    for i, (kind, value) in enumerate(ATTRIBUTES):
        rows.append(
            [f"{kind} {value} (present in {100 * y_te[:, i].mean():.0f}% of test)"]
            + [f"{results[k][i]:.3f}" + (f" (λ {chosen[k][i]:g})" if k in chosen else "") for k in names]
        )
    for label, sl in (
        ("mean over colours", slice(0, 5)),
        ("mean over shapes", slice(5, 10)),
        ("mean over all 10", slice(0, 10)),
    ):
        rows.append([label] + [f"{results[k][sl].mean():.3f}" for k in names])
    print()
    print(
        f"test accuracy per attribute ({a.n - n_train} test images; {n_bn3} Bottleneck bn3 γ reset to 1 in the "
        f"γ = 1 variant)"
    )
    print(table(["attribute", "majority", *names[1:]], rows))
    print(f"total {time.perf_counter() - t0:.0f} s; {load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
