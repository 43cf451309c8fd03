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
        raise KitError(f"'{path}' is not a checkpoint this kit can load safely ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "decoder_state" not in ckpt:
        raise KitError(f"'{path}' is not a checkpoint written by this kit (no 'format'/'decoder_state' entries)")
    return ckpt


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
