"""The notebooks' helpers, and ``python -m captioning notebooks`` — run all notebooks through papermill.

The four notebooks in ``notebooks/`` are the students' interface and stay thin: a ``parameters`` cell of plain
literals (papermill can override them), a cell that derives everything else, then calls into ``captioning``:

* ``train1.ipynb`` — train the decoder without attention (Show and Tell);
* ``train2.ipynb`` — train the attention decoder (Show, Attend and Tell), or with ``decoder = "adaptive"`` the
  reference adaptive-attention decoder (Knowing When to Look);
* ``test.ipynb`` — beam search on the test split with a checkpoint, BLEU-1..4 table;
* ``caption.ipynb`` — caption one image; one attention map per word for the attention decoders (with β, the
  sentinel's share, for the adaptive one).

``test`` and ``caption`` choose their checkpoint with ``attention`` (True/False) or, when it is not None,
``decoder`` ("rnn" | "attention" | "adaptive"), which wins; ``decoder_choice`` resolves the two.

The helpers here are what those cells call: ``setup``, ``output_folder``, ``require_todos`` (stops with a message
naming an unfinished TODO of ``models.py``), ``ensure_data`` (generates and prepares the built-in shapes data when
it is missing), ``find_checkpoint``, ``default_image``, the printed tables, and ``write_metrics`` (each notebook
writes its key numbers to ``<output_dir>/<name>.metrics.json`` so that graders read numbers, not cell text).

``run_notebooks`` executes train1, train2, test (both checkpoints) and caption (both checkpoints) in that order with
papermill, and with ``adaptive`` also train2, test and caption for the adaptive decoder (``ADAPTIVE_RUNS``);
``register`` adds the ``notebooks`` subcommand. This module imports neither torch nor papermill at import
time: the command line imports it for every subcommand.
"""
from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from captioning.errors import KitError
from captioning.recipe import RECIPE

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("train1", "train2", "test", "caption")
# The notebooks' default output_dir, relative to notebooks/ (where Jupyter and nbval run them).
DEFAULT_OUTPUT_DIR = "../outputs/notebooks"
# `make test` sets this so that nbval's re-execution of the notebooks at their defaults writes checkpoints and data
# there instead of into DEFAULT_OUTPUT_DIR, where a student's own runs live. It only replaces the default.
NBVAL_ENV = "CAPTIONING_NBVAL_OUTPUT"
SHAPES_SETTINGS = "shapes_settings.json"
SHAPES_NAME = re.compile(r"^shapes_(\d+)_cap_per_img_(\d+)_min_word_freq$")
KIND = {False: "NoAttention", True: "Attention"}
# the decoders a notebook's `decoder` parameter may name, and the checkpoint name of each (solver.DECODER_NAMES)
DECODERS = {"rnn": "NoAttention", "attention": "Attention", "adaptive": "AdaptiveAttention"}
TRAINED_BY = {"rnn": "train1.ipynb", "attention": "train2.ipynb", "adaptive": "train2.ipynb with decoder 'adaptive'"}
# (run name, notebook, parameters the runner sets) in the order `python -m captioning notebooks` runs them; the
# run name is also the stem of the executed copy and of its metrics file.
RUNS = (
    ("train1", "train1", {}),
    ("train2", "train2", {}),
    ("test_rnn", "test", {"attention": False}),
    ("test_attention", "test", {"attention": True}),
    ("caption_rnn", "caption", {"attention": False}),
    ("caption_attention", "caption", {"attention": True}),
)
# Not run by default (`--adaptive` or `--only` adds them): the reference adaptive-attention decoder, trained by
# train2.ipynb with decoder "adaptive". Their run names are the stems of the metrics files the notebooks write.
ADAPTIVE_RUNS = (
    ("train_adaptive", "train2", {"decoder": "adaptive"}),
    ("test_adaptive", "test", {"decoder": "adaptive"}),
    ("caption_adaptive", "caption", {"decoder": "adaptive"}),
)
ALL_RUNS = RUNS + ADAPTIVE_RUNS
# chosen by the runner per notebook: a user value would mean different things in different notebooks
RUNNER_PARAMETERS = {
    "output_dir": "use --out DIR",
    "attention": "the runner tests and captions with both decoders (and the adaptive one with --adaptive)",
    "decoder": "the runner chooses the decoder of each run; add the adaptive decoder's runs with --adaptive",
    "checkpoint": "the runner uses the checkpoints train1/train2 wrote into --out; to resume training or test "
                  "another checkpoint run that notebook alone: papermill notebooks/test.ipynb out.ipynb "
                  "-p checkpoint PATH",
}


