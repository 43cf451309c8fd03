"""The notebooks' helpers: what the cells of the four notebooks call.

The four notebooks in ``notebooks/`` are the students' interface and stay thin: a ``parameters`` cell of plain
literals (papermill can override them), a cell that derives everything else, then calls into ``captioning``:

* ``train1.ipynb`` — train the decoder without attention (Show and Tell);
* ``train2.ipynb`` — train the attention decoder (Show, Attend and Tell), or with ``decoder = "adaptive"`` the
  reference adaptive-attention decoder (Knowing When to Look);
* ``test.ipynb`` — beam search on the test split with a checkpoint, BLEU-1..4 table, a grid of right and wrong
  captions, the maps of pointing-game misses;
* ``caption.ipynb`` — caption one image (by default two: one captioned right, one typical failure); one attention
  map per word for the attention decoders (with β, the
  sentinel's share, for the adaptive one).

``test`` and ``caption`` choose their checkpoint with ``attention`` (True/False) or, when it is not None,
``decoder`` ("rnn" | "attention" | "adaptive"), which wins; ``decoder_choice`` resolves the two.

Helpers: ``setup``, ``output_folder``, ``require_todos`` (stops with a message naming an unfinished TODO of
``models.py``), ``ensure_data`` (generates and prepares the built-in shapes data when it is missing),
``encoder_settings``, ``find_checkpoint``, ``default_image`` and ``right_and_wrong`` (caption.ipynb's two images:
one captioned right, one typical failure), the printed tables, and ``write_metrics`` (each
notebook writes its key numbers to ``<output_dir>/<name>.metrics.json`` so that graders read numbers, not cell
text). This module imports torch only inside the helpers that need it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings

from captioning.check import require_todos  # noqa: F401  (the notebooks call nb.require_todos)
from captioning.data.ensure import SHAPES_NAME, SHAPES_SETTINGS, data_summary, encoder_settings, ensure_data  # noqa: F401
from captioning.evaluation.outputs import write_json as write_checked  # read back before the rename
from captioning.internals.errors import KitError
from captioning.internals.threads import prefer_short_spin

# Text progress bars (no ipywidgets) redraw at most every 5 s (the per-epoch lines come about as often): a live
# notebook gets a redraw or two per epoch instead of one per batch (a notebook executed through papermill by the kit's
# runner keeps only each bar's final line: its streams are coalesced, `\r` applied). tqdm reads its TQDM_*
# settings once, when it is first imported, and `import torch` imports it; this module is a notebook's first kit
# import and imports neither.
if "tqdm" not in sys.modules:
    os.environ.setdefault("TQDM_MININTERVAL", "5")
prefer_short_spin()  # OpenMP threads spin briefly, then sleep, while they wait: set before torch loads (threads.py)

# The notebooks' default output_dir, relative to notebooks/ (where Jupyter and nbval run them).
DEFAULT_OUTPUT_DIR = "../outputs/notebooks"
# The kit's tests set this so that nbval's rerun of the notebooks at their defaults writes checkpoints and data
# there instead of into DEFAULT_OUTPUT_DIR, where a student's own runs live. It only replaces the default.
NBVAL_ENV = "CAPTIONING_NBVAL_OUTPUT"
KIND = {False: "NoAttention", True: "Attention"}
# the decoders a notebook's `decoder` parameter may name, and the checkpoint name of each (solver.DECODER_NAMES)
DECODERS = {"rnn": "NoAttention", "attention": "Attention", "adaptive": "AdaptiveAttention"}
TRAINED_BY = {"rnn": "train1.ipynb", "attention": "train2.ipynb", "adaptive": "train2.ipynb with decoder 'adaptive'"}


# ---------------------------------------------------------------------------------------------- notebook setup
def check_parameters(params):
    """Stop at once when a parameter of the notebook's parameters cell is not allowed: a KitError naming it, its
    value and what is allowed (the cfg keys by ``config.RULES``, as ``train`` checks them; the notebooks' own
    parameters by the rules below). ``params``: the notebook's ``globals()``; other names are ignored."""
    from captioning.config import _STR, RULES, _int, _number, _one_of, _optional

    own = {
        "shapes_n_train": _int(1),
        "shapes_n_val": _int(1),
        "shapes_n_test": _int(1),
        "shapes_image_size": _int(16),
        "shapes_seed": _int(0),
        "threads": _optional(_int(0)),
        "beam_size": _int(1),
        "length_penalty": _number(0),
        "max_images": _optional(_int(1)),
        "split": _one_of("TEST", "VAL"),
        "data_folder": _optional(_STR),
        "data_name": _optional(_STR),
        "encoded_image_size": _optional(_int(1)),
        "image": _optional(_STR),
    }
    for key, (ok, allowed) in {**RULES, **own}.items():
        if key in params and not ok(params[key]):
            raise KitError(
                f"parameter {key} = {params[key]!r} is not allowed: {key} must be {allowed} (see the parameters cell)"
            )


