"""Where ``test`` and ``caption`` write: the place checked before the work starts (an error after an hour of beam
search would lose it), and every file read back before it is renamed into place (``atomic.atomic_path``), so that
a full disk or a lost write never leaves a file that looks finished. Failures are KitErrors naming the file, the
error and what to do."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from captioning.internals.atomic import atomic_path
from captioning.internals.errors import KitError

MIN_FREE = 1 << 20  # bytes a place must have free before the work starts (a metrics JSON or a figure is smaller)


def check_folder(folder, setting, what="files"):
    """Create ``folder`` if needed and make sure a file can be written there and 1 MB is free; a KitError naming
    ``what`` is written, the folder and ``setting`` (the option that chooses it) otherwise. Returns the folder."""
    folder = os.fspath(folder) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise KitError(
            f"cannot write {what} into {folder} ({e.strerror or e}): choose another place with "
            f"{setting}, or make that folder writable. Nothing was done"
        ) from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE:
        raise KitError(
            f"cannot write {what} into {folder}: its disk is full ({free // 1024} KB free). Free some "
            f"space or choose another place with {setting}. Nothing was done"
        )
    return folder


def check_file(path, setting, what=None):
    """``check_folder`` for the folder ``path`` will be written in; a KitError if ``path`` is a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise KitError(f"{setting} {path} is a folder: name a file in it, e.g. {os.path.join(path, 'scores.json')}")
    check_folder(os.path.dirname(os.path.abspath(path)), setting, what or f"{os.path.basename(path)}")
    return path


def _write_error(path, e, setting, done):
    full = {28: " (the disk is full: free some space)", 27: " (the file size limit was reached)"}.get(
        getattr(e, "errno", None), ""
    )
    return KitError(
        f"cannot write {path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}{full}. "
        f"{done}A file of that name from before, if any, is as it was; run again with another {setting} "
        f"or after fixing the place"
    )


def write_json(obj, path, setting="--out", done=""):
    """``obj`` as JSON into ``path``, read back before the rename; a KitError naming the file on any failure.
    ``done``: what the message should add about the work that is safe anyway (e.g. "The scores are printed
    above. ")."""
    text = json.dumps(obj, indent=1)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            with open(tmp, encoding="utf-8") as fh:
                if fh.read() != text:
                    raise OSError("the file read back differs from what was written (a lost write)")
    except OSError as e:
        raise _write_error(path, e, setting, done) from None
    return path


def save_figure(fig, path, setting="--out"):
    """``figures.save`` (checked PNG, atomic) with a KitError naming the file on failure."""
    from captioning.evaluation.figures import save

    try:
        return save(fig, path)
    except OSError as e:
        raise _write_error(path, e, setting, "") from None
