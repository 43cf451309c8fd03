"""The machinery of checkpoint files: a checksum over every value of a state dict, the size of its tensors, a
file object that keeps the disk's own error, and the read-back check run before a checkpoint is renamed into
place (``captioning.checkpoints`` uses them)."""

from __future__ import annotations

import hashlib
import os

import torch

from captioning.internals.errors import KitError

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


def tensor_bytes(x):
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(tensor_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(tensor_bytes(v) for v in x)
    return 0


class ErrorKeepingWriter:
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


def read_back_check(digest, path):
    def verify(tmp):
        try:
            back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
            ok = checksum(back) == digest
        except Exception:  # unreadable: as bad as different
            ok = False
        if not ok:
            raise KitError(
                f"checkpoint '{path}' did not read back as written (a full or failing disk?): it was not "
                f"replaced; check the disk of {os.path.dirname(os.path.abspath(path))} or choose another "
                f"output_dir"
            ) from None

    return verify
