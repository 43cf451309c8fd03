"""One run at a time per folder: a second ``train`` building the same feature cache waits for the first; a second
``prepare`` into the same folder stops at once. Both say which run holds the folder (pid, command, start time).
Training holds its data shared (``data_lock``): any number of runs read it, and ``prepare`` into that folder stops
at once instead of replacing the files under them (a run would finish on new captions with the old word map).

An advisory ``fcntl.flock`` on a lock file in the folder: the kernel releases it when its holder exits, however it
exits (``kill -9`` included), so a stale lock never blocks anyone. The holder removes the file when it is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time

from captioning.internals.errors import KitError


def _acquire(path, wait, what):
    """An open file at ``path`` that this process holds the lock of."""
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = _holders(fh.read()) or "another process"
            if not wait:
                fh.close()
                raise KitError(
                    f"{what} is in use by another run ({other}): wait for it to finish, or use another folder"
                ) from None
            print(f"waiting for another run to finish {what} ({other}) …", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file meanwhile: then lock the new one
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


def _holders(text):
    """The lines of a lock file whose process still runs (shared holders append a line each and leave it)."""
    lines = []
    for line in text.strip().splitlines():
        m = re.match(r"pid (\d+)", line)
        try:
            if m:
                os.kill(int(m[1]), 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        lines.append(line.strip())
    return "; ".join(lines)


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
    checkpoints stops at once, naming it. Under torchrun only rank 0 (the one that writes) takes it. The caller
    has made ``cfg["output_dir"]`` (``config.make_output_dir``)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return folder_lock(
        cfg["output_dir"],
        f"train-{cfg['decoder']}-{cfg['data_name']}",
        wait=False,
        what=f"training the {cfg['decoder']} decoder into {cfg['output_dir']}",
    )


DATA_LOCK = "data-{data_name}"  # ``prepare`` holds it exclusively while it writes, training shared while it reads


@contextlib.contextmanager
def data_lock(folder, data_name):
    """Hold the prepared data ``data_name`` in ``folder`` shared for the block: training runs share it, a
    ``prepare`` of that data into that folder (which holds it exclusively) stops at once naming them. While a
    prepare is writing, this waits for it (a message says so). A folder the lock file cannot be written in (read
    only, or missing: the reader reports that) is read without it: nothing can prepare into it either."""
    path = os.path.join(folder, f".lock-{DATA_LOCK.format(data_name=data_name)}")
    while True:
        try:
            fh = open(path, "a+")
        except OSError:
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            print(
                f"waiting for a prepare run to finish writing '{data_name}' in {folder} "
                f"({_holders(fh.read()) or 'another process'}) …",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(fh, fcntl.LOCK_SH)
        try:  # the prepare before us removes its lock file when done: then hold the new one
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        fh.write(f"pid {os.getpid()}, `{' '.join(sys.argv)[:200]}`, since {time.strftime('%H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock; the file stays for the other readers
