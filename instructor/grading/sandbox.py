"""The OS sandbox a submission's process runs in, one per submission.

Layers (``probe_layers`` finds which this machine has; the grader refuses to run without one unless told to):

* ``bwrap`` (bubblewrap, ``apt-get install bubblewrap``): own network namespace (no network; loopback only), own PID
  namespace (every descendant dies with it; the grader is not visible), the host's unprivileged user 65534
  without capabilities (``setpriv``), a root file system holding only read-only ``/usr``, ``/etc``, the Python
  installation and its site-packages, the submission's folder at ``/sandbox`` and a private ``/tmp``; nothing of
  the kit (no reference solution, no hidden tests), of the grader's output or of other submissions is in that
  view.
* ``seccomp`` (with bwrap, on x86-64 and aarch64; ``seccomp.py``): the keyring system calls and new namespaces
  (``unshare``, ``setns``, ``clone`` with a namespace flag; ``clone3``) fail, so nothing is shared between
  sandboxes through the kernel keyring and no process gains capabilities in a user namespace of its own.
* ``cgroup-memory`` / ``cgroup-pids`` (cgroup v1 controllers): one group per submission limits the memory and the
  number of tasks of ALL its processes together; at the end every process left in it is killed and the group
  removed.

Plus, always: a new session (process group), resource limits set between fork and exec (address space per
process, no core dumps, 1 GiB files, a CPU-time budget: ``cpu_budget``) and a minimal environment.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from instructor.grading import seccomp

LAYERS = ("bwrap", "cgroup-memory", "cgroup-pids")
INSTALL_HINT = "apt-get install -y bubblewrap"
BASE_ADDRESS_SPACE_MB = 8192  # ceiling allowance for what Python + torch map at import (per process)
BASE_MEMORY_MB = 1024  # what Python + torch take (resident, all processes of one sandbox) besides --memory-mb
MAX_TASKS = 64  # processes + threads of one sandbox
FILE_SIZE_LIMIT = 2**30
CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_PREFIX = "grade-"
# Limits are CPU time (the child's per-request timer, ITIMER_PROF), so a busy machine does not cost a correct
# submission its points; wall-clock limits are only a backstop for code that sleeps or disables its timer.
WALL_BACKSTOP = 5
# The timer lives in the submission's process, which can cancel it; RLIMIT_CPU (set from outside, in ``preexec``)
# cannot be raised from inside: the kernel stops a process that spins past its whole budget (see ``cpu_budget``).
CPU_STARTUP_S = 60  # CPU seconds for Python, torch and models.py's module level, beyond the tests' own
CPU_HARD_EXTRA_S = 2  # SIGXCPU at the budget; SIGKILL this much later, for a process that ignores SIGXCPU


# --------------------------------------------------------------------------------------------------------- layers
def _own_cgroup(controller):
    """The folder of this process's cgroup (v1) of ``controller``, or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            d = CGROUP_ROOT / controller / path.lstrip("/")
            return d if d.is_dir() else None
    return None


def _cgroup_writable(controller):
    base = _own_cgroup(controller)
    if base is None:
        return False, f"no cgroup v1 '{controller}' controller mounted under {CGROUP_ROOT}"
    probe = base / f"{GROUP_PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return False, f"cannot create a group under {base} ({e.strerror}; the grader must run as root)"
    return True, str(base)


@functools.lru_cache(maxsize=1)
def probe_layers():
    """{layer: (available, detail)} for this machine (checked once per process)."""
    out = {}
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        out["bwrap"] = (False, f"bubblewrap is not installed ({INSTALL_HINT})")
    else:
        try:
            r = subprocess.run(bwrap_args([], None) + ["true"], capture_output=True, timeout=30)
            out["bwrap"] = (
                r.returncode == 0,
                bwrap
                if r.returncode == 0
                else f"bwrap cannot create namespaces here: {r.stderr.decode(errors='replace').strip()}",
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            out["bwrap"] = (False, f"bwrap failed: {e}")
    out["cgroup-memory"] = _cgroup_writable("memory")
    out["cgroup-pids"] = _cgroup_writable("pids")
    return out


def missing_layers():
    return [name for name, (ok, _) in probe_layers().items() if not ok]


# -------------------------------------------------------------------------------------------------------- command
def _python_paths():
    """Folders the sandbox needs read-only: the Python installation, the venv and every site-packages."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    for key in ("purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]).resolve())
    exe = Path(sys.executable).resolve()
    paths.add(exe.parent)
    keep = []
    for p in sorted(paths, key=lambda p: len(p.parts)):
        if not any(q in p.parents for q in keep) and str(p) not in ("/usr", "/"):
            keep.append(p)
    return [p for p in keep if not str(p).startswith("/usr/")]


def site_packages():
    return [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]


SANDBOX_UID = 65534  # "nobody"
# the sandboxed program runs as the host's unprivileged user 65534, with no capabilities, and cannot regain any
SETPRIV = [
    "setpriv",
    "--reuid",
    str(SANDBOX_UID),
    "--regid",
    str(SANDBOX_UID),
    "--clear-groups",
    "--no-new-privs",
    "--inh-caps=-all",
    "--bounding-set=-all",
]


def bwrap_args(binds, sandbox, writable=False):
    """The command line before the program: bubblewrap (its own network, PID, IPC and UTS namespaces; a new root
    holding read-only /usr, /etc, the Python installation and the venv, ``sandbox`` at /sandbox, read-only unless
    ``writable``, extra read-only ``binds`` [(host path, sandbox path)], a private /tmp), then ``setpriv`` to uid
    and gid 65534 without capabilities. As root no user namespace is needed, so 65534 is the host's unprivileged
    user; the new root's own directories (0755) lead to a Python under /root (0700 on the host)."""
    root = os.geteuid() == 0
    args = [
        "bwrap",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
    ]
    if not root:  # unprivileged: a user namespace; the sandbox's user is then the grader's own user outside it
        args[1:1] = ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    # /tmp first: a venv under /tmp (a clone there) is bound on top of it, not hidden by it
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    made = {Path("/tmp")}
    for p in _python_paths():
        for parent in reversed(p.parents):
            if str(parent) != "/" and parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(p), str(p)]
    if sandbox is not None:
        args += ["--bind" if writable else "--ro-bind", str(sandbox), "/sandbox", "--chdir", "/sandbox"]
    for src, dst in binds:
        args += ["--ro-bind", str(src), str(dst)]
    if seccomp.supported():  # no keyring, no new namespaces (seccomp.py says why)
        args = seccomp.wrap(args)
    return args + (SETPRIV if root else [])


