"""Checkpoints: written atomically and checked before the rename, carrying a checksum of their contents that
``load_checkpoint`` verifies, and loaded without ever executing code from the file (``weights_only=True``)."""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

from captioning.atomic import NO_ROOM, atomic_path, no_room_message
from captioning.datasets import word_map_path
from captioning.errors import KitError


def word_map_id(word_map):
    """Identity of a word map (sha256 of its canonical JSON), stored in checkpoints."""
    return hashlib.sha256(json.dumps(word_map, sort_keys=True).encode()).hexdigest()[:16]


# The sha256 over every value of a checkpoint (tensor bytes included) is stored under this key; ``load_checkpoint``
# recomputes it. A file damaged after it was written (a bad copy, a failing disk) then stops with a message naming
# it instead of loading weights that caption "a with a a a a" with BLEU-4 0.000.
CHECKSUM = "sha256"


def checksum(state):
    """sha256 (hex) over ``state`` without its ``CHECKSUM`` entry: each tensor's dtype, shape and raw bytes, and the
    repr of every other value, walked in a fixed order (dict keys sorted), each under its key path."""
    h = hashlib.sha256()

    def walk(x, where):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{where}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            for k in sorted(x, key=repr):
                if not (where == "" and k == CHECKSUM):
                    walk(x[k], f"{where}/{k!r}")
        elif isinstance(x, (list, tuple)):
            h.update(f"{where}:{type(x).__name__}{len(x)};".encode())
            for i, v in enumerate(x):
                walk(v, f"{where}/{i}")
        else:
            h.update(f"{where}={type(x).__name__}:{x!r};".encode())

    walk(state, "")
    return h.hexdigest()


def _tensor_bytes(x):
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_tensor_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_tensor_bytes(v) for v in x)
    return 0


class _Writer:
    """A binary file for ``torch.save`` that keeps the first OSError of a write: torch turns it into a bare
    ``RuntimeError: … unexpected pos``, which says nothing of the disk."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data):
        try:
            return self.fh.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.fh.flush()


def _verify(digest, path):
    def verify(tmp):
        try:
            back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
            ok = checksum(back) == digest
        except Exception:  # unreadable: as bad as different
            ok = False
        if not ok:
            raise KitError(f"checkpoint '{path}' did not read back as written (a full or failing disk?): it was not "
                           f"replaced; check the disk of {os.path.dirname(os.path.abspath(path))} or choose another "
                           f"output_dir") from None
    return verify


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
        with atomic_path(path, verify=_verify(digest, path)) as tmp:
            with open(tmp, "wb") as fh:
                writer = _Writer(fh)
                torch.save(state, writer)
                fh.flush()
                os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:
        error = (writer and writer.error) or (e if isinstance(e, OSError) else None)
        if error is None:
            raise
        kept = (f"; '{path}' still holds the previous checkpoint" if os.path.isfile(path) else "")
        if error.errno in NO_ROOM:
            raise KitError(no_room_message(path, error, _tensor_bytes(state), "choose another output_dir")
                           + kept) from None
        raise KitError(f"cannot write checkpoint '{path}': {error.strerror or error}; choose another output_dir"
                       + kept) from None
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
            raise KitError(f"'{path}' holds Python objects besides tensors and plain values: the kit never loads "
                           f"those, since unpickling them could run code from the file. Use a checkpoint written "
                           f"by this kit (save_checkpoint)") from None
        raise KitError(f"'{path}' is not a checkpoint this kit can load safely ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "decoder_state" not in ckpt:
        raise KitError(f"'{path}' is not a checkpoint written by this kit (no 'format'/'decoder_state' entries)")
    if CHECKSUM not in ckpt:
        print(f"warning: checkpoint '{path}' has no checksum (written by a version of the kit before checksums): "
              f"loaded without checking that its weights are intact", file=sys.stderr, flush=True)
    elif checksum(ckpt) != ckpt[CHECKSUM]:
        raise KitError(f"checkpoint '{path}' is damaged: its weights do not match the checksum written with them "
                       f"(the file changed after it was saved: an incomplete copy, a failing disk). Copy it again "
                       f"from where it came from, use another checkpoint (e.g. the latest or BEST_ beside it), or "
                       f"train again")
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
