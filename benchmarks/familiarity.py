"""How well ``caption``'s warning (``captioning/evaluation/familiarity.py``) separates the training data's images
from others, and what it costs.

    python benchmarks/familiarity.py --checkpoint RUN/BEST_checkpoint_Attention_shapes_….pth.tar [--threads N]

For the checkpoint's data: the false-alarm rate on VAL (the images that set the threshold) and on TEST (images
the threshold never saw), the largest TEST score, and the scores of images unlike the data: skimage's photos
(astronaut, coffee, chelsea, camera), uniform noise, a saturated colour gradient and a plain mid-grey image.
Then the time to caption --n TEST images with the check and without it (the statistics already stored: the
check's steady cost), and the one-time cost of computing the statistics (from the feature cache when it is
there, else by encoding the images).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import THREADS_HELP, load_note, setup, table  # noqa: E402

from captioning.checkpoints import data_folder_of, load_checkpoint  # noqa: E402
from captioning.evaluation import familiarity  # noqa: E402
from captioning.evaluation.evaluate import caption_images  # noqa: E402
from captioning.solver import models_from_checkpoint  # noqa: E402


def odd_images(folder):
    import skimage.data as sd
    from PIL import Image

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 1, 256), np.linspace(0, 1, 256))
    images = {
        "astronaut": sd.astronaut(),
        "coffee": sd.coffee(),
        "chelsea": sd.chelsea(),
        "camera (grey)": sd.camera(),
        "noise": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "gradient": (np.stack([x, 0.3 + 0.5 * y, 1 - x], -1) * 255).astype(np.uint8),
        "plain grey": np.full((256, 256, 3), 128, np.uint8),
    }
    paths = {}
    for name, pixels in images.items():
        paths[name] = os.path.join(folder, name.split()[0] + ".png")
        Image.fromarray(pixels).save(paths[name])
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=10, help="TEST images captioned for the timing")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    a = p.parse_args()
    setup(a.threads, "familiarity: false alarms, separation, cost")
    ckpt = load_checkpoint(a.checkpoint)
    encoder, _, _, cfg = models_from_checkpoint(ckpt, "cpu", a.checkpoint)
    del ckpt
    data, name = data_folder_of(cfg, a.checkpoint), cfg["data_name"]
    stored = glob.glob(os.path.join(data, "features", f"FAMILIARITY_{name}_*.pt"))
    t = time.perf_counter()
    fam = familiarity.load_or_fit(encoder, data, name, progress=False)
    first = time.perf_counter() - t
    print(f"statistics: {'loaded' if stored else 'computed'} in {first:.1f} s ({fam.n_train} TRAIN images, "
          f"{len(fam.val_scores)} VAL images)")  # fmt: skip
    net = encoder.for_inference()
    test = fam.score(familiarity._split_features(net, encoder, data, name, "TEST", 10**9, "cpu", False))
    val = fam.val_scores
    print(f"threshold {fam.threshold:.3g} (the VAL scores' own 99th percentile: {np.percentile(val, 99):.3g})")
    rows = [
        ["VAL", len(val), f"{(val > fam.threshold).double().mean():.2%}", f"{val.max():.3g}"],
        ["TEST", len(test), f"{(test > fam.threshold).double().mean():.2%}", f"{test.max():.3g}"],
    ]
    print(table(["split", "images", "flagged (false alarms)", "largest score"], rows))
    print()
    with tempfile.TemporaryDirectory() as tmp:
        paths = odd_images(tmp)
        res = caption_images(a.checkpoint, list(paths.values()), beam_size=1)
        rows = [
            [n, f"{r['familiarity']['score']:.3g}", f"{r['familiarity']['score'] / fam.threshold:.2f}",
             "yes" if r["familiarity"]["unfamiliar"] else "NO", " ".join(r["words"])]
            for n, r in zip(paths, res)
        ]  # fmt: skip
        print(table(["image", "score", "× threshold", "flagged", "caption (greedy)"], rows, list("<>>><")))
    print()
    images = sorted(glob.glob(os.path.join(data, "*_raw", "images", "test_*")))[: a.n]
    if images:
        times = {"with the check": [], "without": []}
        real = familiarity.for_checkpoint
        for _ in range(3):  # interleaved: the machine's load changes both sides alike
            for side in times:
                familiarity.for_checkpoint = real if side == "with the check" else (lambda *x, **k: (None, None))
                t = time.perf_counter()
                caption_images(a.checkpoint, images, beam_size=5)
                times[side].append(time.perf_counter() - t)
        familiarity.for_checkpoint = real
        rows = [[k, f"{min(v):.2f} s", f"{np.median(v):.2f} s"] for k, v in times.items()]
        print(f"caption_images on {len(images)} TEST image files, beam 5 (3 runs each, interleaved):")
        print(table(["", "fastest", "median"], rows))
    print(load_note())
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
