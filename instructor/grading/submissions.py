"""The submissions of a folder (``discover``) and their staging (``stage``): the files grading needs are copied out
of each folder or .zip (checked: no path traversal, no links, bounded sizes) before any student code runs."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from captioning.internals.errors import KitError

MAX_MEMBERS = 2000
MAX_FILE_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 512 * 2**20
MAX_MODELS_BYTES = 2 * 2**20
MAX_ID_CHARS = 80  # ids name files (journal/ID.json, feedback/ID.md) and cgroups: well under NAME_MAX (255)
# OSErrors that say the grader's machine is short of something (not that the submission is malformed)
GRADER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EROFS, errno.EIO}


class SubmissionError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@dataclass
class Submission:
    id: str
    source: Path
    models: Path | None = None
    notebooks: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def discover(subs_dir, out=None):
    """The submissions of ``subs_dir``: every folder and every .zip (hidden entries and other files ignored)."""
    subs_dir = Path(subs_dir)
    if not subs_dir.is_dir():
        raise KitError(f"submissions folder '{subs_dir}' does not exist or is not a folder")
    out = Path(out).resolve() if out else None
    subs, seen = [], set()
    for entry in sorted(subs_dir.iterdir()):
        if entry.name.startswith((".", "_")) or entry.is_symlink():
            continue
        if out is not None and entry.resolve() == out:
            continue
        if entry.is_dir():
            stem = entry.name
        elif entry.is_file() and entry.suffix.lower() == ".zip":
            stem = entry.stem
        else:
            continue
        # ids never start with "." or "_": the grader's own folders under .work/ do (no collision possible)
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "submission"
        if len(base) > MAX_ID_CHARS:  # a 300-character name: shortened, kept unique by a hash of the whole name
            digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
            base = f"{base[: MAX_ID_CHARS - 9]}-{digest}"
        sid, k = base, 2
        while sid in seen:
            sid, k = f"{base}-{k}", k + 1
        seen.add(sid)
        subs.append(Submission(sid, entry))
    return subs


def _wanted(rel, with_extras):
    parts = rel.split("/")
    if any(p in ("__MACOSX", ".ipynb_checkpoints", "__pycache__", ".git") for p in parts):
        return None
    name = parts[-1]
    if name.startswith("._"):
        return None
    if name == "models.py":
        return "models"
    if with_extras and name.endswith(".ipynb"):
        return "notebook"
    if with_extras and (name.endswith(".pth.tar") or name.endswith(".pth")):
        return "checkpoint"
    return None


def _safe_rel(name):
    rel = name.replace("\\", "/")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or any(p == ".." for p in rel.split("/")):
        return None
    return "/".join(p for p in rel.split("/") if p not in ("", "."))


def stage(sub, dest, with_extras=False):
    """Copy the files of ``sub`` that grading needs into ``dest`` (checked: no path traversal, no links, bounded
    sizes); fill in sub.models / notebooks / checkpoints. Raises SubmissionError."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if sub.source.is_dir():
            picked = _stage_folder(sub.source, dest, with_extras)
        else:
            picked = _stage_zip(sub.source, dest, with_extras)
        return _choose_models(sub, picked)
    except OSError as e:
        raise _os_error(e, "") from None


def _os_error(e, rel):
    """The SubmissionError of an OSError met while copying ``rel`` out: the grader's machine short of something
    (disk, memory, file handles) is a grader-error; anything else (a 300-character name, a file and a folder of the
    same name, an unreadable file) is the submission's."""
    where = f"'{_printable(rel)}': " if rel else ""
    if e.errno in GRADER_ERRNOS:
        return SubmissionError("grader-error", f"the grader could not stage the submission ({where}{e.strerror or e})")
    return SubmissionError(
        "bad-submission", f"cannot copy out {where}{e.strerror or e} — rename or remove that entry and submit again"
    )


