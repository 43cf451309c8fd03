"""How many CPU threads a command-line run gives PyTorch: the CPUs that are idle when it starts.

PyTorch uses one intra-op thread per core. On a machine that other busy processes share, those threads wait for
each other at every operation while one of them is descheduled, and a run with fewer threads finishes sooner
(``benchmarks/peer.py --load 2`` measures both sides under load). So the CLI counts the CPUs that other processes
leave idle while it starts up and uses that many threads, at least 1 and at most the CPUs this process may run on.
``OMP_NUM_THREADS`` in the environment overrides it, as it does for PyTorch.
"""

from __future__ import annotations

import os
import time


def _sample():
    """(idle CPU-seconds, all CPU-seconds, this process's CPU-seconds, wall seconds) so far; None where there is
    no /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / tick, sum(fields[:8]) / tick, time.process_time(), time.monotonic()


_START = None


def start():
    """Take the first sample (``python -m captioning`` does, before its imports): :func:`idle_cpus` then measures
    over the start-up instead of waiting."""
    global _START
    _START = _sample()


def idle_cpus(min_interval=0.1):
    """CPUs that the *other* processes left idle since :func:`start` (or over ``min_interval`` seconds): this
    process's own start-up work counts as idle. A float, or None where /proc/stat cannot say."""
    first = _START or _sample()
    if first is not None and time.monotonic() - first[3] < min_interval:
        time.sleep(min_interval - (time.monotonic() - first[3]))
    second = _sample()
    if first is None or second is None or second[1] <= first[1]:
        return None
    idle, total, own = (b - a for a, b in zip(first[:3], second[:3]))
    cpus = os.cpu_count() or 1
    return min(cpus, (idle + own) / total * cpus)


def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_threads(environ=os.environ, idle=None):
    """(threads, why): ``OMP_NUM_THREADS`` when set, else the idle CPUs rounded (measured now unless ``idle`` is
    given), between 1 and the usable CPUs."""
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS is set"
    usable = usable_cpus()
    idle = idle_cpus() if idle is None else idle
    if idle is None:
        return usable, "idle CPUs unknown"
    return max(1, min(usable, int(idle + 0.5))), f"{idle:.1f} of {usable} CPUs idle at start"


def set_threads(note=print):
    """Give torch the threads :func:`choose_threads` picks; ``note`` a line when that is fewer than the CPUs."""
    import torch

    threads, why = choose_threads()
    if threads is None:
        return torch.get_num_threads()
    torch.set_num_threads(threads)
    if threads < usable_cpus():
        note(f"note: {why}: using {threads} CPU thread{'s' if threads > 1 else ''} (OMP_NUM_THREADS=N to choose)")
    return threads
