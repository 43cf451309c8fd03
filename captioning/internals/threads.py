"""How many CPU threads PyTorch uses: chosen at start and adapted while a run goes on, so that runs that share the
cores each get about their share instead of stalling one another.

Why. PyTorch uses one intra-op thread per core. When other busy processes share the cores (two students' notebooks
on a course server), one of those threads is often descheduled and the others wait for it at every operation: two
notebook runs with 2 threads each on 2 cores took about 10x their solo time instead of 2x (issue 30). With one
thread each they take about 1x-1.5x. So:

* at start the kit counts the CPUs that *other* processes leave idle (measured over the start-up) and uses that
  many threads, at least 1 and at most the CPUs this process may run on;
* while a run goes on (``adapt()``, called between batches) it measures again every ``interval`` seconds: the CPUs
  the other processes used (``/proc/stat`` minus this process's own CPU time) and the share of this process's
  runnable time its threads spent waiting for a CPU (``/proc/self/task/*/schedstat``). It lowers the threads at
  once when they do not fit, and raises them again only after several samples in a row with a CPU to spare (more
  after each lowering: load that comes and goes does not make it flap);
* ``OMP_NUM_THREADS`` in the environment, or an explicit number (the notebooks' ``threads``), fixes the threads.

The decisions (:func:`decide`, :func:`initial_threads`, :func:`load_between`) are pure functions of the measured
numbers; :class:`Governor` reads the samples and applies the decisions (both injectable for tests).

This module imports only the standard library, ``captioning.internals.errors`` and (inside functions) torch.
"""

from __future__ import annotations

import dataclasses
import os
import time

from captioning.internals.cpu_load import Load, Sample, load_between, machine_cpus, read_sample, usable_cpus  # noqa: F401
from captioning.internals.errors import KitError

# ------------------------------------------------------------------------------------------------- deciding


@dataclasses.dataclass(frozen=True)
class Policy:
    """The thresholds of :func:`decide`.

    * ``margin``: lower the threads when the free CPUs are fewer than ``threads - margin``;
    * ``spare``: raise them when the free CPUs are at least ``threads + spare`` ...
    * ``up_after``: ... in that many samples in a row, doubled after each lowering up to ``up_after * max_backoff``
      (a competitor that comes and goes would otherwise make the threads flap);
    * ``wait_limit``: lower them too when the threads waited for a CPU more than this share of their time (the
      other processes' CPU time does not show that where the machine's counters are not this process's CPUs).
    """

    margin: float = 0.5
    spare: float = 0.75
    up_after: int = 3
    max_backoff: int = 8
    wait_limit: float = 0.3


@dataclasses.dataclass(frozen=True)
class State:
    """What :func:`decide` remembers between samples: the samples in a row with a CPU to spare, and how many times
    the threads were lowered (the backoff)."""

    spare_streak: int = 0
    lowered: int = 0


def initial_threads(free, usable):
    """Threads to start with when ``free`` CPUs (None: unknown) are left idle by other processes: the free CPUs
    rounded, at least 1 and at most ``usable``."""
    if free is None:
        return usable
    return max(1, min(usable, int(free + 0.5)))


def decide(threads, load, usable, state=State(), policy=Policy()):
    """(threads, state, why) after one interval's ``load`` (a :class:`Load`, or None when nothing was measured).

    Lowers at once to the free CPUs rounded (at least 1) when ``threads`` do not fit in them, or when the threads
    waited for a CPU more than ``policy.wait_limit`` of their time; raises by the spare CPUs only after
    ``policy.up_after`` (times the backoff) samples in a row with at least ``policy.spare`` CPUs to spare; else
    keeps ``threads``. ``why`` is a short text for a log, '' when nothing changed."""
    if load is None:
        return threads, state, ""
    free = min(usable, load.free)
    if threads > 1 and free < threads - policy.margin:
        new = max(1, min(threads - 1, int(free + 0.5)))
        return new, State(0, state.lowered + 1), f"other processes used {load.others:.1f} of {load.machine} CPUs"
    if threads > 1 and load.waiting is not None and load.waiting > policy.wait_limit:
        new = max(1, min(threads - 1, int(threads * (1 - load.waiting) + 0.5)))
        return new, State(0, state.lowered + 1), f"the threads waited {load.waiting:.0%} of their time for a CPU"
    quiet = load.waiting is None or load.waiting <= policy.wait_limit / 2
    if threads < usable and free >= threads + policy.spare and quiet:
        streak = state.spare_streak + 1
        needed = policy.up_after * min(2**state.lowered, policy.max_backoff)
        if streak >= needed:
            new = min(usable, threads + max(1, int(free - threads + 0.25)))
            return new, State(0, state.lowered), f"{free:.1f} CPUs free for {streak} samples"
        return threads, State(streak, state.lowered), ""
    return threads, State(0, state.lowered), ""


