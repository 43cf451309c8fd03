"""Checkpoints: written atomically, loaded without ever executing code from the file (``weights_only=True``)."""
from __future__ import annotations

import hashlib
import json
import os

import torch

from captioning.atomic import atomic_path
from captioning.datasets import word_map_path
from captioning.errors import KitError


def word_map_id(word_map):
    """Identity of a word map (sha256 of its canonical JSON), stored in checkpoints."""
    return hashlib.sha256(json.dumps(word_map, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(state, path):
    """Write atomically: a crash mid-save never leaves a truncated checkpoint under the real name."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this kit; never executes code from the file (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise KitError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise KitError(f"'{path}' holds Python objects besides tensors and plain values: the kit never loads "
                           f"those, since unpickling them could run code from the file. Use a checkpoint written "
                           f"by this kit (save_checkpoint)") from None
        raise KitError(f"'{path}' is not a checkpoint this kit can load safely ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "decoder_state" not in ckpt:
        raise KitError(f"'{path}' is not a checkpoint written by this kit (no 'format'/'decoder_state' entries)")
    missing = [k for k in REQUIRED if k not in ckpt] + [f"cfg['{k}']" for k in ("data_folder", "data_name", "decoder")
                                                       if k not in (ckpt.get("cfg") or {})]
    if missing:
        raise KitError(f"checkpoint '{path}' lacks {', '.join(missing)}: it was changed or is incomplete; use "
                       f"another checkpoint or train again")
    return ckpt


REQUIRED = ("cfg", "kind", "decoder_type", "epoch", "word_map", "word_map_id", "vocab_size", "encoder_dim",
            "decoder_optimizer", "history", "best_bleu4", "epochs_since_improvement")


def load_weights(module, state, what, path, assign=False):
    """``module.load_state_dict(state, assign=assign)``; a state of other shapes or names is a KitError naming
    the checkpoint. ``assign``: the module takes the state's tensors (a module built on the meta device)."""
    try:
        module.load_state_dict(state, assign=assign)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()
        raise KitError(f"checkpoint '{path}': its {what} weights do not fit the {what} its cfg describes "
                       f"({first[0] if first else type(e).__name__} …): the file was changed or comes from "
                       f"another version of the model; use another checkpoint or train again") from None


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
    raise KitError(f"checkpoint '{checkpoint}' was trained on data_folder '{stored}', which holds no "
                   f"WORDMAP_{cfg['data_name']}.json (nor does {' or '.join(repr(t) for t in tried[1:])}): give the "
                   f"data folder (--data-folder / data_folder)")


def check_compatible(ckpt, cfg, word_map, path):
    if ckpt["decoder_type"] != cfg["decoder"]:
        raise KitError(f"checkpoint '{path}' holds a '{ckpt['decoder_type']}' decoder ({ckpt['kind']}) but cfg asks "
                       f"for '{cfg['decoder']}': set attention/decoder to match, or start without the checkpoint")
    if ckpt["word_map_id"] != word_map_id(word_map):
        raise KitError(f"checkpoint '{path}' was trained with another word map ({ckpt['vocab_size']} words) than "
                       f"{word_map_path(cfg['data_folder'], cfg['data_name'])} ({len(word_map)} words): use the data "
                       f"it was trained on, or start without the checkpoint")
    for key in ("embed_dim", "decoder_dim", "attention_dim", "encoder", "encoded_image_size"):
        if ckpt["cfg"].get(key) != cfg.get(key):
            raise KitError(f"checkpoint '{path}' has {key} = {ckpt['cfg'].get(key)!r} but cfg has {cfg.get(key)!r}")