class Cgroups:
    """One group per controller for one submission; ``kill_all`` ends every process in it, ``remove`` deletes it."""

    def __init__(self, name, memory_mb, layers):
        self.dirs = []
        self.memory = None
        if "cgroup-memory" in layers:
            d = _own_cgroup("memory") / name
            d.mkdir(exist_ok=True)
            (d / "memory.limit_in_bytes").write_text(str((BASE_MEMORY_MB + memory_mb) * 2**20))
            try:  # swap too, where the kernel accounts it
                (d / "memory.memsw.limit_in_bytes").write_text(str((BASE_MEMORY_MB + memory_mb) * 2**20))
            except OSError:
                pass
            self.dirs.append(d)
            self.memory = d
        if "cgroup-pids" in layers:
            d = _own_cgroup("pids") / name
            d.mkdir(exist_ok=True)
            (d / "pids.max").write_text(str(MAX_TASKS))
            self.dirs.append(d)
        self.procs_files = [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self):
        if self.memory is None:
            return False
        try:
            for line in (self.memory / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
            return int((self.memory / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def pids(self):
        found = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self, wait=5.0):
        deadline = time.monotonic() + wait
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return not pids
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)

    def remove(self):
        self.kill_all()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def remove_stale_groups():
    """Remove the groups a killed grading run left behind (their processes are killed first). A group's name holds
    the pid of the grader that made it (``grade-PID-…``): groups of a grader still running are left alone."""
    import re

    removed = 0
    for controller in ("memory", "pids"):
        base = _own_cgroup(controller)
        if base is None:
            continue
        for d in base.glob(GROUP_PREFIX + "*"):
            m = re.match(GROUP_PREFIX + r"(?:check-|probe-)?(\d+)", d.name)
            if m and Path(f"/proc/{m.group(1)}").exists():
                continue  # its grader is alive (another grading run on this machine)
            if d.is_dir():
                g = Cgroups.__new__(Cgroups)
                g.dirs, g.memory = [d], None
                g.remove()
                removed += 1
    return removed


def cpu_budget(per_test_s, requests):
    """CPU seconds (an int) one process of a submission may use in all: ``requests`` requests at their full
    per-request CPU limit ``per_test_s``, plus start-up. A process that keeps to its per-request timers never
    reaches it; one that cancels them and spins is ended by the kernel (RLIMIT_CPU: SIGXCPU, then SIGKILL)."""
    return int(requests * per_test_s + CPU_STARTUP_S + 1)


def exit_status(proc, wait=5.0):
    """``proc``'s return code, waiting up to ``wait`` s for it (its pipe closes a moment before bubblewrap exits);
    None if it still runs."""
    try:
        return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        return None


def ended_by_cpu_budget(returncode):
    """Whether a sandboxed program ended by SIGXCPU (RLIMIT_CPU's soft limit): -SIGXCPU run directly, 128 + SIGXCPU
    through bubblewrap, which exits with that status when its program is killed by a signal. (SIGKILL at the hard
    limit, for a program that ignores SIGXCPU, cannot be told from any other SIGKILL.)"""
    return returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def preexec(address_space_bytes, procs_files, cpu_seconds=None):
    """Runs in the child between fork and exec: die with the grader (``PR_SET_PDEATHSIG``, kept across the exec of
    bwrap; a grader killed before this point makes the child exit here), join the cgroups (so every descendant is
    in them), then the per-process limits; ``cpu_seconds``: RLIMIT_CPU (``cpu_budget``; every process the
    submission starts inherits it and has its own). No imports, no locks: what it needs is loaded here, before
    the fork."""
    import ctypes
    import resource

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        prctl = None
    grader = os.getpid()

    def apply():
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != grader:  # the grader died between the fork and the line above
                os._exit(1)
        for f in procs_files:
            fd = os.open(f, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + CPU_HARD_EXTRA_S))

    return apply


def child_env(home, pythonpath):
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
        "TQDM_DISABLE": "1",
        "CAPTIONING_PLUGINS": "off",  # the student edition has no instructor plug-ins
    }
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # this machine's BLAS settings (see env README)
        if key in os.environ:
            env[key] = os.environ[key]
    return env
