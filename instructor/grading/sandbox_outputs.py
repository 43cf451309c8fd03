"""What comes back from a submission's sandbox, made safe to keep in a result: messages made printable and cut
(``clip``), the tail of a log its process filled (``tail_of``), and the BLEU-4 numbers its notebook run wrote
(``notebook_result``, reading only regular files of bounded size: ``read_regular``). Everything here is untrusted
input; ``job.py`` uses it to build a submission's result.
"""

from __future__ import annotations

import json
import math
import os
import stat

from instructor.grading.outputs import plain

MAX_MESSAGE = 1500  # characters of one message (an exception's text may be megabytes): cut once, stored once


def clip(text, limit=MAX_MESSAGE):
    """``text`` (any object) printable (``outputs.plain``) and at most ``limit`` characters, saying how much was
    cut: each message is cut here once, where it enters a result."""
    text = plain(text, newlines=True)
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters cut]"


MAX_METRICS_BYTES = 1 << 20  # a metrics file is a few hundred bytes


def read_regular(path, limit):
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else None. The folder it is in was
    writable by the student's process: a symbolic link is not followed (``O_NOFOLLOW``), a FIFO or device is not
    opened for reading (``lstat`` first, ``O_NONBLOCK`` so that even a swapped-in FIFO cannot block the open) and
    the size is checked on the open file."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def tail_of(path, n):
    """The last ``n`` bytes of the file ``path`` (a log the student's process filled: never read whole)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read(n)
    except OSError:
        return b""


def notebook_result(out_dir, log, returncode, timed_out):
    """{run: BLEU-4} from the ``<run>.metrics.json`` files the notebooks runner wrote, and how the run ended.
    ``out_dir`` was written by the student's process: only regular files are read, bounded (``read_regular``)."""
    found = {}
    try:
        is_dir = stat.S_ISDIR(os.lstat(out_dir).st_mode)  # a link to another folder is not followed either
        entries = sorted(e.name for e in os.scandir(out_dir)) if is_dir else []
    except OSError:
        entries = []
    for name in entries[:1000]:
        if not name.endswith(".metrics.json"):
            continue
        data = read_regular(os.path.join(out_dir, name), MAX_METRICS_BYTES)
        try:
            m = json.loads(data.decode("utf-8")) if data is not None else None
        except (ValueError, RecursionError):
            continue
        if isinstance(m, dict):
            v = m.get("bleu4", m.get("best_bleu4"))
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                found[clip(name[: -len(".metrics.json")], 80)] = float(v)
    errors = [ln[len("error:") :].strip() for ln in log.splitlines() if ln.startswith("error:")]
    status = "timeout" if timed_out else ("ok" if returncode == 0 else "failed")
    message = errors[-1] if errors else ("" if status == "ok" else f"exit status {returncode}")
    return {"status": status, "returncode": returncode, "bleu4": found, "message": clip(message)}
