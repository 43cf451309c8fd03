"""Shared by the benchmark scripts: the header every script prints (command line, machine, threads) and a timer.

Not a benchmark itself. The scripts run as ``python benchmarks/<name>.py`` from the repository root, which puts
this folder on ``sys.path``.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


DEFAULT_THREADS = 1
THREADS_HELP = (
    "torch intra-op threads, the same for both sides (default 1; 0 = all CPUs). One thread by default: "
    "on a machine shared with other busy processes, several threads wait for each other at every op "
    "(4x slower steps were measured with 2 threads on a loaded 2-core machine)"
)


def setup(threads, title):
    """Set torch's intra-op threads (the same for both sides of every comparison) and print the header."""
    import torch  # here, not at the top: memory.py's children must not pay for it

    threads = DEFAULT_THREADS if threads is None else threads
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"== {title} ==")
    print(f"command : {shlex.join(['python'] + sys.argv)}")
    print(f"date    : {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine : {cpu_model()}, os.cpu_count() = {os.cpu_count()}, usable CPUs = {usable}, "
        f"load average (1/5/15 min) at start = {load}"
    )
    print(
        f"software: python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()} (both sides), "
        f"interop threads = {torch.get_num_interop_threads()}"
    )
    print(flush=True)
    return threads


def load_note():
    """One line with the load average now: other processes on the machine slow both sides alike only roughly."""
    if not hasattr(os, "getloadavg"):
        return ""
    return "load average (1/5/15 min) at end = " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


class Timer:
    """Accumulates wall-clock seconds over several ``with timer:`` blocks."""

    def __init__(self):
        self.seconds = 0.0
        self.count = 0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds += time.perf_counter() - self._t0
        self.count += 1
        return False


def table(headers, rows, aligns=None):
    """A plain-text table: headers (list of str), rows (lists of str), aligns ('<' or '>' per column)."""
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda r: "  ".join(f"{str(x):{a}{w}}" for x, a, w in zip(r, aligns, widths))  # noqa: E731
    lines = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def timed(cmd, log, cwd=None, env=None):
    """(wall seconds, peak RSS MB) of the process ``cmd`` (start to exit); its output goes to ``log``. ``env``:
    variables added to this process's environment."""
    with open(log, "w") as f:
        t0 = time.monotonic()
        p = subprocess.Popen(
            cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TQDM_DISABLE="1", **(env or {}))
        )
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage (and its waited-for children's)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{Path(log).read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def recipe_epoch_cfg(work, decoder, output_dir, **overrides):
    """The cfg of one epoch of the notebooks' ``decoder`` ("rnn" or "attention") on the shapes recipe's data and
    encoder under ``work``/data (made there on first use), on the CPU, without progress bars or loader workers."""
    from captioning.data.recipe import RECIPE, decoder_cfg
    from captioning.notebooks import encoder_settings, ensure_data

    data = ensure_data(os.path.join(work, "data"), "shapes_5_cap_per_img_5_min_word_freq")
    cfg = dict(
        decoder_cfg(RECIPE, decoder),
        data_folder=data["data_folder"],
        data_name=data["data_name"],
        output_dir=output_dir,
        overwrite=True,
        workers=0,
        print_freq=0,
        device="cpu",
        seed=0,
        epochs=1,
        progress=False,
        **encoder_settings(data, progress=False),
    )
    return dict(cfg, **overrides)
