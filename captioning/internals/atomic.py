"""Write a file so that its name never points at half-written content: write a temporary file beside it, check
it, then rename it over the real name (``os.replace`` is atomic on one filesystem). The one helper every writer
uses."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil

from captioning.internals.errors import KitError

# ``.{name}.{pid}.tmp{suffix}``: the temporary names ``atomic_path`` gives out
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp(?P<suffix>[.\w]*)$")
# write errors that mean "no room": a full disk, a full quota, a file-size limit
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path, suffix="", verify=None):
    """Yield a temporary path beside ``path`` to write to; when the block succeeds (and ``verify(tmp)``, when
    given, returns without raising) it becomes ``path``; when either raises (or the process is interrupted) the
    temporary file is removed and ``path`` keeps its old content. ``suffix`` ends the temporary name (e.g. ".png"
    for writers that choose the format by extension). The name holds the process id, so two processes writing the
    same file never write into one temporary file, and a later run can tell a dead writer's leftover
    (``remove_stale_temporaries``)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder, names=None):
    """Remove the temporary files that writers killed mid-write left in ``folder`` (their pid is no longer alive;
    a ResNet-101 checkpoint's is ~170 MB). ``names``: only those of these final names. Returns the removed paths."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = TEMP_NAME.match(entry)
        if not m or (names is not None and m["name"] not in names) or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
    return removed


def no_room_message(path, error, needed=None, elsewhere="write it elsewhere"):
    """The message for a write of ``path`` that failed for want of space (``error``: the OSError): names the
    folder, its free space and what to do (free space, or ``elsewhere``, e.g. "choose another output_dir")."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    need = f", about {needed / 2**20:.1f} MB needed" if needed else ""
    if error.errno == errno.EFBIG:
        cause = f"the file is larger than this process may write (a file-size limit, `ulimit -f`; {free}{need})"
        return f"cannot write {os.path.basename(path)} in {folder}: {cause}; raise the limit or {elsewhere}"
    return (
        f"no space left on {folder} while writing {os.path.basename(path)} ({free}{need}): free some space "
        f"there or {elsewhere}"
    )


def _verify_text(text):
    def verify(tmp):
        with open(tmp, encoding="utf-8") as fh:
            if fh.read() != text:
                raise KitError(
                    f"{tmp} does not read back as written (a full disk or a failing one?): nothing was "
                    f"replaced; check the disk and run again"
                )

    return verify


def write_text(text, path):
    """``text`` into ``path`` atomically; read back and compared before it is renamed into place. A full disk is a
    KitError naming the folder and its free space, and the old ``path`` is left as it was."""
    try:
        with atomic_path(path, verify=_verify_text(text)) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as e:
        if e.errno in NO_ROOM:
            raise KitError(no_room_message(path, e, len(text.encode()))) from None
        raise
    return path


def write_json(obj, path, indent=1):
    """``json.dump(obj)`` into ``path`` atomically (via ``write_text``: verified before the rename)."""
    return write_text(json.dumps(obj, indent=indent), path)
