"""A COCO-sized synthetic data set in Karpathy's format, for measuring ``prepare``, the feature cache and an epoch
at COCO scale without COCO: photo-sized JPEGs (640×480, photo-like content: smooth colour fields, shapes, noise;
~100 KB each like COCO's), 5 captions per image of 8–15 words drawn from a Zipf-distributed vocabulary sized so
that ``min_word_freq`` 5 keeps about 10,000 words (COCO's word map: 9,490), Karpathy's split proportions (of
123,287 images: 5,000 val, 5,000 test, the rest train/restval) and COCO's folders (train2014/, val2014/).

    .venv/bin/python benchmarks/coco_synth.py --out DIR [--images 20000] [--workers 2] [--seed 0]

writes DIR/dataset_coco.json and DIR/train2014/, DIR/val2014/. Not a benchmark by itself (``coco_scale.py`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

KARPATHY_TOTAL, KARPATHY_VAL, KARPATHY_TEST = 123_287, 5_000, 5_000
WIDTH, HEIGHT = 640, 480


def vocabulary_size(n_images):
    """Distinct words to draw from: enough that min_word_freq 5 keeps ~10k words at COCO size, fewer when small."""
    return int(min(30_000, max(2_000, 30_000 * n_images / KARPATHY_TOTAL * 4)))


def captions(rng, n_words, k=5):
    ranks = np.arange(1, n_words + 1)
    p = 1.0 / ranks**1.1
    p /= p.sum()
    out = []
    for _ in range(k):
        words = rng.choice(n_words, size=int(rng.integers(8, 16)), p=p)
        tokens = [f"w{w}" for w in words]
        out.append({"tokens": tokens, "raw": " ".join(tokens).capitalize() + "."})
    return out


def draw(path, seed):
    """One photo-like JPEG: a smooth colour field, a few blurred shapes, sensor-like noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    img = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    for c in range(3):
        a, b, ph = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.3)]
        img[..., c] = 128 + 90 * np.sin(a * xx + ph) * np.cos(b * yy)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, WIDTH - 40)), int(rng.integers(0, HEIGHT - 40))
        x1, y1 = x0 + int(rng.integers(30, 300)), y0 + int(rng.integers(30, 250))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(pil.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    arr += rng.normal(0, 6, arr.shape)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def _draw_many(args):
    for path, seed in args:
        if not os.path.exists(path):
            draw(path, seed)
    return len(args)


def generate(out, n_images=20_000, workers=2, seed=0, progress=True):
    """Write the JSON and the JPEGs into ``out`` (existing JPEGs are kept); returns the JSON's path."""
    from tqdm.auto import tqdm

    out = Path(out)
    n_val = max(1, round(n_images * KARPATHY_VAL / KARPATHY_TOTAL))
    n_test = max(1, round(n_images * KARPATHY_TEST / KARPATHY_TOTAL))
    rng = np.random.default_rng(seed)
    n_words = vocabulary_size(n_images)
    images, jobs = [], []
    for i in range(n_images):
        split = "val" if i < n_val else "test" if i < n_val + n_test else ("restval" if i % 4 == 0 else "train")
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        name = f"COCO_{folder}_{i:012d}.jpg"
        images.append(
            {
                "filepath": folder,
                "filename": name,
                "split": split,
                "cocoid": i,
                "imgid": i,
                "sentences": captions(rng, n_words),
            }
        )
        jobs.append((str(out / folder / name), seed * 10_000_000 + i))
    for folder in ("train2014", "val2014"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    chunks = [jobs[i : i + 200] for i in range(0, len(jobs), 200)]
    with (
        ProcessPoolExecutor(workers) as ex,
        tqdm(total=n_images, desc="drawing JPEGs", unit="img", disable=not progress) as bar,
    ):
        for n in ex.map(_draw_many, chunks):
            bar.update(n)
    path = out / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(f"wrote {generate(a.out, a.images, a.workers, a.seed)}")


if __name__ == "__main__":
    main()