def _printable(name, limit=120):
    """``name`` for a message: non-UTF-8 bytes and control characters shown as escapes, long names cut."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace") if isinstance(name, str) else str(name)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _target(dest, rel):
    p = (dest / rel).resolve()
    if os.path.commonpath([p, dest.resolve()]) != str(dest.resolve()):
        raise SubmissionError("bad-submission", f"unsafe path '{_printable(rel)}'")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _stage_folder(source, dest, with_extras):
    """[(rel, kind, path in dest)] of the wanted files of the folder ``source``, copied into ``dest``."""
    picked = []
    total = 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for f in sorted(filenames):
            count += 1
            if count > MAX_MEMBERS:
                raise SubmissionError("bad-submission", f"more than {MAX_MEMBERS} files")
            src = Path(dirpath) / f
            rel = src.relative_to(source).as_posix()
            kind = _wanted(rel, with_extras)
            if kind is None or src.is_symlink() or not src.is_file():
                continue
            size = src.stat().st_size
            total += size
            if size > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                raise SubmissionError(
                    "bad-submission",
                    f"'{_printable(rel)}' is too large (limit "
                    f"{MAX_FILE_BYTES >> 20} "
                    f"MiB per file, {MAX_TOTAL_BYTES >> 20} MiB in all)",
                )
            try:
                dst = _target(dest, rel)
                shutil.copyfile(src, dst)
            except OSError as e:
                raise _os_error(e, rel) from None
            picked.append((rel, kind, dst))
    return picked


def _stage_zip(source, dest, with_extras):
    """[(rel, kind, path in dest)] of the wanted members of the zip file ``source``, extracted into ``dest``."""
    picked = []
    total = 0
    try:
        zf = zipfile.ZipFile(source)
    except Exception as e:  # noqa: BLE001 - BadZipFile, a non-UTF-8 name (UnicodeDecodeError), a bad header...
        raise SubmissionError(
            "bad-submission",
            f"not a readable zip file ({type(e).__name__}: "
            f"{_printable(str(e))}): zip the folder again, with plain file "
            f"names",
        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise SubmissionError("bad-submission", f"more than {MAX_MEMBERS} entries in the zip")
        for info in infos:
            rel = _safe_rel(info.filename)
            if rel is None:
                raise SubmissionError(
                    "bad-submission",
                    f"unsafe path '{_printable(info.filename)}' in the zip (absolute or with '..'): not extracted",
                )
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise SubmissionError("bad-submission", f"symbolic link '{_printable(info.filename)}' in the zip")
            if info.is_dir() or not rel:
                continue
            kind = _wanted(rel, with_extras)
            if kind is None:
                continue
            if info.flag_bits & 0x1:
                raise SubmissionError("bad-submission", f"'{_printable(rel)}' is encrypted")
            try:
                dst = _target(dest, rel)
            except OSError as e:
                raise _os_error(e, rel) from None
            total = _extract(zf, info, rel, dst, total)
            picked.append((rel, kind, dst))
    return picked


def _extract(zf, info, rel, dst, total):
    """Unpack one member into ``dst`` in bounded chunks; the bytes unpacked so far in all (``total`` + this one)."""
    written = 0
    try:
        with zf.open(info) as src, open(dst, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                written += len(chunk)
                total += len(chunk)
                if written > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                    raise SubmissionError(
                        "bad-submission",
                        f"'{_printable(rel)}' unpacks to too many bytes (limit "
                        f"{MAX_FILE_BYTES >> 20} MiB per file, "
                        f"{MAX_TOTAL_BYTES >> 20} MiB in all)",
                    )
                out.write(chunk)
    except SubmissionError:
        raise
    except OSError as e:
        raise _os_error(e, rel) from None
    except Exception as e:  # noqa: BLE001 - a corrupt deflate stream (zlib.error), a bad CRC, an unknown method...
        raise SubmissionError(
            "bad-submission", f"cannot extract '{_printable(rel)}': {type(e).__name__}: {_printable(str(e), 300)}"
        ) from None
    return total


def _choose_models(sub, picked):
    """The shallowest models.py (``captioning/models.py`` first among equals) becomes sub.models."""
    models = sorted((p for p in picked if p[1] == "models"), key=lambda p: (p[0].count("/"), p[0]))
    if not models:
        raise SubmissionError("no-models", "no models.py in the submission")
    best = [m for m in models if m[0].count("/") == models[0][0].count("/")]
    chosen = next((m for m in best if m[0].endswith("captioning/models.py")), best[0])
    if len(models) > 1:
        sub.notes.append(f"graded {_printable(chosen[0])} (the submission holds {len(models)} models.py files)")
    if chosen[2].stat().st_size > MAX_MODELS_BYTES:
        raise SubmissionError("bad-submission", f"{_printable(chosen[0])} is larger than {MAX_MODELS_BYTES >> 20} MiB")
    sub.models = chosen[2]
    sub.notebooks = [p for rel, k, p in picked if k == "notebook"]
    sub.checkpoints = [p for rel, k, p in picked if k == "checkpoint"]
    return sub
