"""COCO scale, measured on a COCO-sized synthetic data set (``coco_synth.py``) and projected to COCO (Karpathy
split: 123,287 images, 113,287 of them TRAIN, ~566k training captions).

1. ``prepare`` on N images (default 20,000) with 1 and with 2 workers, each a separate process: images/s, peak RSS
   (and peak RSS on N/10 images: flat means it does not grow with the data), the files' size per image;
2. the feature cache (random ResNet-101, 256 px, fp16 8×8×2048 before pooling) and one epoch at course sizes
   (embed/attention/decoder 512, batch 32 captions) on a subset of S images (default 2,000; min_word_freq 1, so
   that its word map comes near COCO's size):
   cache seconds and bytes per image, training captions per second with the cache;
3. the projections to COCO: time (this CPU) and disk, and whether images + cache fit a 64 GB disk.

    .venv/bin/python benchmarks/coco_scale.py [--images 20000] [--subset 2000] [--work DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load_note, setup, timed  # noqa: E402
from coco_synth import KARPATHY_TEST, KARPATHY_TOTAL, KARPATHY_VAL, generate  # noqa: E402

PY = sys.executable
COCO_TRAIN = KARPATHY_TOTAL - KARPATHY_VAL - KARPATHY_TEST
COCO_CAPTIONS = COCO_TRAIN * 5
DISK_GB = 64
NAME = "coco_5_cap_per_img_5_min_word_freq"


def prepare(json_path, images, out, workers, log, min_word_freq=5):
    cmd = [
        PY,
        "-m",
        "captioning",
        "prepare",
        "--dataset",
        "coco",
        "--karpathy-json",
        str(json_path),
        "--image-folder",
        str(images),
        "--output-folder",
        str(out),
        "--image-size",
        "256",
        "--workers",
        str(workers),
        "--min-word-freq",
        str(min_word_freq),
    ]
    return timed(cmd, log, cwd=HERE.parent)


def subset_json(json_path, n, dest):
    """The first images of each split, ``n`` in all, in the whole set's proportions."""
    data = json.loads(Path(json_path).read_text())
    by_split = {}
    for rec in data["images"]:
        by_split.setdefault(rec["split"], []).append(rec)
    total = len(data["images"])
    data["images"] = [rec for recs in by_split.values() for rec in recs[: max(1, round(n * len(recs) / total))]]
    dest.write_text(json.dumps(data))
    return dest


def folder_bytes(folder, pattern):
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))


