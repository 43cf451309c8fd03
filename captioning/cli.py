"""``python -m captioning SUBCOMMAND`` — the command line. Every subcommand is a thin wrapper over a library
function that the notebooks call too; this file only parses arguments and reports KitError messages."""

from __future__ import annotations

import argparse
import os
import sys

from captioning.internals.arguments import AT_LEAST_1, FINITE_AT_LEAST_0, checked
from captioning.internals.errors import KitError


def _cmd_shapes(a):
    from captioning.data.shapes import generate_shapes

    path = generate_shapes(
        a.out, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, image_size=a.image_size, seed=a.seed
    )
    print(f"wrote {path}")


def _cmd_prepare(a):
    from captioning.data.prepare import create_input_files

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
    for k, v in summary.items():
        print(f"{k}: {v}")


def parse_overrides(pairs):
    """``key=value`` words → dict; values are Python literals when they parse as one (``1e-3``, ``None``,
    ``True``)."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, value = pair.lstrip("-").partition("=")
        if not sep:
            raise KitError(f"'{pair}' is not key=value (e.g. epochs=3 or decoder_lr=4e-4)")
        try:
            out[key.replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.replace("-", "_")] = value
    return out


def _cmd_train(a):
    from captioning.solver import fit

    res = fit(parse_overrides(a.overrides))
    print(f"best validation BLEU-4 {res['best_bleu4']:.4f}; best checkpoint {res['best_checkpoint']}")


def _cmd_test(a):
    from captioning.evaluation.evaluate import evaluate
    from captioning.evaluation.outputs import check_file, write_json

    out = a.out or a.checkpoint.replace(".pth.tar", "") + f".{a.split.lower()}.beam{a.beam_size}.json"
    # the place is checked now, and the file written only after the scores are printed: neither an hour of beam
    # search nor its scores are lost to a folder that cannot take the file
    check_file(
        out, "--out", None if a.out else f"the scores file {os.path.basename(out)} (by default beside the checkpoint)"
    )
    r = evaluate(
        a.checkpoint,
        a.split,
        a.beam_size,
        data_folder=a.data_folder,
        data_name=a.data_name,
        device=a.device,
        max_images=a.max_images,
        length_penalty=a.length_penalty,
        coco=a.coco,
    )
    print(
        f"{r['split']} split, {r['n_images']} images, beam {r['beam_size']} (length penalty "
        f"{r['length_penalty']:g}), decoder {r['decoder']}"
    )
    for k in ("bleu1", "bleu2", "bleu3", "bleu4"):
        print(f"{k.upper().replace('BLEU', 'BLEU-')}: {r[k]:.4f}")
    if r.get("coco"):
        c = r["coco"]
        meteor = "skipped (no Java)" if c["meteor"] is None else f"{c['meteor']:.4f}"
        print(
            f"COCO toolkit ({c['tokenizer']} tokenizer): BLEU-4 {c['bleu4']:.4f}  METEOR {meteor}  "
            f"ROUGE-L {c['rouge_l']:.4f}  CIDEr-D {c['cider_d']:.4f}"
        )
    if r.get("grounding") and r["grounding"]["all"] is not None:
        g = r["grounding"]
        m = g.get("misses") or {}
        print(
            f"pointing game: {g['all']:.3f} of {g['n_words']} shape/colour words (chance {g['chance']:.3f}); "
            f"missed peaks: {m.get('other_object', 0)} on an object the word does not name, "
            f"{m.get('background', 0)} on no object ({m.get('next_to_named', 0)} of them next to a named object)"
        )
        names = {
            "only_object": "only kind of object",
            "first_named": "first named of several",
            "named_later": "named later",
        }
        for title, split in (("by position", g.get("by_position")), ("by size of the named object", g.get("by_size"))):
            if split:
                print(
                    f"  {title}: "
                    + ", ".join(
                        f"{names.get(k, k)} {'—' if v['rate'] is None else format(v['rate'], '.2f')} ({v['n']} words)"
                        for k, v in split.items()
                    )
                )
    write_json(r, out, "--out", done="The scores are printed above. ")
    print(f"wrote {out}")


def figure_names(images):
    """A figure name per image path, ``{stem}.caption.png``, unique among ``images``: images that share a stem
    (``a/img.jpg``, ``b/img.jpg``, ``a/img.png``) are named by their path from the folder they have in common
    (``a_img.jpg.caption.png``, …) so that no figure overwrites another. The same path twice gets one name."""
    paths = list(dict.fromkeys(os.path.abspath(os.fspath(p)) for p in images))
    stems = {}
    for p in paths:
        stems.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
    names = {}
    for stem, group in stems.items():
        if len(group) == 1:
            names[group[0]] = f"{stem}.caption.png"
            continue
        common = os.path.commonpath([os.path.dirname(p) for p in group])
        for p in group:
            names[p] = os.path.relpath(p, common).replace(os.sep, "_") + ".caption.png"
    taken = set()
    for p in paths:  # a name made of a path may still equal another image's plain name: number it
        name, k = names[p], 2
        while name in taken:
            name, k = names[p].replace(".caption.png", f"-{k}.caption.png"), k + 1
        names[p] = name
        taken.add(name)
    return {os.fspath(p): names[os.path.abspath(os.fspath(p))] for p in images}


def _cmd_caption(a):
    import matplotlib

    matplotlib.use("Agg")
    from captioning.evaluation.evaluate import iter_captions
    from captioning.evaluation.figures import caption_figure
    from captioning.evaluation.outputs import check_folder, save_figure

    check_folder(a.out, "--out", "the caption figures")  # before the checkpoint is loaded and any image captioned
    names = figure_names(a.images)
    shared = [p for p in a.images if names[p] != os.path.splitext(os.path.basename(p))[0] + ".caption.png"]
    if shared:
        print(
            f"note: {len(shared)} images share a file name; their figures are named by their folders and "
            f"extensions (each figure is named below)",
            file=sys.stderr,
            flush=True,
        )
    failed, unwritten = [], []
    for r in iter_captions(
        a.checkpoint, a.images, beam_size=a.beam_size, device=a.device, length_penalty=a.length_penalty
    ):
        if "error" in r:  # reported now, the other images are still captioned
            failed.append(r["path"])
            print(f"error: {r['error']}", file=sys.stderr, flush=True)
            continue
        png = os.path.join(a.out, names[r["path"]])
        try:
            where = save_figure(caption_figure(r), png)
        except KitError as e:  # e.g. a full disk: the caption is still printed, the other images still captioned
            if not unwritten:
                print(f"error: {e}", file=sys.stderr, flush=True)
            unwritten.append(png)
            where = "figure not written"
        print(f"{r['path']}: {' '.join(r['words'])}   [{where}]", flush=True)
        if r.get("warning"):  # an image far from the training data: its caption is a guess
            print(f"  warning: {r['warning']}", flush=True)
        if r["decoder"] == "adaptive":  # last attention column = β, the sentinel's share (1: the image unused)
            print("  β per word: " + " ".join(f"{w} {float(row[-1]):.2f}" for w, row in zip(r["words"], r["alphas"])))
    problems = []
    if failed:
        problems.append(
            f"{len(failed)} of {len(a.images)} images could not be captioned (each is named above): "
            + ", ".join(failed[:5])
            + (" …" if len(failed) > 5 else "")
        )
    if unwritten:
        problems.append(
            f"{len(unwritten)} figure(s) could not be written into {a.out} (the first error is above; "
            f"their captions are printed): "
            + ", ".join(unwritten[:5])
            + (" …" if len(unwritten) > 5 else "")
            + ". Free some space or choose another --out, and "
            "caption those images again"
        )
    if problems:
        raise KitError("; ".join(problems))


def _device(text):
    from captioning.config import RULES

    if not RULES["device"][0](text):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: it must be {RULES['device'][1]}")
    return text


DESCRIPTION = """Image captioning: make the data, train a decoder, test it with beam search, caption images.
Run `python -m captioning COMMAND --help` for the options of one command."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m captioning", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_model_commands(sub)
    # subcommands that live with their feature: each module has register(subparsers)
    from captioning import check
    from captioning.data import pretrain

    for module in (pretrain, check):
        module.register(sub)
    return p


