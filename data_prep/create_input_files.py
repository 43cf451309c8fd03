"""Create the ten input files (HDF5 images, encoded captions, caption lengths, word map) from a Karpathy JSON.

The course's ``create_input_files.py``; the work is done by ``captioning.data.prepare.create_input_files``, which
``python -m captioning prepare`` calls too.  Example::

    python data_prep/create_input_files.py --dataset coco --karpathy-json coco2014/dataset_coco.json \\
        --image-folder coco2014/ --output-folder work_dir/coco/
"""

from __future__ import annotations

import argparse
import sys

from captioning.data.prepare import create_input_files
from captioning.internals.errors import KitError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=["coco", "flickr8k", "flickr30k", "shapes"])
    p.add_argument("--karpathy-json", required=True, help="e.g. dataset_coco.json from caption_datasets.zip")
    p.add_argument("--image-folder", required=True, help="folder the JSON's filepath/filename entries are under")
    p.add_argument("--output-folder", required=True)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--min-word-freq", type=int, default=5, help="keep words seen more than this many times")
    p.add_argument("--max-len", type=int, default=50, help="drop captions longer than this many tokens")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-missing", action="store_true", help="skip (and report) images whose file is missing")
    p.add_argument("--workers", type=int, default=None, help="processes for decoding/resizing (default: all cores)")
    a = p.parse_args(argv)
    try:
        summary = create_input_files(
            dataset=a.dataset,
            karpathy_json_path=a.karpathy_json,
            image_folder=a.image_folder,
            captions_per_image=a.captions_per_image,
            min_word_freq=a.min_word_freq,
            output_folder=a.output_folder,
            max_len=a.max_len,
            image_size=a.image_size,
            seed=a.seed,
            skip_missing=a.skip_missing,
            workers=a.workers,
        )
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
