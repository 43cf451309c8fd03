"""The feature cache's batch size on the CPU: the same cache built with B images per encoder pass for each B given
(default 8 and 32), each in its own process (start to exit): wall time and peak RSS side by side. Random
ResNet-101, 256 px, the shapes data (generated and prepared into the work folder on first use).

    .venv/bin/python benchmarks/cache_batch.py [--batches 8 32] [--images 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load_note, timed  # noqa: E402

NAME = "shapes_5_cap_per_img_5_min_word_freq"
BUILD = """
import sys, torch
from captioning.encoder import Encoder
from captioning.data.features import build_feature_cache
torch.manual_seed(0)
enc = Encoder(14, weights=None, arch="resnet101")
build_feature_cache(enc, sys.argv[1], sys.argv[2], "TRAIN", cache_folder=sys.argv[3], batch_size=int(sys.argv[4]),
                    progress=False)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--images", type=int, default=200, help="TRAIN images to encode")
    ap.add_argument("--work")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="cache-batch-"))
    data = work / "data"
    py = sys.executable
    print(f"$ {' '.join(sys.argv)}\nload average at start {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not (data / f"TRAIN_IMAGES_{NAME}.hdf5").exists():
        subprocess.run(
            [
                py,
                "-m",
                "captioning",
                "shapes",
                "--out",
                str(work / "raw"),
                "--n-train",
                str(a.images),
                "--n-val",
                "10",
                "--n-test",
                "10",
                "--image-size",
                "256",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                py,
                "-m",
                "captioning",
                "prepare",
                "--dataset",
                "shapes",
                "--karpathy-json",
                str(work / "raw" / "dataset_shapes.json"),
                "--image-folder",
                str(work / "raw"),
                "--output-folder",
                str(data),
                "--image-size",
                "256",
            ],
            check=True,
            capture_output=True,
        )
    print("\n| images per pass | wall s | images/s | peak RSS MB |\n|---|---|---|---|")
    for b in a.batches:
        cache = work / f"cache_{b}"
        shutil.rmtree(cache, ignore_errors=True)  # a cache left by an earlier run would be found, not built
        wall, rss = timed(
            [py, "-c", BUILD, str(data), NAME, str(cache), str(b)], work / f"cache_{b}.log", cwd=HERE.parent
        )
        print(f"| {b} | {wall:.1f} | {a.images / wall:.1f} | {rss:.0f} |")
    print("\n(wall includes start-up: importing torch and building the random ResNet-101, the same for each)")
    print(load_note())


if __name__ == "__main__":
    main()