# ---------------------------------------------------------------------------------------------- notebook setup
def setup(threads=1, seed=None):
    """First call of every notebook: quiet, reproducible defaults; returns facts for the metrics file.

    threads: PyTorch CPU threads (``torch.set_num_threads``); 1 is fastest on a busy shared machine and makes CPU
        runs repeatable; None or 0 keeps PyTorch's default. seed: ``torch.manual_seed`` if given.
    """
    # Text progress bars (no ipywidgets) redraw at most every 5 s (the per-epoch lines come about as often): an
    # executed notebook keeps a line or two per epoch instead of one per batch.
    if "tqdm" not in sys.modules:
        os.environ.setdefault("TQDM_MININTERVAL", "5")
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto falls back to text bars
    # nltk's advice to smooth when a caption shares no n-gram with its references: the score is 0 and shown as such
    warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts of", category=UserWarning)
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if seed is not None:
        torch.manual_seed(seed)
    return {"python": sys.executable, "prefix": sys.prefix, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


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


# ------------------------------------------------------------------------------------------------ student TODOs
_KIT_MODULES = ("captioning.models", "captioning.fastpath", "captioning.solver", "captioning.evaluate")


def _reload_kit():
    """Re-import models.py (and the modules that hold names from it) so that an edit made while the notebook's
    kernel runs is what the next cells use."""
    import importlib

    for name in _KIT_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def _todo_message(err):
    text = str(err).strip()
    m = re.search(r"TODO\s+([A-Za-z_]\w*(?:\.\w+)?)", text)
    if not m:
        return (f"models.py: a TODO is not done yet ({type(err).__name__}: {text or 'no message'}) — complete it, "
                f"then re-run this cell")
    detail = text[m.end():].lstrip(" :—-")
    detail = re.sub(r"\s*\(define it in the __init__ TODO.*\)$", "", detail)
    return (f"models.py: TODO {m.group(1)} is not done yet{f' ({detail})' if detail else ''} — complete it, "
            f"then re-run this cell")


def _expect(name, tensor, shape):
    got = tuple(getattr(tensor, "shape", ()))
    if got != tuple(shape):
        raise KitError(f"models.py: {name} has shape {got}, expected {tuple(shape)} — check that TODO, then re-run "
                       f"this cell")


def require_todos(decoder_type="rnn"):
    """Stop with a ``KitError`` naming the first unfinished TODO of ``models.py`` that ``decoder_type`` needs.

    Builds a tiny decoder (and, for "attention", an ``Attention``) and runs ``one_step`` and ``forward`` on tiny
    tensors; a stub's ``NotImplementedError("TODO Class.method")`` or a missing layer's ``TodoError`` becomes
    "models.py: TODO Class.method is not done yet — complete it, then re-run this cell". Wrong output shapes are
    reported too. models.py is re-imported first, so re-running the cell after an edit checks the edited file.
    "adaptive" needs no TODO (``DecoderWithAdaptiveAttention`` is reference code that uses none of the student's
    classes): it only runs that decoder on tiny tensors.
    """
    if decoder_type not in ("rnn", "attention", "adaptive"):
        raise KitError(f"decoder_type {decoder_type!r}: choose 'rnn', 'attention' or 'adaptive'")
    _reload_kit()
    import torch
    from captioning import models

    B, S, C, V, E, D, A, T = 3, 2, 8, 9, 4, 6, 5, 6
    P = S * S
    cfg = {"vocab_size": V, "embed_dim": E, "decoder_dim": D, "attention_dim": A, "dropout": 0.0}
    gen = torch.Generator().manual_seed(0)
    enc = torch.randn(B, S, S, C, generator=gen)
    caps = torch.randint(4, V, (B, T), generator=gen)
    lens = torch.tensor([T, T - 1, T - 3])
    emb = torch.randn(B, E, generator=gen)
    h, c = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    try:
        with torch.no_grad():
            if decoder_type == "rnn":
                dec = models.DecoderWithRNN(cfg, encoder_dim=C).eval()
                preds, h2, c2 = dec.one_step(emb, h, c)
                _expect("DecoderWithRNN.one_step's preds", preds, (B, V))
                _expect("DecoderWithRNN.one_step's h", h2, (B, D))
                out = dec(enc, caps, lens)
                _expect("DecoderWithRNN.forward's predictions", out[0], (B, T - 1, V))
                names = "DecoderWithRNN"
            elif decoder_type == "attention":
                att = models.Attention(C, D, A).eval()
                z, alpha = att(enc.view(B, P, C), h)
                _expect("Attention.forward's z", z, (B, C))
                _expect("Attention.forward's alpha", alpha, (B, P))
                dec = models.DecoderWithAttention(cfg, encoder_dim=C).eval()
                preds, alpha, h2, c2 = dec.one_step(emb, enc.view(B, P, C), h, c)
                _expect("DecoderWithAttention.one_step's preds", preds, (B, V))
                _expect("DecoderWithAttention.one_step's alpha", alpha, (B, P))
                _expect("DecoderWithAttention.one_step's h", h2, (B, D))
                out = dec(enc, caps, lens)
                _expect("DecoderWithAttention.forward's predictions", out[0], (B, T - 1, V))
                _expect("DecoderWithAttention.forward's alphas", out[3], (B, T - 1, P))
                names = "Attention and DecoderWithAttention"
            else:
                from captioning.solver import build_decoder

                dec = build_decoder({"decoder": "adaptive", **cfg}, V, C).eval()
                out = dec(enc, caps, lens)
                _expect("the adaptive decoder's predictions", out[0], (B, T - 1, V))
                _expect("the adaptive decoder's alphas", out[3], (B, T - 1, P + 1))
    except NotImplementedError as e:  # includes models.TodoError (a layer not defined yet)
        raise KitError(f"{_todo_message(e)} [checked: {_where(models)}]") from None
    # which file was imported: a student with two copies of the kit sees which one the notebook uses
    print(f"checked {_where(models)}")
    if decoder_type == "adaptive":
        print("models.py: DecoderWithAdaptiveAttention is reference code, no TODO of yours is needed (it ran on tiny "
              "tensors)")
    else:
        print(f"models.py: the {names} TODOs are done (checked on tiny tensors)")


def _where(module):
    """The module's file relative to the working directory (the same text in every clone of the kit)."""
    return os.path.relpath(module.__file__)


# ------------------------------------------------------------------------------------------------------- data
def _prepared_files(data_folder, data_name):
    from captioning.features import split_paths, word_map_path

    files = [word_map_path(data_folder, data_name)]
    for split in ("TRAIN", "VAL", "TEST"):
        files += split_paths(data_folder, data_name, split)
    return files


def ensure_data(data_folder, data_name, shapes_n_train=RECIPE["n_train"], shapes_n_val=RECIPE["n_val"],
                shapes_n_test=RECIPE["n_test"], shapes_image_size=RECIPE["image_size"], shapes_seed=RECIPE["seed"]):
    """Make sure the prepared files of ``data_name`` are in ``data_folder``; returns a summary dict.

    For the built-in shapes data (``data_name`` ``shapes_{cpi}_cap_per_img_{mwf}_min_word_freq``) missing files, or
    files generated with other ``shapes_*`` settings or by another ``shapes.DATA_VERSION`` (``shapes_settings.json``
    beside them), are (re)generated into ``data_folder/shapes_raw`` and prepared into ``data_folder``. For any other
    data the ``shapes_*`` arguments are ignored and missing files are a KitError saying how to prepare them.

    Returns: data_folder, data_name, status ("generated" | "found"), n_train, n_val, n_test, image_size,
    captions_per_image, vocab_size, shapes (True for the built-in data), seed (its shapes_seed) and karpathy_json
    (shapes only).
    """
    import h5py

    data_folder, files = str(data_folder), _prepared_files(data_folder, data_name)
    m = SHAPES_NAME.match(data_name)
    status = "found"
    karpathy = None
    if m:
        cpi, mwf = int(m.group(1)), int(m.group(2))
        from captioning.shapes import DATA_VERSION

        wanted = {"n_train": shapes_n_train, "n_val": shapes_n_val, "n_test": shapes_n_test,
                  "image_size": shapes_image_size, "seed": shapes_seed, "captions_per_image": cpi,
                  "min_word_freq": mwf, "generator_version": DATA_VERSION}
        stamp_path = os.path.join(data_folder, SHAPES_SETTINGS)
        stamp = None
        if os.path.isfile(stamp_path):
            with open(stamp_path) as fh:
                stamp = json.load(fh)
        karpathy = os.path.join(data_folder, "shapes_raw", "dataset_shapes.json")
        if not all(os.path.isfile(f) for f in files) or (stamp is not None and stamp != wanted):
            from captioning.prepare import create_input_files
            from captioning.shapes import generate_shapes

            print(f"generating the shapes data ({shapes_n_train}/{shapes_n_val}/{shapes_n_test} images of "
                  f"{shapes_image_size} px) into {data_folder}", flush=True)
            karpathy = generate_shapes(os.path.join(data_folder, "shapes_raw"), n_train=shapes_n_train,
                                       n_val=shapes_n_val, n_test=shapes_n_test, image_size=shapes_image_size,
                                       seed=shapes_seed)
            create_input_files("shapes", karpathy, os.path.join(data_folder, "shapes_raw"), captions_per_image=cpi,
                               min_word_freq=mwf, output_folder=data_folder, max_len=50,
                               image_size=shapes_image_size, seed=shapes_seed, workers=1)
            with open(stamp_path, "w") as fh:
                json.dump(wanted, fh, indent=1)
            status = "generated"
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise KitError(f"data_folder '{data_folder}' has no prepared data '{data_name}' ({missing[0]} is missing): "
                       f"prepare it with `python -m captioning prepare --dataset … --output-folder {data_folder}`, "
                       f"or check data_folder / data_name (the built-in data is named "
                       f"shapes_5_cap_per_img_5_min_word_freq)")
    from captioning.solver import load_word_map

    from captioning.features import split_paths

    counts = {}
    for split in ("TRAIN", "VAL", "TEST"):
        with h5py.File(split_paths(data_folder, data_name, split)[0], "r") as f:
            counts[split] = f["images"].shape[0]
            if split == "TRAIN":
                image_size, cpi = int(f["images"].shape[-1]), int(f.attrs["captions_per_image"])
    return {"data_folder": data_folder, "data_name": data_name, "status": status, "n_train": counts["TRAIN"],
            "n_val": counts["VAL"], "n_test": counts["TEST"], "image_size": image_size, "captions_per_image": cpi,
            "vocab_size": len(load_word_map(data_folder, data_name)),
            "shapes": bool(m), "seed": shapes_seed if m else None,
            "karpathy_json": str(karpathy) if karpathy and os.path.isfile(karpathy) else None}


def encoder_settings(data, encoder_weights=None, encoded_image_size=None, progress=True):
    """The encoder cfg keys (``encoder``, ``encoder_weights``, ``encoded_image_size``) of a training notebook.

    * ``encoder_weights`` None on the built-in shapes data: the recipe's ``shapes_cnn``, pretrained on the TRAIN
      boxes on first use and cached beside the data (``pretrain.ensure_encoder``), one S×S grid cell per 16 px.
    * ``encoder_weights`` given ("imagenet" or a ResNet-101 .pth): the course's ResNet-101, ``encoded_image_size``
      (default 14) on a side — the path for real photos (COCO, Flickr) on a GPU.
    * None on other data: a ResNet-101 with random weights (BatchNorm recalibrated); it carries little shape
      information, so the captions will be poor — a message says so.
    """
    if encoder_weights is None and data.get("shapes"):
        from captioning.pretrain import STRIDE, ensure_encoder

        pre = ensure_encoder(data["data_folder"], data["data_name"], RECIPE["pretrain_epochs"], seed=data["seed"],
                             images=RECIPE["pretrain_images"], progress=progress)
        acc = pre["val_accuracy"]
        print(f"encoder: shapes_cnn pretrained on the TRAIN boxes for {pre['epochs']} epochs ({pre['status']}; "
              f"VAL cells: shape {acc['shape']:.2f}, colour {acc['color']:.2f})")
        return {"encoder": "shapes_cnn", "encoder_weights": pre["path"],
                "encoded_image_size": encoded_image_size or data["image_size"] // STRIDE}
    if encoder_weights is None:
        print("encoder: ResNet-101 with random weights (no ImageNet weights given): expect poor captions; set "
              "encoder_weights to 'imagenet' or a ResNet-101 .pth")
    return {"encoder": "resnet101", "encoder_weights": encoder_weights, "encoded_image_size": encoded_image_size or 14}


def data_summary(data):
    """One line about the data of ``ensure_data`` (no paths: the line is the same wherever the data lives)."""
    return (f"{data['data_name']}: {data['n_train']} / {data['n_val']} / {data['n_test']} images (train / val / "
            f"test) of {data['image_size']}×{data['image_size']} px, {data['captions_per_image']} captions each, "
            f"vocabulary of {data['vocab_size']} words (incl. <pad> <unk> <start> <end>)")


# ------------------------------------------------------------------------------------------------ checkpoints
def find_checkpoint(output_dir, attention, data_name=None):
    """The BEST checkpoint train1 (``attention`` False or "rnn"), train2 (True or "attention") or train2 with the
    adaptive decoder ("adaptive") wrote into ``output_dir``."""
    decoder = decoder_choice(attention if isinstance(attention, str) else None, attention)
    kind, notebook = DECODERS[decoder], TRAINED_BY[decoder]
    if data_name:
        path = os.path.join(output_dir, f"BEST_checkpoint_{kind}_{data_name}.pth.tar")
        if not os.path.isfile(path):
            raise KitError(f"no checkpoint '{path}': run {notebook} first (same output_dir and data_name), or set "
                           f"checkpoint to a .pth.tar file")
        return path
    prefix = f"BEST_checkpoint_{kind}_"
    found = sorted(n for n in os.listdir(output_dir) if n.startswith(prefix) and n.endswith(".pth.tar")) \
        if os.path.isdir(output_dir) else []
    if not found:
        raise KitError(f"no {prefix}*.pth.tar in '{output_dir}': run {notebook} first (same output_dir), or set "
                       f"checkpoint to a .pth.tar file")
    if len(found) > 1:
        raise KitError(f"several checkpoints in '{output_dir}' ({', '.join(found)}): set data_name or checkpoint")
    return os.path.join(output_dir, found[0])


def default_image(checkpoint, index=0):
    """Test image number ``index`` of the shapes data the checkpoint was trained on (for caption.ipynb)."""
    import torch

    from captioning.solver import load_checkpoint

    try:  # memory-mapped: only the cfg is read, not the ~170 MB of weights
        cfg = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["cfg"]
    except Exception:  # not a zip checkpoint, or not ours: let load_checkpoint explain
        cfg = load_checkpoint(checkpoint)["cfg"]
    raw = os.path.join(cfg["data_folder"], "shapes_raw")
    path = os.path.join(raw, "dataset_shapes.json")
    if not os.path.isfile(path):
        raise KitError(f"checkpoint '{checkpoint}' was not trained on the shapes data of this kit ({path} is "
                       f"missing): set image to the path of an image file")
    with open(path) as fh:
        tests = [r for r in json.load(fh)["images"] if r["split"] == "test"]
    if not tests:
        raise KitError(f"{path} has no test image: set image to the path of an image file")
    rec = tests[index % len(tests)]
    return os.path.join(raw, rec["filepath"], rec["filename"])


# ----------------------------------------------------------------------------------------------------- tables
def history_table(history):
    """The per-epoch numbers of ``fit`` as a fixed-width table."""
    lines = ["epoch | train loss | train top-5 | val loss | val top-5 | val BLEU-4",
             "------+------------+-------------+----------+-----------+-----------"]
    for r in history:
        lines.append(f"{r['epoch']:5d} | {r['train_loss']:10.3f} | {r['train_top5']:11.2f} | {r['val_loss']:8.3f} | "
                     f"{r['val_top5']:9.2f} | {r['bleu4']:10.4f}{'  *' if r.get('best') else ''}")
    if history:
        best = max(history, key=lambda r: r["bleu4"])
        lines.append(f"best validation BLEU-4 {best['bleu4']:.4f} at epoch {best['epoch']} (* = new best)")
    return "\n".join(lines)


def bleu_table(result):
    """BLEU-1..4 of ``evaluate`` (and the pointing game when there is one) as a markdown-style table."""
    lines = [f"{result['split']} split, {result['n_images']} images, beam {result['beam_size']}, decoder "
             f"{result['decoder']}", "",
             "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 |", "|--------|--------|--------|--------|",
             "| " + " | ".join(f"{result[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4")) + " |"]
    g = result.get("grounding")
    if g and g.get("all") is not None:
        lines += ["", f"pointing game: {g['all']:.3f} of {g['n_words']} shape/colour words hit (chance "
                      f"{g['chance']:.3f})"]
    return "\n".join(lines)


def examples(result, n=5):
    """The first ``n`` generated captions of ``evaluate`` with their first reference."""
    lines = []
    for row in result["captions"][:n]:
        lines.append(f"{os.path.basename(str(row['image_id']))}\n  generated: {row['caption']}\n"
                     f"  reference: {row['references'][0]}")
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
    """Write ``metrics`` (a dict) as JSON atomically; returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(_plain(metrics), fh, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def caption_metrics(path, res, checkpoint, beam_size, env):
    """What caption.ipynb writes: the latest image's caption at the top level (``image``, ``caption``, ``words``,
    ``beta`` — the adaptive decoder's sentinel share per word) and every image captioned with this checkpoint under
    ``images`` (by path), so that captioning a second image does not lose the first."""
    entry = {"image": res["path"], "caption": " ".join(res["words"]), "words": res["words"],
             "finished": res["finished"], "beam_size": beam_size,
             "beta": res["alphas"][:, -1] if res["decoder"] == "adaptive" else None}
    images = {}
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                old = json.load(fh)
            if old.get("checkpoint") == checkpoint:  # another checkpoint: its captions are not this model's
                images = old.get("images") or {}
        except (OSError, ValueError):
            pass  # unreadable: start afresh
    images[res["path"]] = {k: v for k, v in entry.items() if k != "image"}
    return {**entry, "decoder": res["decoder"], "checkpoint": checkpoint, "images": images, "env": env}


def train_metrics(result, cfg, data, env, seconds):
    """What train1/train2 write to their metrics file."""
    hist = result["history"]
    best = max(hist, key=lambda r: r["bleu4"]) if hist else {}
    return {"decoder": cfg.get("decoder") or ("attention" if cfg["attention"] else "rnn"),
            "epochs_run": len(hist), "best_bleu4": result["best_bleu4"], "best_epoch": best.get("epoch"),
            "final": hist[-1] if hist else None, "history": hist, "vocab_size": data["vocab_size"],
            "data": {k: v for k, v in data.items() if k != "status"}, "checkpoint": result["checkpoint"],
            "best_checkpoint": result["best_checkpoint"], "train_seconds": seconds, "cfg": cfg, "env": env}


# ------------------------------------------------------------------------------------------------------ runner
def _literal(text):
    """A command-line value: a Python literal when it parses as one (3, 1e-3, None, True, "x"), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_parameters(name):
    """{parameter: default} of a notebook's ``parameters`` cell, as papermill infers them."""
    import papermill

    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise KitError(f"notebook '{path}' does not exist: run from a checkout of the kit (the notebooks are not "
                       f"part of an installed package)")
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def check_parameters(params, runs):
    """KitError for a parameter no selected notebook has, or one the runner chooses itself."""
    known = {nb: notebook_parameters(nb) for nb in dict.fromkeys(nb for _, nb, _ in runs)}
    for name in params:
        if name in RUNNER_PARAMETERS:
            raise KitError(f"parameter '{name}' is set by `python -m captioning notebooks` itself: "
                           f"{RUNNER_PARAMETERS[name]}")
        if not any(name in k for k in known.values()):
            listing = "; ".join(f"{nb}.ipynb: {', '.join(k)}" for nb, k in known.items())
            raise KitError(f"unknown notebook parameter '{name}': no notebook run here has it. Known parameters — "
                           f"{listing}")
    return known


@contextlib.contextmanager
def venv_kernel():
    """Make the ``python3`` kernel papermill starts run *this* interpreter.

    jupyter_client starts a spec whose argv[0] is plain ``python``/``python3`` with ``sys.executable`` (the spec
    ipykernel installs into the venv is such a one). If the ``python3`` spec found first on the Jupyter path names
    another interpreter (e.g. one in ``~/.local/share/jupyter``), a temporary spec for this one is put in front of
    ``JUPYTER_PATH`` while the block runs.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    plain = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    if argv0 is not None and (argv0 in plain or os.path.realpath(shutil.which(argv0) or argv0)
                              == os.path.realpath(sys.executable)):
        yield
        return
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="captioning-kernel-") as tmp:
        spec_dir = os.path.join(tmp, "kernels", "python3")
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
            json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "Python 3 (ipykernel)", "language": "python"}, fh)
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def _execute(src, dst, parameters, timeout, cwd, progress=True):
    """papermill one notebook; a failing cell becomes a KitError that quotes the notebook's error."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        return papermill.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name="python3",
                                          cwd=str(cwd), execution_timeout=timeout, progress_bar=progress)
    except PapermillExecutionError as e:
        last = str(e.evalue).strip().splitlines()[-1] if str(e.evalue).strip() else ""
        raise KitError(f"{Path(src).name} stopped in cell [{e.exec_count}]: {e.ename}: {last}\n(the executed "
                       f"copy with the full error: {dst})") from None


