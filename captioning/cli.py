"""``python -m captioning SUBCOMMAND`` — the command line. Every subcommand is a thin wrapper over a library
function that the notebooks call too; this file only parses arguments and reports KitError messages."""
from __future__ import annotations

import argparse
import sys

from captioning.errors import KitError


def _cmd_shapes(a):
    from captioning.shapes import generate_shapes

    path = generate_shapes(a.out, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test,
                           image_size=a.image_size, seed=a.seed)
    print(f"wrote {path}")


def _cmd_prepare(a):
    from captioning.prepare import create_input_files

    summary = create_input_files(
        dataset=a.dataset, karpathy_json_path=a.karpathy_json, image_folder=a.image_folder,
        captions_per_image=a.captions_per_image, min_word_freq=a.min_word_freq,
        output_folder=a.output_folder, max_len=a.max_len, image_size=a.image_size, seed=a.seed,
        skip_missing=a.skip_missing, workers=a.workers)
    for k, v in summary.items():
        print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("shapes", help="generate the built-in shapes caption dataset (Karpathy-format JSON + images)")
    s.add_argument("--out", required=True, help="folder to write dataset_shapes.json and images/ into")
    s.add_argument("--n-train", type=int, default=1000)
    s.add_argument("--n-val", type=int, default=100)
    s.add_argument("--n-test", type=int, default=100)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_shapes)

    s = sub.add_parser("prepare", help="Karpathy JSON + images -> the ten HDF5/JSON input files")
    s.add_argument("--dataset", required=True, choices=["coco", "flickr8k", "flickr30k", "shapes"])
    s.add_argument("--karpathy-json", required=True)
    s.add_argument("--image-folder", required=True)
    s.add_argument("--output-folder", required=True)
    s.add_argument("--captions-per-image", type=int, default=5)
    s.add_argument("--min-word-freq", type=int, default=5)
    s.add_argument("--max-len", type=int, default=50)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--skip-missing", action="store_true", help="skip (and report) images whose file is missing")
    s.add_argument("--workers", type=int, default=None, help="processes for decoding/resizing (default: all cores)")
    s.set_defaults(func=_cmd_prepare)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