# ------------------------------------------------------------------------------------------------ environment

WAIT_POLICIES = ("ACTIVE", "PASSIVE")


def env_threads(environ=os.environ):
    """The thread count ``OMP_NUM_THREADS`` fixes, or None when it is unset or empty; a KitError saying what to do
    when it is not a whole number ≥ 1 (OpenMP's nested list "4,2": its first number)."""
    raw = environ.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw.split(",")[0])
    except ValueError:
        value = 0
    if value < 1:
        raise KitError(
            f"the environment variable OMP_NUM_THREADS={raw!r} is not a whole number of threads >= 1: "
            f"set it to the number of CPU threads to use (e.g. OMP_NUM_THREADS=1), or unset it and the "
            f"kit picks them and lowers them while other processes compete for the CPUs"
        )
    return value


def check_wait_policy(environ=os.environ):
    """``OMP_WAIT_POLICY`` upper-cased, or None when unset; a KitError when it is neither ACTIVE nor PASSIVE (OpenMP
    would ignore it silently)."""
    raw = environ.get("OMP_WAIT_POLICY", "").strip()
    if not raw:
        return None
    if raw.upper() not in WAIT_POLICIES:
        raise KitError(
            f"the environment variable OMP_WAIT_POLICY={raw!r} is neither ACTIVE nor PASSIVE: set one of "
            f"them, or unset it"
        )
    return raw.upper()


SPINCOUNT = "10000"  # GNU OpenMP's busy-wait rounds before a waiting thread sleeps (its default: 300,000)


def prefer_short_spin(environ=os.environ, modules=None):
    """Before torch is imported: ``GOMP_SPINCOUNT=10000`` unless the environment sets it or ``OMP_WAIT_POLICY``.
    Returns whether the setting can still take effect (OpenMP reads it once, when torch loads it).

    Why: at the end of each operation an OpenMP thread waits for the others. By default it spins for 300,000 rounds
    (milliseconds): when one thread is descheduled by another process, the others burn the CPU it needs — with two
    fixed threads beside other busy processes a short training run took 42-60 s spinning, 9-11 s passive, 13-20 s
    with 10,000 rounds. Never spinning (``OMP_WAIT_POLICY=PASSIVE``) costs the most when the machine is idle: a thread
    that sleeps between the many small operations of a decoder step is woken for each, and an attention-decoder
    epoch of the notebooks' recipe took 51-61 s passive, 25-36 s with the default spin and 24-28 s with 10,000 rounds
    (docs/results.md, *The wait policy*). A short spin is the best of both. The kit's own choice of threads goes
    down to one under load, where there is nothing to wait for; this covers a fixed ``threads`` and the moments
    before the threads are lowered. (LLVM's OpenMP, e.g. on macOS, reads ``KMP_BLOCKTIME`` instead; left as it is.)
    """
    import sys

    if "torch" in (sys.modules if modules is None else modules):
        return False
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)
    return True


# --------------------------------------------------------------------------------------------- applying

_START = None


def start():
    """Take the first sample (``python -m captioning`` does, before its imports): :func:`idle_cpus` then measures
    over the start-up instead of waiting."""
    global _START
    _START = read_sample()


def free_cpus(min_interval=0.1, machine=None):
    """CPUs that the *other* processes left idle since :func:`start` (or over ``min_interval`` seconds): this
    process's own start-up work counts as idle. A float, or None where /proc/stat cannot say."""
    first = _START or read_sample()
    if first is not None and time.monotonic() - first.wall < min_interval:
        time.sleep(min_interval - (time.monotonic() - first.wall))
    load = load_between(first, read_sample(), machine or machine_cpus())
    return None if load is None else load.free


idle_cpus = free_cpus  # the name the command line used before the threads adapted


