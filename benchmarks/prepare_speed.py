"""How much the worker processes speed up ``prepare``: the same shapes images prepared with all cores and with
one process (the in-process loop), side by side.

    python benchmarks/prepare_speed.py [--n 400] [--image-size 256] [--prepare-size 256]

Timings include everything ``create_input_files`` does (JSON, checks, HDF5 writing), so the ratio is what a user
sees, not the decoding speed-up alone.  Real COCO images (640x480 JPEG, resized) are heavier to decode than these,
which favours the parallel path further.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from captioning.data.prepare import create_input_files
from captioning.data.shapes import generate_shapes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="images (80%% train, 10%% val, 10%% test)")
    p.add_argument("--image-size", type=int, default=256, help="side of the generated images")
    p.add_argument("--prepare-size", type=int, default=256, help="side of the prepared images")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest counts")
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_val = n_test = max(1, a.n // 10)
        json_path = generate_shapes(
            tmp / "raw", n_train=a.n - n_val - n_test, n_val=n_val, n_test=n_test, image_size=a.image_size, seed=0
        )
        # Read every file once so that neither setting pays for a cold page cache.
        for f in (tmp / "raw" / "images").iterdir():
            f.read_bytes()
        best = {}
        for workers in (cores, 1):
            for r in range(a.repeats):
                t0 = time.perf_counter()
                create_input_files(
                    "shapes",
                    json_path,
                    tmp / "raw",
                    min_word_freq=1,
                    image_size=a.prepare_size,
                    output_folder=tmp / f"out{workers}",
                    workers=workers,
                )
                best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - t0)

    print(f"\nprepare of {a.n} shapes images, {a.image_size} px -> {a.prepare_size} px, best of {a.repeats}")
    print(f"{'workers':>8} {'seconds':>8} {'images/s':>9}")
    for workers in (cores, 1):
        print(f"{workers:>8} {best[workers]:>8.2f} {a.n / best[workers]:>9.1f}")
    print(f"speed-up with {cores} workers: {best[1] / best[cores]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
