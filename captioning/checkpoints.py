"""Checkpoints and the run folder they live in.

* Checkpoints are written atomically and checked before the rename, carry a checksum of their contents that
  ``load_checkpoint`` verifies, and are loaded without ever executing code from the file (``weights_only=True``).
* ``RunFolder`` — the run in ``output_dir``: where ``train`` starts (afresh, continuing the run already there, or
  from ``checkpoint=``), what it refuses (replacing a run it was not asked to replace), and BEST kept in step with
  the history. A re-run never replaces a finished run unless ``overwrite=True`` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from tqdm.auto import tqdm

from captioning.config import DEFAULT_CFG
from captioning.datasets import word_map_path
from captioning.internals.atomic import NO_ROOM, atomic_path, no_room_message, remove_stale_temporaries
from captioning.internals.checksums import CHECKSUM, ErrorKeepingWriter, checksum, read_back_check, tensor_bytes
from captioning.internals.errors import KitError


def word_map_id(word_map):
    """Identity of a word map (sha256 of its canonical JSON), stored in checkpoints."""
    return hashlib.sha256(json.dumps(word_map, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(state, path):
    """Write ``state`` (plus its ``CHECKSUM``) to ``path`` atomically, read it back and check it before it is
    renamed into place: a crash, a full disk or a bad write never leaves a truncated or damaged checkpoint under
    the real name, and the previous checkpoint of that name stays as it was. No room on the disk is a KitError
    naming the folder and its free space."""
    state = {k: v for k, v in state.items() if k != CHECKSUM}
    digest = checksum(state)
    state[CHECKSUM] = digest
    writer = None
    try:
        with atomic_path(path, verify=read_back_check(digest, path)) as tmp:
            with open(tmp, "wb") as fh:
                writer = ErrorKeepingWriter(fh)
                torch.save(state, writer)
                fh.flush()
                os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:
        error = (writer and writer.error) or (e if isinstance(e, OSError) else None)
        if error is None:
            raise
        kept = f"; '{path}' still holds the previous checkpoint" if os.path.isfile(path) else ""
        if error.errno in NO_ROOM:
            raise KitError(
                no_room_message(path, error, tensor_bytes(state), "choose another output_dir") + kept
            ) from None
        raise KitError(
            f"cannot write checkpoint '{path}': {error.strerror or error}; choose another output_dir" + kept
        ) from None
    return path


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this kit; never executes code from the file (``weights_only=True``). Its ``CHECKSUM``
    is verified: a damaged file is a KitError naming it; a checkpoint from before checksums loads with a warning."""
    if not os.path.isfile(path):
        raise KitError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise KitError(
                f"'{path}' holds Python objects besides tensors and plain values: the kit never loads "
                f"those, since unpickling them could run code from the file. Use a checkpoint written "
                f"by this kit (save_checkpoint)"
            ) from None
        raise KitError(
            f"'{path}' is not a checkpoint this kit can load safely ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "decoder_state" not in ckpt:
        raise KitError(f"'{path}' is not a checkpoint written by this kit (no 'format'/'decoder_state' entries)")
    if CHECKSUM not in ckpt:
        print(
            f"warning: checkpoint '{path}' has no checksum (written by a version of the kit before checksums): "
            f"loaded without checking that its weights are intact",
            file=sys.stderr,
            flush=True,
        )
    elif checksum(ckpt) != ckpt[CHECKSUM]:
        raise KitError(
            f"checkpoint '{path}' is damaged: its weights do not match the checksum written with them "
            f"(the file changed after it was saved: an incomplete copy, a failing disk). Copy it again "
            f"from where it came from, use another checkpoint (e.g. the latest or BEST_ beside it), or "
            f"train again"
        )
    missing = [k for k in REQUIRED if k not in ckpt] + [
        f"cfg['{k}']" for k in ("data_folder", "data_name", "decoder") if k not in (ckpt.get("cfg") or {})
    ]
    if missing:
        raise KitError(
            f"checkpoint '{path}' lacks {', '.join(missing)}: it was changed or is incomplete; use "
            f"another checkpoint or train again"
        )
    return ckpt


REQUIRED = (
    "cfg",
    "kind",
    "decoder_type",
    "epoch",
    "word_map",
    "word_map_id",
    "vocab_size",
    "encoder_dim",
    "decoder_optimizer",
    "history",
    "best_bleu4",
    "epochs_since_improvement",
)


def load_weights(module, state, what, path, assign=False):
    """``module.load_state_dict(state, assign=assign)``; a state of other shapes or names is a KitError naming
    the checkpoint. ``assign``: the module takes the state's tensors (a module built on the meta device)."""
    try:
        module.load_state_dict(state, assign=assign)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()
        raise KitError(
            f"checkpoint '{path}': its {what} weights do not fit the {what} its cfg describes "
            f"({first[0] if first else type(e).__name__} …): the file was changed or comes from "
            f"another version of the model; use another checkpoint or train again"
        ) from None


def data_folder_of(cfg, checkpoint):
    """The folder of the data a checkpoint was trained on: its stored ``data_folder`` when that still holds the
    word map, else the same folder name beside the checkpoint, else ``data`` beside it (where the notebooks keep
    their data); KitError listing what was tried."""
    stored = cfg["data_folder"]
    here = os.path.dirname(os.path.abspath(checkpoint))
    tried = [stored, os.path.join(here, os.path.basename(os.path.normpath(stored))), os.path.join(here, "data")]
    for folder in dict.fromkeys(tried):
        if os.path.isfile(word_map_path(folder, cfg["data_name"])):
            return folder
    raise KitError(
        f"checkpoint '{checkpoint}' was trained on data_folder '{stored}', which holds no "
        f"WORDMAP_{cfg['data_name']}.json (nor does {' or '.join(repr(t) for t in tried[1:])}): give the "
        f"data folder (--data-folder / data_folder)"
    )


def check_compatible(ckpt, cfg, word_map, path):
    if ckpt["decoder_type"] != cfg["decoder"]:
        raise KitError(
            f"checkpoint '{path}' holds a '{ckpt['decoder_type']}' decoder ({ckpt['kind']}) but cfg asks "
            f"for '{cfg['decoder']}': set attention/decoder to match, or start without the checkpoint"
        )
    if ckpt["word_map_id"] != word_map_id(word_map):
        raise KitError(
            f"checkpoint '{path}' was trained with another word map ({ckpt['vocab_size']} words) than "
            f"{word_map_path(cfg['data_folder'], cfg['data_name'])} ({len(word_map)} words): use the data "
            f"it was trained on, or start without the checkpoint"
        )
    for key in ("embed_dim", "decoder_dim", "attention_dim", "encoder", "encoded_image_size"):
        if ckpt["cfg"].get(key) != cfg.get(key):
            raise KitError(f"checkpoint '{path}' has {key} = {ckpt['cfg'].get(key)!r} but cfg has {cfg.get(key)!r}")


def history_of(path):
    """The per-epoch metric history stored in a checkpoint."""
    return load_checkpoint(path)["history"]


# ---------------------------------------------------------------------------------------- the run in output_dir


def model_files(decoder):
    """The source files of ``decoder``'s class and of the encoder."""
    from captioning import adaptive, encoder, models

    return [(adaptive if decoder == "adaptive" else models).__file__, encoder.__file__]


def code_id(decoder):
    """Identity (sha256, 16 hex digits) of ``model_files(decoder)``: a run continued after that code changed would
    mix two models, so a changed file (a student's TODOs, say) makes a run already in output_dir another run."""
    h = hashlib.sha256()
    for path in model_files(decoder):
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


class RunFolder:
    """The checkpoints of one run (one decoder on one data) in ``cfg["output_dir"]``: the latest, rewritten after
    every epoch, and BEST. ``say``: prints a message (a no-op on the ranks that do not write)."""

    def __init__(self, cfg, kind, word_map, say=tqdm.write):
        self.cfg, self.word_map, self.say, self.code_id = cfg, word_map, say, code_id(cfg["decoder"])
        self.ckpt_path = os.path.join(cfg["output_dir"], f"checkpoint_{kind}_{cfg['data_name']}.pth.tar")
        self.best_path = os.path.join(cfg["output_dir"], f"BEST_checkpoint_{kind}_{cfg['data_name']}.pth.tar")

    def remove_stale(self):
        """Remove what a run killed mid-save left (~170 MB each with ResNet-101); the caller holds the folder."""
        names = {os.path.basename(self.ckpt_path), os.path.basename(self.best_path)}
        for gone in remove_stale_temporaries(self.cfg["output_dir"], names):
            self.say(f"removed {gone}: a checkpoint that a stopped run had not finished writing")

    def nothing_left(self, ckpt, best_bleu4):
        """``ckpt`` has all of cfg's epochs: an error for checkpoint= (as asked, it cannot go on), a message for
        the run already in output_dir (this command's job is done)."""
        cfg = self.cfg
        if cfg["checkpoint"]:
            raise KitError(
                f"checkpoint '{cfg['checkpoint']}' already finished epoch {ckpt['epoch']}: with epochs = "
                f"{cfg['epochs']} there is nothing left to train; set epochs to more than "
                f"{ckpt['epoch'] + 1}"
            )
        self.say(
            f"{self.ckpt_path} already holds this run with all its {cfg['epochs']} epochs (best validation "
            f"BLEU-4 {best_bleu4:.4f}): nothing left to train, nothing changed. To train it again from epoch 0: "
            f"overwrite=True or another output_dir"
        )

    def starting_point(self):
        """(checkpoint dict or None, its path or None). Without cfg["checkpoint"], a run already in output_dir is
        continued when its settings match and refused otherwise: a re-run never replaces a finished run unless
        overwrite=True says so."""
        cfg, out = self.cfg, self.cfg["output_dir"]
        here = os.path.isfile(self.ckpt_path)
        if cfg["checkpoint"]:
            source = cfg["checkpoint"]
            ckpt = load_checkpoint(source)
            check_compatible(ckpt, cfg, self.word_map, source)
            if here and not cfg["overwrite"] and not any(same(source, p) for p in (self.ckpt_path, self.best_path)):
                raise KitError(
                    f"output_dir '{out}' already holds another run of the {cfg['decoder']} decoder "
                    f"({self.ckpt_path}, {describe(self.ckpt_path)}); continuing '{source}' there would "
                    f"replace it. Nothing was changed: choose another output_dir, or set overwrite=True to replace it"
                )
            return ckpt, source
        if not here:
            if os.path.isfile(self.best_path) and not cfg["overwrite"]:
                raise KitError(
                    f"output_dir '{out}' holds {os.path.basename(self.best_path)} but not the latest "
                    f"checkpoint {os.path.basename(self.ckpt_path)}: training would replace it. Nothing "
                    f"was changed: resume from it with checkpoint={self.best_path}, choose another "
                    f"output_dir, or set overwrite=True to replace it"
                )
            return None, None
        if cfg["overwrite"]:
            self.say(f"overwrite=True: training from epoch 0; the run in '{out}' is replaced as the new epochs finish")
            return None, None
        try:
            ckpt = load_checkpoint(self.ckpt_path)
        except KitError as e:
            raise KitError(
                f"{e}. (train found it in output_dir '{out}' to continue that run; start afresh with "
                f"overwrite=True or another output_dir)"
            ) from None
        differ = self.differences(ckpt)
        if differ:
            raise KitError(
                f"output_dir '{out}' already holds a run of the {cfg['decoder']} decoder ({self.ckpt_path}, "
                f"{done(ckpt)}) with other settings: {'; '.join(differ)}. Nothing was changed. To continue that run, "
                f"give its settings; to keep it and train this one, choose another output_dir; to continue from it "
                f"with these settings, checkpoint={self.ckpt_path}; to replace it, overwrite=True (in a training "
                f"notebook: overwrite = True in its parameters cell)"
            )
        if ckpt["epoch"] + 1 < cfg["epochs"]:
            self.say(
                f"resuming the run in '{out}' at epoch {ckpt['epoch'] + 1} of {cfg['epochs']}: {self.ckpt_path} "
                f"holds {done(ckpt)} with these settings (overwrite=True starts afresh)"
            )
        elif cfg["epochs"] < ckpt["cfg"].get("epochs", cfg["epochs"]):
            raise KitError(
                f"output_dir '{out}' already holds a longer run with these settings ({self.ckpt_path}, "
                f"{done(ckpt)}); epochs = {cfg['epochs']} would not replace it. Nothing was changed: "
                f"choose another output_dir for a {cfg['epochs']}-epoch run, or set overwrite=True to "
                f"replace it"
            )
        return ckpt, self.ckpt_path

    # settings that change neither the numbers a run computes nor which run it is
    NOT_COMPARED = (
        "epochs",
        "checkpoint",
        "overwrite",
        "output_dir",
        "device",
        "workers",
        "progress",
        "print_freq",
        "feature_cache",
        "fast_decoder",
    )

    def differences(self, ckpt):
        """What makes the run in ``ckpt`` another run than this cfg's: settings, word map, model code."""
        old, cfg = ckpt["cfg"], self.cfg
        out = []
        for key in DEFAULT_CFG:
            if key in self.NOT_COMPARED:
                continue
            was, now = old.get(key, DEFAULT_CFG[key]), cfg[key]
            if key == "data_folder":
                was, now = os.path.abspath(was), os.path.abspath(now)
            if was != now:
                out.append(f"{key} = {was!r} there, {now!r} now")
        if ckpt["word_map_id"] != word_map_id(self.word_map):
            out.append(f"the word map of {cfg['data_folder']} is not the one it was trained with")
        if ckpt.get("code_id") not in (None, self.code_id):
            files = " or ".join(os.path.basename(f) for f in model_files(cfg["decoder"]))
            out.append(f"the model code (captioning/{files}: your TODOs?) changed since")
        return out

    def check_best(self, ckpt, source, best_bleu4):
        """Make BEST hold the epoch the history marks best. A run stopped between writing the latest checkpoint
        and BEST left an older BEST (repaired from the latest); a run continued into a new output_dir has no BEST
        there (taken from the checkpoint it continues, or the BEST beside it)."""
        best = [h["epoch"] for h in ckpt["history"] if h.get("best")]
        if not best:
            return
        want, row = best[-1], next(h for h in ckpt["history"] if h["epoch"] == best[-1])
        if holds_epoch(self.best_path, want, row):
            return
        was = os.path.isfile(self.best_path)
        src = source
        if ckpt["epoch"] != want:  # the best epoch's weights: only a BEST beside the continued checkpoint has them
            name = os.path.basename(src)
            src = os.path.join(os.path.dirname(src), name if name.startswith("BEST_") else f"BEST_{name}")
            if same(src, self.best_path) or not holds_epoch(src, want, row):
                self.say(
                    f"warning: no checkpoint of epoch {want}, the best by the history of '{source}', was "
                    f"found ({self.best_path} {'holds another epoch' if was else 'does not exist'}): BEST_ will "
                    f"be written when a new epoch beats its BLEU-4 ({best_bleu4:.4f})"
                )
                return
            ckpt = load_checkpoint(src)
        save_checkpoint(ckpt, self.best_path)
        self.say(
            f"{'repaired' if was else 'wrote'} {self.best_path} from '{src}': epoch {want}, the best by the "
            f"history" + (" (it held another epoch: a run stopped between writing the two checkpoints)" if was else "")
        )


def same(a, b):
    """Are ``a`` and ``b`` one existing file?"""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def done(ckpt):
    """ "4 of 10 epochs done, best validation BLEU-4 0.1130 at epoch 2" for a loaded checkpoint (epochs counted
    from 0, as the per-epoch lines print them)."""
    best = [h["epoch"] for h in ckpt["history"] if h.get("best")]
    return (
        f"{ckpt['epoch'] + 1} of {ckpt['cfg'].get('epochs', '?')} epochs done, best validation BLEU-4 "
        f"{ckpt['best_bleu4']:.4f}" + (f" at epoch {best[-1]}" if best else "")
    )


def describe(path):
    """``done`` of the checkpoint at ``path``, or "unreadable"."""
    try:
        return done(load_checkpoint(path))
    except KitError:
        return "unreadable"


def holds_epoch(path, epoch, row):
    """Does the checkpoint at ``path`` hold ``epoch`` with the history row ``row`` (the same run's)? Read memory-
    mapped: only the entries, not the weights; the weights are checked when it is loaded."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return ck["epoch"] == epoch and ck["history"][-1] == row
    except Exception:  # missing or unreadable: it does not
        return False
