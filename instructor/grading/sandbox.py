"""The sandbox a submission is graded in and the processes that run there: ``build_sandbox`` (the folder),
``_child_env`` (a minimal environment), ``_limits`` (resource limits set between fork and exec) and ``_Proc`` (one
child process in its own process group: its result pipe, the tail of its output, its deadline)."""
from __future__ import annotations

import fnmatch
import json
import os
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_ADDRESS_SPACE_MB = 8192  # ceiling allowance for what Python + torch (+ CUDA libraries) map at import
FILE_SIZE_LIMIT = 2 ** 30
LOG_TAIL = 64 * 1024
MAX_RESULT_LINE = 1 << 20
MAX_EVENTS = 10_000
NOTEBOOK_GLOBS = ("train*.ipynb", "test*.ipynb")  # the student's notebooks that replace the kit's


def build_sandbox(sub, sandbox, kit, with_notebooks=False):
    """The folder the child runs in: the reference kit's package with the student's models.py, the reference
    models as reference_models.py, the hidden tests (and their harness) and the child script."""
    sandbox = Path(sandbox)
    shutil.copytree(kit / "captioning", sandbox / "captioning", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copyfile(sub.models, sandbox / "captioning" / "models.py")
    shutil.copyfile(kit / "captioning" / "models.py", sandbox / "reference_models.py")
    shutil.copyfile(HERE / "hidden_tests.py", sandbox / "_hidden_tests.py")
    shutil.copyfile(HERE / "hidden_harness.py", sandbox / "_hidden_harness.py")
    shutil.copyfile(HERE / "child.py", sandbox / "_grade_child.py")
    if with_notebooks:  # the notebook runner and the fast path alone: the sandbox holds no other instructor code
        (sandbox / "instructor").mkdir()
        (sandbox / "instructor" / "__init__.py").write_text("")
        # the fast path is found through the entry point naming instructor.fastpath (without it: slower, a warning)
        for name in ("notebook_runs.py", "fastpath.py"):
            shutil.copyfile(kit / "instructor" / name, sandbox / "instructor" / name)
        if (kit / "notebooks").is_dir():
            shutil.copytree(kit / "notebooks", sandbox / "notebooks",
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        (sandbox / "notebooks").mkdir(exist_ok=True)
        for nb in sub.notebooks:
            if any(fnmatch.fnmatch(nb.name, g) for g in NOTEBOOK_GLOBS):
                shutil.copyfile(nb, sandbox / "notebooks" / nb.name)
        if sub.checkpoints:
            (sandbox / "checkpoints").mkdir(exist_ok=True)
            for ck in sub.checkpoints:
                shutil.copyfile(ck, sandbox / "checkpoints" / ck.name)
    return sandbox


# ------------------------------------------------------------------------------------------------------ processes
def _child_env(sandbox, tmp):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(sandbox),
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
    }
    try:  # read access to downloaded weights (the notebooks' encoder), as the kit expects them
        import torch.hub

        env["TORCH_HOME"] = str(Path(torch.hub.get_dir()).parent)
    except Exception:  # noqa: BLE001
        pass
    return env


def _limits(address_space_bytes):
    import resource

    def apply():  # runs in the child between fork and exec: no imports, no locks
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    return apply


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Proc:
    """One child process: its result pipe (optional), its stdout+stderr (last LOG_TAIL bytes kept), a deadline."""

    def __init__(self, cmd, cwd, env, timeout, memory_mb, sel, owner, result_pipe=True):
        self.owner, self.sel = owner, sel
        self.events, self._buf, self.log, self.log_bytes = [], b"", bytearray(), 0
        self.timed_out, self.returncode = False, None
        r = w = None
        pass_fds = ()
        if result_pipe:
            r, w = os.pipe()
            pass_fds = (w,)
            cmd = [c if c != "{fd}" else str(w) for c in cmd]
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=pass_fds, close_fds=True, start_new_session=True,
                preexec_fn=_limits((memory_mb + BASE_ADDRESS_SPACE_MB) * 2 ** 20))
        except BaseException:
            if r is not None:
                os.close(r)
            raise
        finally:
            if w is not None:
                os.close(w)
        self.open = set()
        for fd, kind in ((r, "result"), (self.proc.stdout.fileno(), "log")):
            if fd is not None:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ, (self, kind))
                self.open.add(fd)
        self._r = r
        self.exited_at = None

    def feed(self, fd, kind):
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        if kind == "result":
            self._buf += data
            *lines, self._buf = self._buf.split(b"\n")
            if len(self._buf) > MAX_RESULT_LINE:  # not a result line: someone else writes to the pipe
                self._buf = b""
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and len(self.events) < MAX_EVENTS:
                    self.events.append(ev)
        else:
            self.log_bytes += len(data)
            self.log += data
            if len(self.log) > LOG_TAIL:
                del self.log[:len(self.log) - LOG_TAIL]

    def _close(self, fd):
        if fd in self.open:
            self.sel.unregister(fd)
            self.open.discard(fd)
            if fd == self._r:
                os.close(fd)

    def poll(self, now):
        """True when finished (exited and pipes drained, or given up on)."""
        if self.returncode is None:
            rc = self.proc.poll()
            if rc is None:
                if now > self.deadline:
                    self.timed_out = True
                    _kill_group(self.proc)
                return False
            self.returncode = rc
            self.exited_at = now
            _kill_group(self.proc)  # leftovers of the student's code in the same group
        if self.open and now - self.exited_at < 2.0:
            return False
        for fd in list(self.open):  # a process outside the group still holds a pipe: stop listening
            self._close(fd)
        self.proc.stdout.close()
        self.seconds = round(now - self.start, 2)
        return True