def _add_decoding_options(s):
    s.add_argument("--beam-size", type=checked(AT_LEAST_1), default=5)
    s.add_argument(
        "--length-penalty",
        type=checked(FINITE_AT_LEAST_0, float),
        default=None,
        help="rank finished beams by log-prob / length**this (0: the course's summed log-prob); "
        "default: the checkpoint's cfg length_penalty (the notebooks train with 1)",
    )


def _add_data_commands(sub):
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


def _add_model_commands(sub):
    s = sub.add_parser(
        "train",
        help="train a decoder; cfg keys as key=value (see captioning/config.py DEFAULT_CFG)",
        description="e.g. python -m captioning train data_folder=data/coco "
        "data_name=coco_5_cap_per_img_5_min_word_freq attention=True device=cuda",
    )
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("test", help="beam-search a split with a checkpoint and print BLEU-1..4 (writes JSON)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--split", default="TEST", choices=["TRAIN", "VAL", "TEST"])
    _add_decoding_options(s)
    s.add_argument("--data-folder", default=None, help="default: the one the checkpoint was trained on")
    s.add_argument("--data-name", default=None)
    s.add_argument("--device", type=_device, default="cpu")
    s.add_argument("--max-images", type=checked(AT_LEAST_1), default=None)
    s.add_argument("--out", default=None, help="JSON file for the scores and captions")
    s.add_argument(
        "--coco",
        action="store_true",
        help="also the COCO toolkit's BLEU, METEOR, ROUGE-L and CIDEr-D (adds ~10 s at shapes sizes)",
    )
    s.set_defaults(func=_cmd_test)

    s = sub.add_parser("caption", help="caption image files; saves a figure per image (attention per word)")
    s.add_argument("images", nargs="+")
    s.add_argument("--checkpoint", required=True)
    _add_decoding_options(s)
    s.add_argument("--device", type=_device, default="cpu")
    s.add_argument("--out", default="outputs/captions", help="folder for the PNG figures")
    s.set_defaults(func=_cmd_caption)


def parse_command_line(parser, argv=None):
    """``parser.parse_args``, except that ``key=value`` words may stand anywhere for a command that takes them
    (argparse alone refuses them after an option when the command also has another positional argument)."""
    args, rest = parser.parse_known_args(argv)
    settings = [w for w in rest if "=" in w and not w.startswith("-")]
    if hasattr(args, "overrides") and settings:
        args.overrides = list(args.overrides) + settings
        rest = [w for w in rest if w not in settings]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv=None) -> int:
    from captioning.internals import threads

    threads.start()  # the idle CPUs are counted over the start-up (see run_command)
    threads.prefer_short_spin()  # before torch loads
    return run_command(parse_command_line(build_parser(), argv))


COMPUTE = {"train", "test", "caption", "pretrain-encoder"}  # the commands that run models


def run_command(args) -> int:
    """Run a parsed subcommand (``args.func``); a KitError becomes "error: …" on stderr and exit status 2."""
    try:
        if args.command in COMPUTE:
            from captioning.internals.threads import set_threads

            set_threads(note=lambda line: print(line, file=sys.stderr))
        args.func(args)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from captioning.internals.threads import stop

        stop()  # adapting the threads ends with the command
    return 0