def select_runs(only=None, adaptive=False):
    """The (run, notebook, parameters) to run, in order: ``only`` (names from RUNS and ADAPTIVE_RUNS) when given,
    else RUNS, followed by ADAPTIVE_RUNS with ``adaptive``."""
    if not only:
        return list(RUNS + ADAPTIVE_RUNS if adaptive else RUNS)
    runs = [r for r in ALL_RUNS if r[0] in only]
    if len(runs) != len(set(only)):
        raise KitError(f"--only: unknown run(s) {sorted(set(only) - {r[0] for r in ALL_RUNS})}; choose from "
                       f"{', '.join(r[0] for r in ALL_RUNS)}")
    return runs


def run_notebooks(out="outputs/notebooks", params=None, timeout=1800, only=None, progress=True, adaptive=False):
    """Run the notebooks with papermill: train1, train2, test and caption for each of the two checkpoints.

    out: folder for the executed copies (``<run>.ipynb``), their metrics (``<run>.metrics.json``), checkpoints and
        the generated shapes data (it becomes every notebook's ``output_dir``).
    params: {name: value} given to every notebook that has that parameter; a name no notebook has is a KitError.
    timeout: seconds one cell may run (papermill's ``execution_timeout``); None or 0: no limit.
    only: run names to run (``train1 train2 test_rnn test_attention caption_rnn caption_attention`` and the
        adaptive decoder's ``train_adaptive test_adaptive caption_adaptive``), in that order.
    adaptive: also run ``ADAPTIVE_RUNS`` after the others (train2, test and caption with decoder "adaptive").
    Returns {run name: its metrics dict}.
    """
    params = dict(params or {})
    runs = select_runs(only, adaptive)
    known = check_parameters(params, runs)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    results = {}
    with venv_kernel():
        for i, (run, nb, fixed) in enumerate(runs, 1):
            p = {k: v for k, v in params.items() if k in known[nb]}
            p.update(fixed, output_dir=out)
            dst = os.path.join(out, f"{run}.ipynb")
            shown = " ".join(f"{k}={v!r}" for k, v in p.items() if k != "output_dir")
            print(f"[notebooks] {i}/{len(runs)} {nb}.ipynb -> {dst}  {shown}", flush=True)
            t0 = time.time()
            _execute(NOTEBOOKS_DIR / f"{nb}.ipynb", dst, p, timeout or None, cwd=os.getcwd(), progress=progress)
            metrics_path = os.path.join(out, f"{run}.metrics.json")
            if not os.path.isfile(metrics_path):
                raise KitError(f"{nb}.ipynb ran but did not write {metrics_path}")
            with open(metrics_path) as fh:
                results[run] = json.load(fh)
            env = results[run].get("env") or {}
            if env.get("prefix") and os.path.realpath(env["prefix"]) != os.path.realpath(sys.prefix):
                raise KitError(f"{nb}.ipynb ran in the Python of {env['prefix']}, not in {sys.prefix}: fix the "
                               f"'python3' Jupyter kernel (`jupyter kernelspec list`)")
            print(f"[notebooks]   done in {time.time() - t0:.0f} s: {_headline(results[run])}", flush=True)
    return results


