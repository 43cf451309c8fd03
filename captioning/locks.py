"""One run at a time per folder: a second ``train`` building the same feature cache waits for the first; a second
``prepare`` into the same folder stops at once. Both say which run holds the folder (pid, command, start time).

An advisory ``fcntl.flock`` on a lock file in the folder: the kernel releases it when its holder exits, however it
exits (``kill -9`` included), so a stale lock never blocks anyone. The holder removes the file when it is done.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time

from captioning.errors import KitError


def _acquire(path, wait, what):
    """An open file at ``path`` that this process holds the lock of."""
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "another process"
            if not wait:
                fh.close()
                raise KitError(f"{what} is in use by another run ({other}): wait for it to finish, or use another "
                               f"folder") from None
            print(f"waiting for another run to finish {what} ({other}) …", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file meanwhile: then lock the new one
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


@contextlib.contextmanager
def folder_lock(folder, name, wait=True, what="this folder"):
    """Hold ``folder/.lock-<name>`` for the block. Held by another run: wait for it (``wait``; a message says so),
    else raise KitError naming the other run."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f".lock-{name}")
    fh = _acquire(path, wait, what)
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, `{' '.join(sys.argv)[:200]}`, since {time.strftime('%H:%M:%S')}")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fh.close()  # releases the lock


def training_lock(cfg):
    """One training run per decoder, data and output folder: a second ``fit`` that would overwrite the first's
    checkpoints stops at once, naming it. Under torchrun only rank 0 (the one that writes) takes it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    from captioning.config import make_output_dir  # here: prepare imports this module, and need not load torch

    make_output_dir(cfg)
    return folder_lock(cfg["output_dir"], f"train-{cfg['decoder']}-{cfg['data_name']}", wait=False,
                       what=f"training the {cfg['decoder']} decoder into {cfg['output_dir']}")