def setup(threads=None, seed=None):
    """First call of every notebook: quiet, reproducible defaults; returns facts for the metrics file.

    threads: PyTorch CPU threads. None: the kit picks them and lowers them while other processes compete for the
        cores (``captioning/internals/threads.py``; ``OMP_NUM_THREADS`` fixes them); a number fixes them (1 is fastest on a
        busy shared machine and makes CPU runs repeatable); 0 keeps PyTorch's default. seed: ``torch.manual_seed``
        if given.
    """
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto falls back to text bars
    # nltk's advice to smooth when a caption shares no n-gram with its references: the score is 0 and shown as such
    warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts of", category=UserWarning)
    import torch

    from captioning.internals import threads as cpu_threads

    if threads is None:
        cpu_threads.auto(note=print)
    else:
        cpu_threads.fixed(threads)
    if seed is not None:
        torch.manual_seed(seed)
    return {
        "python": sys.executable,
        "prefix": sys.prefix,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def output_folder(output_dir):
    """Create ``output_dir`` and return it; under nbval (``$CAPTIONING_NBVAL_OUTPUT`` set) the *default* folder is
    replaced by that one, so that ``make test`` never overwrites a student's checkpoints."""
    env = os.environ.get(NBVAL_ENV)
    if env and os.path.normpath(str(output_dir)) == os.path.normpath(DEFAULT_OUTPUT_DIR):
        output_dir = env
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise KitError(f"cannot create output_dir '{output_dir}': {e.strerror or e}; choose another output_dir")
    return str(output_dir)


def decoder_choice(decoder=None, attention=True, choices=tuple(DECODERS)):
    """The decoder a notebook works with: ``decoder`` when given (it wins), else "attention" or "rnn" from
    ``attention``. A value outside ``choices`` is a KitError naming it and the choices."""
    if decoder is None:
        decoder = "attention" if attention else "rnn"
    if decoder not in choices:
        listing = ", ".join(repr(c) for c in choices)
        extra = " (the decoder without attention is trained by train1.ipynb)" if decoder == "rnn" else ""
        raise KitError(f"decoder {decoder!r} is not one of {listing} (or None for the notebook's default){extra}")
    return decoder


# ------------------------------------------------------------------------------------------------ checkpoints
def find_checkpoint(output_dir, attention, data_name=None):
    """The BEST checkpoint train1 (``attention`` False or "rnn"), train2 (True or "attention") or train2 with the
    adaptive decoder ("adaptive") wrote into ``output_dir``."""
    decoder = decoder_choice(attention if isinstance(attention, str) else None, attention)
    kind, notebook = DECODERS[decoder], TRAINED_BY[decoder]
    if data_name:
        path = os.path.join(output_dir, f"BEST_checkpoint_{kind}_{data_name}.pth.tar")
        if not os.path.isfile(path):
            raise KitError(
                f"no checkpoint '{path}': run {notebook} first (same output_dir and data_name), or set "
                f"checkpoint to a .pth.tar file"
            )
        return path
    prefix = f"BEST_checkpoint_{kind}_"
    found = (
        sorted(n for n in os.listdir(output_dir) if n.startswith(prefix) and n.endswith(".pth.tar"))
        if os.path.isdir(output_dir)
        else []
    )
    if not found:
        raise KitError(
            f"no {prefix}*.pth.tar in '{output_dir}': run {notebook} first (same output_dir), or set "
            f"checkpoint to a .pth.tar file"
        )
    if len(found) > 1:
        raise KitError(f"several checkpoints in '{output_dir}' ({', '.join(found)}): set data_name or checkpoint")
    return os.path.join(output_dir, found[0])


def _checkpoint_cfg(checkpoint):
    import torch

    from captioning.checkpoints import load_checkpoint

    try:  # memory-mapped: only the cfg is read, not the ~170 MB of weights
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["cfg"]
    except Exception:  # missing, not a zip checkpoint, or not ours: load_checkpoint explains, below, outside the
        pass  # except block, so that its message comes alone, not after the traceback of torch.load's error
    return load_checkpoint(checkpoint)["cfg"]


def checkpoint_decoder(checkpoint, decoder=None):
    """The decoder ("rnn" | "attention" | "adaptive") a checkpoint holds; KitError when ``decoder`` (the notebook's
    parameter, when set) names another one."""
    held = _checkpoint_cfg(checkpoint)["decoder"]
    if decoder is not None and decoder != held:
        raise KitError(
            f"checkpoint '{checkpoint}' holds the '{held}' decoder, but decoder = {decoder!r}: set "
            f"decoder = None (the checkpoint decides) or choose a checkpoint of that decoder"
        )
    return held


def default_image(checkpoint, index=0):
    """Test image number ``index`` of the data the checkpoint was trained on (caption.ipynb): the shapes' JPEG, or
    for other data (whose source folder prepare does not record) the TEST image as prepared, as a PNG beside it."""
    from captioning.checkpoints import data_folder_of

    cfg = _checkpoint_cfg(checkpoint)
    data_folder = data_folder_of(cfg, checkpoint)
    raw = os.path.join(data_folder, "shapes_raw")
    path = os.path.join(raw, "dataset_shapes.json")
    if not os.path.isfile(path):
        from captioning.datasets import save_prepared_image

        path = save_prepared_image(
            data_folder, cfg["data_name"], "TEST", index, os.path.dirname(os.path.abspath(checkpoint))
        )
    else:
        with open(path) as fh:
            tests = [r for r in json.load(fh)["images"] if r["split"] == "test"]
        if not tests:
            raise KitError(f"{path} has no test image: set image to the path of an image file")
        rec = tests[index % len(tests)]
        path = os.path.join(raw, rec["filepath"], rec["filename"])
    rel = os.path.relpath(path)  # the same text in every clone when the data lies below the working directory
    return path if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def first_test_images(checkpoint, n):
    """(paths, references, objects) of the first ``n`` TEST images of the checkpoint's data: the files
    ``default_image`` gives, their reference captions and their object records ([] each without)."""
    from captioning.checkpoints import data_folder_of
    from captioning.datasets import ImageCaptions, load_word_map, split_paths
    from captioning.decoding import decode_words
    from captioning.evaluation.evaluate import _image_records

    cfg = _checkpoint_cfg(checkpoint)
    folder, name = data_folder_of(cfg, checkpoint), cfg["data_name"]
    data = ImageCaptions(folder, name, "TEST", limit=n)
    rev = {v: k for k, v in load_word_map(folder, name).items()}
    refs = [[" ".join(decode_words(c.tolist(), rev)) for c in data.captions[i]] for i in range(len(data))]
    ids, objects = _image_records(split_paths(folder, name, "TEST")[0], len(data))
    paths = [default_image(checkpoint, i) for i in range(len(data))]
    for path, image_id in zip(paths, ids):
        if path.endswith(".jpg") and os.path.basename(path) != os.path.basename(image_id):
            raise KitError(
                f"the prepared TEST split of '{folder}' lists {image_id} where the shapes JSON has {path}: the "
                f"two come from different runs; delete the data folder to generate it again"
            )
    return paths, refs, objects


def right_and_wrong(checkpoint, beam_size=5, length_penalty=None, device="cpu", n_scan=40):
    """caption.ipynb's default images: the first ``n_scan`` TEST images captioned and judged, then the first
    one captioned right and the first failure of the most common kind (``example_figures.right_and_wrong``)."""
    from captioning.evaluation.evaluate import caption_images
    from captioning.evaluation.example_figures import right_and_wrong as choose

    paths, refs, objects = first_test_images(checkpoint, n_scan)
    results = caption_images(checkpoint, paths, beam_size, device, length_penalty=length_penalty)
    return choose(results, refs, objects)


# ----------------------------------------------------------------------------------------------------- tables
def history_table(history):
    """The per-epoch numbers of ``fit`` as a fixed-width table."""
    lines = [
        "epoch | train loss | train top-5 | val loss | val top-5 | val BLEU-4",
        "------+------------+-------------+----------+-----------+-----------",
    ]
    for r in history:
        lines.append(
            f"{r['epoch']:5d} | {r['train_loss']:10.3f} | {r['train_top5']:11.2f} | {r['val_loss']:8.3f} | "
            f"{r['val_top5']:9.2f} | {r['bleu4']:10.4f}{'  *' if r.get('best') else ''}"
        )
    if history:
        best = [r for r in history if r.get("best")][-1:] or [max(history, key=lambda r: r["bleu4"])]
        lines.append(
            f"BEST_ keeps epoch {best[0]['epoch']} (validation BLEU-4 {best[0]['bleu4']:.4f}: the best of the best "
            f"epochs in a row; * = BEST_ moved there)"
        )
    return "\n".join(lines)


def bleu_table(result):
    """BLEU-1..4 of ``evaluate`` (and the pointing game when there is one) as a markdown-style table."""
    lines = [
        f"{result['split']} split, {result['n_images']} images, beam {result['beam_size']}, decoder "
        f"{result['decoder']}",
        "",
        "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |",
        "|--------|--------|--------|--------|",
        "| " + " | ".join(f"{result[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4")) + " |",
    ]
    g = result.get("grounding")
    if g and g.get("all") is not None:
        lines += [
            "",
            f"pointing game: {g['all']:.3f} of {g['n_words']} shape/colour words hit (chance {g['chance']:.3f})",
        ]
    b = result.get("beta_by_class")
    if b:  # the adaptive decoder: 1 = the word came from the language model, 0 = from the image
        shares = ", ".join(f"{k} {v['beta']:.2f} ({v['n']} words)" for k, v in b.items() if v["beta"] is not None)
        lines += ["", f"mean β (the sentinel's share) of the generated words: {shares}"]
    return "\n".join(lines)


