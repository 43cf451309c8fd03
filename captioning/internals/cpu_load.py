"""Measuring CPU load for ``captioning.internals.threads``: samples of the machine's CPU counters
(``/proc/stat``), this process's CPU time and its threads' waits for a CPU (``/proc/self/task/*/schedstat``), and
the load between two samples (a pure function)."""

from __future__ import annotations

import dataclasses
import os
import time


@dataclasses.dataclass(frozen=True)
class Sample:
    """Counters at one moment, all in seconds: the machine's CPU time (``total`` of all CPUs, ``idle`` of them),
    this process's CPU time (``own``, all threads), the time its threads waited runnable for a CPU (``waited``,
    None where the kernel does not say) and the monotonic clock (``wall``)."""

    wall: float
    total: float
    idle: float
    own: float
    waited: float | None = None


@dataclasses.dataclass(frozen=True)
class Load:
    """What happened between two samples. ``others``: CPUs busy with other processes (0 to ``machine``);
    ``waiting``: share (0..1) of this process's runnable time spent waiting for a CPU, or None; ``machine``: the
    machine's CPUs; ``seconds``: the interval."""

    others: float
    machine: int
    waiting: float | None = None
    seconds: float = 1.0

    @property
    def free(self):
        """CPUs this process could have had: the machine's CPUs less those the others used."""
        return max(0.0, self.machine - self.others)


def machine_cpus():
    """The CPUs ``/proc/stat`` counts (its ``cpuN`` lines), else ``os.cpu_count()``."""
    try:
        with open("/proc/stat") as fh:
            n = sum(1 for line in fh if line.startswith("cpu") and line[3:4].isdigit())
        if n:
            return n
    except OSError:
        pass
    return os.cpu_count() or 1


def usable_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _waited():
    """Seconds that this process's threads spent runnable but waiting for a CPU (the second field of each
    ``/proc/self/task/<tid>/schedstat``), or None where there is no such file."""
    total, seen = 0, False
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[1])
                seen = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if seen else None


def read_sample():
    """A :class:`Sample` now, or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: idle and iowait are CPU time nobody used
    return Sample(
        wall=time.monotonic(),
        total=sum(fields[:8]) / tick,
        idle=(fields[3] + fields[4]) / tick,
        own=time.process_time(),
        waited=_waited(),
    )


def load_between(first, second, machine):
    """The :class:`Load` between two samples of a machine with ``machine`` CPUs; None when they cannot say (no
    CPU time counted between them)."""
    if first is None or second is None or second.total <= first.total:
        return None
    total, idle, own = second.total - first.total, second.idle - first.idle, second.own - first.own
    # /proc/stat counts in clock ticks and process_time more finely: clip what the rounding can push out of range
    others = min(machine, max(0.0, (total - idle - own) / total * machine))
    waiting = None
    if first.waited is not None and second.waited is not None:
        waited = max(0.0, second.waited - first.waited)  # a thread that ended takes its count with it
        waiting = waited / (waited + own) if waited + own > 0 else 0.0
    return Load(others=others, machine=machine, waiting=waiting, seconds=second.wall - first.wall)
