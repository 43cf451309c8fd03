"""Write a file so that its name never points at half-written content: write a temporary file beside it, then
rename it over the real name (``os.replace`` is atomic on one filesystem). The one helper every writer uses."""
from __future__ import annotations

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path`` to write to; when the block succeeds it becomes ``path``, when it
    raises (or is interrupted) the temporary file is removed. ``suffix`` ends the temporary name (e.g. ".png" for
    writers that choose the format by extension). The name holds the process id, so two processes writing the
    same file never write into one temporary file."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj, path, indent=1):
    """``json.dump(obj)`` into ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
    return path


def write_text(text, path):
    """``text`` into ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