class Governor:
    """Applies :func:`decide` every ``interval`` seconds of a run: ``tick()`` between batches.

    ``sampler`` (→ :class:`Sample` or None), ``clock`` and ``apply`` (sets the threads) are injectable; ``history``
    keeps (seconds since start, threads, why) for every change, the start included."""

    def __init__(
        self,
        threads,
        usable=None,
        machine=None,
        sampler=read_sample,
        clock=time.monotonic,
        apply=None,
        interval=0.5,
        policy=Policy(),
        note=None,
    ):
        self.threads, self.usable = threads, usable or usable_cpus()
        self.machine = machine or machine_cpus()
        self.sampler, self.clock, self.interval, self.policy, self.note = sampler, clock, interval, policy, note
        self.apply = apply or _torch_set_num_threads
        self.state = State()
        self.t0 = self.last_time = clock()
        self.last = sampler()
        self.history = [(0.0, threads, "start")]

    def tick(self):
        """Measure and decide when ``interval`` has passed since the last sample; returns the threads."""
        now = self.clock()
        if now - self.last_time < self.interval:
            return self.threads
        sample = self.sampler()
        load = load_between(self.last, sample, self.machine)
        self.last, self.last_time = sample, now
        new, self.state, why = decide(self.threads, load, self.usable, self.state, self.policy)
        if new != self.threads:
            self.apply(new)
            self.threads = new
            self.history.append((round(now - self.t0, 2), new, why))
            if self.note:
                self.note(f"note: {why}: now {new} CPU thread{'s' if new > 1 else ''}")
        return self.threads


def _torch_set_num_threads(n):
    import torch

    torch.set_num_threads(n)


_GOVERNOR = None


def adapt():
    """Between batches: let the governor of :func:`auto` (if any) measure and adapt the threads. Cheap when there
    is none or its interval has not passed."""
    if _GOVERNOR is not None:
        _GOVERNOR.tick()


def governor():
    """The governor :func:`auto` installed, or None (fixed threads)."""
    return _GOVERNOR


def stop():
    """Stop adapting (the threads stay as they are): the command line does after its command, so that code that
    calls it in-process (tests) does not adapt later."""
    global _GOVERNOR
    _GOVERNOR = None


def fixed(threads):
    """Give torch ``threads`` (0: PyTorch's default) and stop adapting them; returns the threads torch uses."""
    global _GOVERNOR
    import torch

    _GOVERNOR = None
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def auto(note=None, environ=os.environ):
    """Choose the threads (``OMP_NUM_THREADS`` when set: fixed; else the free CPUs, adapted by :func:`adapt`
    while the run goes on) and give them to torch; returns (threads, why)."""
    global _GOVERNOR
    check_wait_policy(environ)
    pinned = env_threads(environ)
    if pinned is not None:
        fixed(pinned)
        return pinned, "OMP_NUM_THREADS is set"
    usable, machine = usable_cpus(), machine_cpus()
    free = free_cpus(machine=machine)
    threads = initial_threads(None if free is None else min(free, usable), usable)
    _torch_set_num_threads(threads)
    _GOVERNOR = Governor(threads, usable=usable, machine=machine, note=note)
    why = "CPUs free unknown" if free is None else f"{free:.1f} of {usable} CPUs free at start"
    return threads, why


def choose_threads(environ=os.environ, idle=None):
    """(threads, why) at start: (None, ...) when ``OMP_NUM_THREADS`` fixes them, else the free CPUs rounded
    (measured now unless ``idle`` is given), between 1 and the usable CPUs."""
    if env_threads(environ) is not None:
        return None, "OMP_NUM_THREADS is set"
    usable = usable_cpus()
    idle = idle_cpus() if idle is None else idle
    if idle is None:
        return usable, "idle CPUs unknown"
    return initial_threads(idle, usable), f"{idle:.1f} of {usable} CPUs idle at start"


def set_threads(note=print, adaptive=True):
    """The command line's threads: :func:`choose_threads`, then (``adaptive``) adapted between batches;
    ``note`` a line when that is fewer than the CPUs at start, and a line at each change."""
    global _GOVERNOR
    import torch

    check_wait_policy()
    threads, why = choose_threads()
    if threads is None:
        _GOVERNOR = None
        return torch.get_num_threads()
    torch.set_num_threads(threads)
    _GOVERNOR = Governor(threads, note=note) if adaptive else None
    if threads < usable_cpus():
        note(f"note: {why}: using {threads} CPU thread{'s' if threads > 1 else ''} (OMP_NUM_THREADS=N to choose)")
    return threads
