"""The prepared files of one data name are one set: ``prepare`` writes ``MANIFEST_{base}.json`` (the set's id,
which every HDF5 file also carries, and the sha256 of every JSON file) and readers check it, so that a set mixed
from two runs (a ``prepare`` killed while it renamed its files into place) is refused instead of trained on.

Files without a manifest (written by other tools, or by an older kit) are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os

import h5py

from captioning.internals.atomic import write_json
from captioning.internals.errors import KitError


def manifest_path(folder, base):
    return os.path.join(folder, f"MANIFEST_{base}.json")


def set_id_of(obj):
    """A deterministic id of what a prepare run writes (the same inputs give the same id, and the same files)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder, base, set_id, names, status):
    """``status`` "renaming" before the files are moved into place, "complete" after."""
    files = {n: _sha256(os.path.join(folder, n)) if n.endswith(".json") else "hdf5" for n in names}
    write_json({"set_id": set_id, "status": status, "files": files}, manifest_path(folder, base))


def check_prepared(folder, base):
    """KitError when ``folder`` holds a manifest for ``base`` that its files do not match."""
    path = manifest_path(folder, base)
    if not os.path.isfile(path):
        return
    redo = "run `python -m captioning prepare` again (same --output-folder)"
    try:
        with open(path, encoding="utf-8") as fh:
            m = json.load(fh)
        files, set_id = m["files"], m["set_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise KitError(f"'{path}' is unreadable: {redo}") from None
    if m.get("status") != "complete":
        raise KitError(
            f"the prepared files in '{folder}' are incomplete: a prepare run stopped while moving them "
            f"into place ({path} says so); {redo}"
        )
    for name, digest in files.items():
        p = os.path.join(folder, name)
        try:
            if digest == "hdf5":
                with h5py.File(p, "r") as f:
                    same = f.attrs.get("set_id") == set_id
            else:
                same = _sha256(p) == digest
        except OSError:
            same = False
        if not same:
            raise KitError(
                f"the prepared files in '{folder}' are a mixed set: {name} does not come from the "
                f"prepare run that wrote the others (or it changed since); {redo}"
            )