def measure_prepare(work, json_path, n):
    rows = {}
    for workers in (1, 2):
        out = work / f"prepared_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = prepare(json_path, work / "raw", out, workers, work / f"prepare_w{workers}.log")
        rows[workers] = {
            "seconds": wall,
            "images_per_s": n / wall,
            "peak_mb": rss,
            "bytes": folder_bytes(out, "*IMAGES*.hdf5") + folder_bytes(out, "*.json"),
        }
        if workers == 1:
            shutil.rmtree(out)  # disk: keep one prepared copy
    small = work / "prepared_small"
    shutil.rmtree(small, ignore_errors=True)
    _, rss_small = prepare(
        subset_json(json_path, n // 10, work / "small.json"), work / "raw", small, 2, work / "prepare_small.log"
    )
    shutil.rmtree(small)
    rows["small_peak_mb"] = rss_small
    return rows


def measure_cache_and_epoch(work, json_path, subset):
    from captioning.config import make_cfg
    from captioning.data.features import build_feature_cache
    from captioning.solver import build_encoder, fit

    # min_word_freq 1: the subset's word map then comes near COCO's size (the output layer's cost grows with it)
    name = NAME.replace("_5_min_word_freq", "_1_min_word_freq")
    data = work / "prepared_subset"
    if not (data / f"TRAIN_IMAGES_{name}.hdf5").exists():
        prepare(
            subset_json(json_path, subset, work / "subset.json"),
            work / "raw",
            data,
            2,
            work / "prepare_subset.log",
            min_word_freq=1,
        )
    cfg = make_cfg(
        data_folder=str(data),
        data_name=name,
        encoder="resnet101",
        encoder_weights=None,
        embed_dim=512,
        attention_dim=512,
        decoder_dim=512,
        dropout=0.5,
        batch_size=32,
        epochs=1,
        output_dir=str(work / "train"),
        max_val_images=50,
        progress=False,
    )
    shutil.rmtree(data / "features", ignore_errors=True)
    t0 = time.monotonic()
    encoder = build_encoder(cfg, progress=False)
    recal = time.monotonic() - t0
    t0 = time.monotonic()
    path = build_feature_cache(encoder, str(data), name, "TRAIN", progress=False)
    cache_s = time.monotonic() - t0
    from captioning.datasets import ImageCaptions, load_word_map

    n_train = len(ImageCaptions(str(data), name, "TRAIN"))
    res = fit(cfg, progress=False)
    row = res["history"][-1]
    return {
        "train_images": n_train,
        "vocabulary": len(load_word_map(str(data), name)),
        "recalibration_s": recal,
        "cache_s_per_image": cache_s / n_train,
        "cache_bytes_per_image": os.path.getsize(path) / n_train,
        "captions_per_s": row["train_captions_per_s"],
        "epoch_captions": row["train_captions"],
        "epoch_s": row["train_seconds"],
    }


def report(n, prep, ce):
    w2 = prep[2]
    img_bytes = w2["bytes"] / n
    images_gb = img_bytes * KARPATHY_TOTAL / 1e9
    cache_gb = ce["cache_bytes_per_image"] * (COCO_TRAIN + KARPATHY_VAL) / 1e9
    print("\n| prepare, N images | 1 worker | 2 workers |\n|---|---|---|")
    print(f"| wall | {prep[1]['seconds']:.0f} s | {w2['seconds']:.0f} s |")
    print(f"| images/s | {prep[1]['images_per_s']:.0f} | {w2['images_per_s']:.0f} |")
    print(
        f"| peak RSS | {prep[1]['peak_mb']:.0f} MB | {w2['peak_mb']:.0f} MB (N/10 images: "
        f"{prep['small_peak_mb']:.0f} MB) |"
    )
    print(
        f"| projected to {KARPATHY_TOTAL:,} images | {KARPATHY_TOTAL / prep[1]['images_per_s'] / 60:.1f} min | "
        f"{KARPATHY_TOTAL / w2['images_per_s'] / 60:.1f} min |"
    )
    print("\n| at COCO size | measured per image | projected |\n|---|---|---|")
    print(f"| prepared files (256 px uint8 + captions) | {img_bytes / 1e3:.0f} KB | {images_gb:.1f} GB |")
    print(
        f"| feature cache (fp16 8×8×2048, TRAIN + VAL) | {ce['cache_bytes_per_image'] / 1e3:.0f} KB | "
        f"{cache_gb:.1f} GB |"
    )
    print(
        f"| images + cache vs a {DISK_GB} GB disk | | {images_gb + cache_gb:.1f} GB "
        f"({'fits' if images_gb + cache_gb < DISK_GB * 0.95 else 'does NOT fit'}; the raw COCO JPEGs, ~19 GB, "
        f"must live elsewhere or be deleted after prepare) |"
    )
    print(
        f"| feature cache build, this CPU | {ce['cache_s_per_image']:.2f} s | "
        f"{ce['cache_s_per_image'] * (COCO_TRAIN + KARPATHY_VAL) / 3600:.1f} h |"
    )
    print(f"| BatchNorm recalibration (once per data folder) | | {ce['recalibration_s']:.0f} s |")
    print(
        f"| training epoch with the cache, this CPU ({ce['epoch_captions']} captions measured, word map of "
        f"{ce['vocabulary']:,}; COCO's: 9,490) | "
        f"{ce['captions_per_s']:.1f} captions/s | {COCO_CAPTIONS / ce['captions_per_s'] / 3600:.1f} h |"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--subset", type=int, default=2_000, help="images for the cache and the epoch")
    ap.add_argument("--work", default="outputs/coco_scale")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    setup(a.threads, "COCO scale (synthetic)")
    work = Path(a.work)
    json_path = work / "raw" / "dataset_coco.json"
    if not json_path.exists() or len(json.loads(json_path.read_text())["images"]) != a.images:
        t0 = time.monotonic()
        generate(work / "raw", a.images, workers=2)
        print(f"generated {a.images} JPEGs in {time.monotonic() - t0:.0f} s")
    prep = measure_prepare(work, json_path, a.images)
    wm = json.loads(next((work / "prepared_w2").glob("WORDMAP_*.json")).read_text())
    print(f"word map of the {a.images:,} images (min_word_freq 5): {len(wm):,} words (COCO's: 9,490)")
    ce = measure_cache_and_epoch(work, json_path, a.subset)
    print(json.dumps({"prepare": prep, "cache_and_epoch": ce}, default=str))
    report(a.images, prep, ce)
    print("\n" + load_note())


if __name__ == "__main__":
    main()