def _headline(m):
    if "best_bleu4" in m:
        return f"{m['decoder']} decoder, {m['epochs_run']} epochs, best validation BLEU-4 {m['best_bleu4']:.4f}"
    if "bleu4" in m:
        return (f"{m['decoder']} decoder, {m['split']} BLEU-1..4 "
                + " ".join(f"{m[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4")))
    if "caption" in m:
        return f"{m['decoder']} decoder: {os.path.basename(m['image'])}: {m['caption']}"
    return "ok"


def clean_metadata(nb):
    """Drop papermill's and nbclient's per-run metadata (timestamps, durations) from an executed notebook."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "tags" in cell.metadata and not cell.metadata["tags"]:
            del cell.metadata["tags"]
    return nb


def refresh_committed(timeout=1800, names=NOTEBOOKS, progress=True):
    """Maintainers: re-execute ``notebooks/*.ipynb`` in place at their default parameters (cwd ``notebooks/``), keep
    the outputs, drop papermill's metadata. These outputs are the reference that nbval (`make test`) checks."""
    import nbformat

    saved = os.environ.pop(NBVAL_ENV, None)
    try:
        with venv_kernel():
            for name in names:
                path = NOTEBOOKS_DIR / f"{name}.ipynb"
                tmp = NOTEBOOKS_DIR / f".{name}.running.ipynb"
                print(f"[notebooks] refreshing {path}", flush=True)
                try:
                    _execute(path, tmp, None, timeout or None, cwd=NOTEBOOKS_DIR, progress=progress)
                    nb = clean_metadata(nbformat.read(str(tmp), as_version=4))
                    nbformat.write(nb, str(path))
                finally:
                    tmp.unlink(missing_ok=True)
    finally:
        if saved is not None:
            os.environ[NBVAL_ENV] = saved


# --------------------------------------------------------------------------------------------- command line
def _cmd_notebooks(a):
    if a.refresh_committed:
        if a.parameter or a.only or a.adaptive:
            raise KitError("--refresh-committed runs the notebooks at their committed defaults: drop -p / --only / "
                           "--adaptive")
        refresh_committed(timeout=a.timeout)
        return
    params = {}
    for name, value in a.parameter:
        params[name] = _literal(value)
    results = run_notebooks(a.out, params, timeout=a.timeout, only=a.only, adaptive=a.adaptive)
    print(f"[notebooks] wrote {len(results)} executed notebooks and their .metrics.json files into "
          f"{os.path.abspath(a.out)}")


def register(subparsers):
    runs = ", ".join(r[0] for r in ALL_RUNS)
    s = subparsers.add_parser(
        "notebooks", help="run the notebooks with papermill (train1, train2, test and caption for both decoders)",
        description="Runs notebooks/train1, train2, test (both checkpoints) and caption (both checkpoints) with "
                    "papermill, in that order (with --adaptive then train2, test and caption for the adaptive "
                    "decoder), writing the executed copies, their .metrics.json files, the "
                    "checkpoints and the generated shapes data into --out. Example for COCO on a GPU: "
                    "-p data_folder data/coco -p data_name coco_5_cap_per_img_5_min_word_freq "
                    "-p encoder_weights imagenet -p device cuda -p workers 4 -p epochs 20 --timeout 0")
    s.add_argument("--out", default="outputs/notebooks", help="folder for everything the notebooks write "
                                                              "(default: outputs/notebooks)")
    s.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="set a notebook parameter in every notebook that has it; VALUE is a Python literal "
                        "(3, 1e-3, None, True) or else a string")
    s.add_argument("--timeout", type=float, default=1800,
                   help="seconds one cell may run (papermill execution_timeout; 0: no limit — use it for long "
                        "GPU training). Default 1800")
    s.add_argument("--only", nargs="+", metavar="RUN", help=f"run only these, in the usual order: {runs}")
    s.add_argument("--adaptive", action="store_true",
                   help="also train, test and caption with the reference adaptive-attention decoder (runs "
                        "train_adaptive, test_adaptive, caption_adaptive: train2, test and caption with "
                        "-p decoder adaptive)")
    s.add_argument("--refresh-committed", action="store_true",
                   help="maintainers: re-execute notebooks/*.ipynb in place at their defaults, keeping the outputs "
                        "that `make test` (nbval) compares against")
    s.set_defaults(func=_cmd_notebooks)
    return s