def examples(result, n=5):
    """The first ``n`` generated captions of ``evaluate`` with their first reference."""
    lines = []
    for row in result["captions"][:n]:
        lines.append(
            f"{os.path.basename(str(row['image_id']))}\n  generated: {row['caption']}\n"
            f"  reference: {row['references'][0]}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- metrics
def _plain(obj):
    """JSON-able copy: tensors / numpy scalars become numbers or lists, NaN/inf become None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_metrics(path, metrics):
    """Write ``metrics`` (a dict) as JSON, read back before the rename; returns the path (KitError naming it)."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_checked(_plain(metrics), path, "output_dir")
    print(f"wrote {path}")
    return path


def caption_metrics(path, results, checkpoint, beam_size, env):
    """What caption.ipynb writes, once for all the images it showed (``results``: one result of ``caption_images``
    or a list of them): the last image's caption at the top level (``image``, ``caption``, ``words``, ``beta`` — the
    adaptive decoder's sentinel share per word) and every image captioned with this checkpoint under ``images`` (by
    path), so that captioning a second image does not lose the first."""
    results = [results] if isinstance(results, dict) else list(results)
    images = {}
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                old = json.load(fh)
            if old.get("checkpoint") == checkpoint:  # another checkpoint: its captions are not this model's
                images = old.get("images") or {}
        except (OSError, ValueError):
            pass  # unreadable: start afresh
    for res in results:
        entry = {
            "image": res["path"],
            "caption": " ".join(res["words"]),
            "words": res["words"],
            "finished": res["finished"],
            "beam_size": beam_size,
            "beta": res["alphas"][:, -1] if res["decoder"] == "adaptive" else None,
        }
        images[res["path"]] = {k: v for k, v in entry.items() if k != "image"}
    return {**entry, "decoder": res["decoder"], "checkpoint": checkpoint, "images": images, "env": env}


def train_metrics(result, cfg, data, env, seconds):
    """What train1/train2 write to their metrics file."""
    hist = result["history"]
    best = ([r for r in hist if r.get("best")][-1:] or [{}])[0]  # the epoch BEST_ holds
    return {
        "decoder": cfg.get("decoder") or ("attention" if cfg["attention"] else "rnn"),
        "epochs_run": len(hist),
        "best_bleu4": result["best_bleu4"],
        "best_epoch": best.get("epoch"),
        "final": hist[-1] if hist else None,
        "history": hist,
        "vocab_size": data["vocab_size"],
        "data": {k: v for k, v in data.items() if k != "status"},
        "checkpoint": result["checkpoint"],
        "best_checkpoint": result["best_checkpoint"],
        "train_seconds": seconds,
        "cfg": cfg,
        "env": env,
    }
