"""What makes a grading batch survive the grader's death: one journal entry per graded submission, written
atomically as soon as it is graded, keyed by what decides its score (the submission's files, the hidden tests,
the rubric, the reference, the limits and the run's seed). Re-running the same command grades only what has no valid
entry and writes the same ``grades.csv``.

``.work/`` (sandbox folders) and the cgroups of a killed run are removed at the next start, under the run lock.

The hidden inputs and weights are drawn from a secret seed per output folder (``run_seed``): drawn from
``os.urandom`` by the first run, kept in ``journal/seed`` so that a resumed run uses the same one (and an audit can
reproduce every input: ``hidden_harness.Context(reference, seed=…)``), and never sent to a sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from captioning.internals.atomic import write_json, write_text

HERE = Path(__file__).resolve().parent
# the files whose code decides a score (a change in any of them invalidates every journal entry)
SCORING_FILES = (
    "hidden_tests.py",
    "hidden_init_tests.py",
    "hidden_attention_tests.py",
    "hidden_checks.py",
    "hidden_harness.py",
    "child.py",
    "child_errors.py",
    "wire.py",
    "job.py",
    "sandbox_outputs.py",
    "remote.py",
)


def _hash_files(h, paths):
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
        h.update(b"\0")


def grader_key(rubric_path, reference_models, opts):
    """What, besides a submission's own files, decides its score."""
    h = hashlib.sha256()
    _hash_files(h, [HERE / f for f in SCORING_FILES] + [rubric_path, reference_models])
    h.update(json.dumps(opts, sort_keys=True).encode())
    return h.hexdigest()


def submission_key(grader, staged):
    """``grader`` (grader_key) + the content of every file staged from the submission."""
    h = hashlib.sha256(grader.encode())
    staged = Path(staged)
    for dirpath, dirnames, filenames in sorted(os.walk(staged)):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            h.update(os.fsencode(p.relative_to(staged).as_posix()) + b"\0")  # a non-UTF-8 name too
            fh = hashlib.sha256()
            with open(p, "rb") as f:  # in chunks: a staged checkpoint may be 256 MiB
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    fh.update(chunk)
            h.update(fh.digest())
    return h.hexdigest()


SEED_FILE = "seed"  # not "<id>.json": no submission's entry can have this name


def run_seed(folder):
    """The secret seed (64 hex digits) of the grading runs into the journal ``folder``: read from ``folder/seed``,
    or drawn from ``os.urandom`` and written there (atomically) when there is none or it is not valid (every
    journal entry is then graded again: the seed is part of their key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        text = (folder / SEED_FILE).read_text(encoding="ascii").strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    seed = os.urandom(32).hex()
    write_text(seed + "\n", folder / SEED_FILE)
    os.chmod(folder / SEED_FILE, 0o600)
    return seed


class Journal:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, sid):
        return self.folder / f"{sid}.json"

    def get(self, sid, key):
        """The journalled result of ``sid`` when it was graded with ``key``, else None."""
        try:
            entry = json.loads(self._path(sid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("result"), dict):
            return None
        return entry["result"]

    def put(self, sid, key, result):
        write_json({"key": key, "result": result}, self._path(sid))
