"""Grade a folder of submissions: ``python -m captioning grade SUBMISSIONS_DIR --out DIR``.

A submission is a folder or a ``.zip`` (one per student; the id is its name) holding at least ``models.py``
(anywhere inside; the shallowest wins), optionally notebooks and checkpoints. Each one is graded in its own
temporary directory by its own process (``child.py``), never in this one:

* the sandbox is a copy of the reference kit's ``captioning/`` package with the student's ``models.py`` in place of
  ``captioning/models.py``, the reference ``models.py`` as ``reference_models.py`` and the hidden tests (copied in
  for the run, deleted with the sandbox);
* the process runs in a new session / process group with a minimal environment (no GPU, one thread), an address-
  space limit (``RLIMIT_AS``: set in ``preexec_fn`` as a ceiling, then tightened by the child to what Python +
  torch map plus ``--memory-mb`` before the student's code is imported), no core dumps, a 1 GiB file-size limit, a
  per-test alarm and a wall-clock ``--timeout`` after which the whole process group is killed;
* results come back over a private pipe, one JSON line per test, so a crash, hang, ``sys.exit`` or ``os._exit``
  keeps the results so far and becomes a ``grading_status``; the batch always goes on;
* outputs (``grades.csv``, ``feedback/ID.md``, ``summary.md``, ``results.json``, ``logs/ID.log``) are written only
  at the end, each to a temporary name then renamed, so a submission that deletes files cannot remove or
  half-write them.
"""
from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import re
import selectors
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from captioning.errors import KitError
from captioning.recipe import GRADING, notebook_parameters

HERE = Path(__file__).resolve().parent
RUBRIC = HERE / "rubric.toml"
STATUSES = ("ok", "timeout", "memory", "import-error", "crashed", "no-models", "bad-submission")

MAX_MEMBERS = 2000
MAX_FILE_BYTES = 256 * 2 ** 20
MAX_TOTAL_BYTES = 512 * 2 ** 20
MAX_MODELS_BYTES = 2 * 2 ** 20
BASE_ADDRESS_SPACE_MB = 8192  # ceiling allowance for what Python + torch (+ CUDA libraries) map at import
FILE_SIZE_LIMIT = 2 ** 30
LOG_TAIL = 64 * 1024
MAX_RESULT_LINE = 1 << 20
MAX_EVENTS = 10_000
NOTEBOOK_GLOBS = ("train*.ipynb", "test*.ipynb")  # the student's notebooks that replace the kit's
# What --notebooks runs (`python -m captioning notebooks --only …`) and its small sizes on the shapes data;
# --notebook-param KEY=VALUE overrides or adds parameters.
NOTEBOOK_RUNS = ("train1", "train2", "test_rnn", "test_attention")
# the shapes recipe at grading size (captioning/recipe.py), one PyTorch thread: with --jobs 2 on 2 cores, the
# notebooks' default of 2 threads would put 4 threads on 2 cores, which slowed training ~30x in a measured case
SMALL_NOTEBOOK_PARAMS = {**notebook_parameters(GRADING), "threads": 1}
_PARAM_RUNS = {"beam_size": ("test_rnn", "test_attention"),  # others: the training notebooks (train1, train2)
               "threads": ("train1", "train2", "test_rnn", "test_attention")}


class SubmissionError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------------ rubric
def load_rubric(path=RUBRIC, check=True):
    """{"regions": {region: {test: points}}, "per_test_timeout_s": float}; checked against the hidden tests and
    the TODO regions of the reference models.py."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise KitError(f"rubric '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise KitError(f"rubric '{path}' is not valid TOML: {e}") from None
    regions = data.get("regions")
    if not isinstance(regions, dict) or not regions:
        raise KitError(f"rubric '{path}' has no [regions.\"Class.method\"] tables")
    for region, tests in regions.items():
        for test, pts in tests.items():
            if not isinstance(pts, (int, float)) or isinstance(pts, bool) or pts < 0:
                raise KitError(f"rubric '{path}': [regions.\"{region}\"] {test} = {pts!r} is not a number >= 0")
    settings = data.get("grading", {})
    rubric = {"regions": regions, "per_test_timeout_s": float(settings.get("per_test_timeout_s", 20))}
    if check:
        _check_rubric(rubric, path)
    return rubric


def _check_rubric(rubric, path):
    from captioning.grading.hidden_tests import TESTS
    from captioning.release import find_regions, kit_root

    in_rubric = {t: r for r, tests in rubric["regions"].items() for t in tests}
    missing = sorted(set(TESTS) - set(in_rubric))
    unknown = sorted(set(in_rubric) - set(TESTS))
    if missing or unknown:
        raise KitError(f"rubric '{path}' and the hidden tests differ: no points for {missing or 'none'}; "
                       f"unknown tests {unknown or 'none'}")
    wrong = [t for t, r in in_rubric.items() if TESTS[t][0] != r]
    if wrong:
        raise KitError(f"rubric '{path}': tests under the wrong region: "
                       + ", ".join(f"{t} (belongs to {TESTS[t][0]})" for t in wrong))
    models = kit_root() / "captioning" / "models.py"
    todo = [r.name for r in find_regions(models.read_text(encoding="utf-8"), "captioning/models.py")]
    if not todo:
        raise KitError(f"{models} has no solution regions: grade from the instructor kit (with the solutions)")
    if sorted(todo) != sorted(rubric["regions"]):
        raise KitError(f"rubric regions {sorted(rubric['regions'])} are not the TODO regions of models.py "
                       f"{sorted(todo)}")


# -------------------------------------------------------------------------------------------------- submissions
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
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "submission"
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
    picked = []  # (rel, kind, path in dest)
    total = 0

    def target(rel):
        p = (dest / rel).resolve()
        if os.path.commonpath([p, dest.resolve()]) != str(dest.resolve()):
            raise SubmissionError("bad-submission", f"unsafe path '{rel}'")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    if sub.source.is_dir():
        count = 0
        for dirpath, dirnames, filenames in os.walk(sub.source, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
            for f in sorted(filenames):
                count += 1
                if count > MAX_MEMBERS:
                    raise SubmissionError("bad-submission", f"more than {MAX_MEMBERS} files")
                src = Path(dirpath) / f
                rel = src.relative_to(sub.source).as_posix()
                kind = _wanted(rel, with_extras)
                if kind is None or src.is_symlink() or not src.is_file():
                    continue
                size = src.stat().st_size
                total += size
                if size > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                    raise SubmissionError("bad-submission", f"'{rel}' is too large (limit {MAX_FILE_BYTES >> 20} "
                                                            f"MiB per file, {MAX_TOTAL_BYTES >> 20} MiB in all)")
                dst = target(rel)
                shutil.copyfile(src, dst)
                picked.append((rel, kind, dst))
    else:
        try:
            zf = zipfile.ZipFile(sub.source)
        except (zipfile.BadZipFile, OSError) as e:
            raise SubmissionError("bad-submission", f"not a readable zip file ({e})") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise SubmissionError("bad-submission", f"more than {MAX_MEMBERS} entries in the zip")
            for info in infos:
                rel = _safe_rel(info.filename)
                if rel is None:
                    raise SubmissionError("bad-submission", f"unsafe path {info.filename!r} in the zip (absolute "
                                                            f"or with '..'): not extracted")
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise SubmissionError("bad-submission", f"symbolic link {info.filename!r} in the zip")
                if info.is_dir() or not rel:
                    continue
                kind = _wanted(rel, with_extras)
                if kind is None:
                    continue
                if info.flag_bits & 0x1:
                    raise SubmissionError("bad-submission", f"'{rel}' is encrypted")
                dst = target(rel)
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
                                raise SubmissionError("bad-submission", f"'{rel}' unpacks to too many bytes (limit "
                                                                        f"{MAX_FILE_BYTES >> 20} MiB per file, "
                                                                        f"{MAX_TOTAL_BYTES >> 20} MiB in all)")
                            out.write(chunk)
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
                    raise SubmissionError("bad-submission", f"cannot extract '{rel}': {e}") from None
                picked.append((rel, kind, dst))

    models = sorted((p for p in picked if p[1] == "models"), key=lambda p: (p[0].count("/"), p[0]))
    if not models:
        raise SubmissionError("no-models", "no models.py in the submission")
    best = [m for m in models if m[0].count("/") == models[0][0].count("/")]
    chosen = next((m for m in best if m[0].endswith("captioning/models.py")), best[0])
    if len(models) > 1:
        sub.notes.append(f"graded {chosen[0]} (the submission holds {len(models)} models.py files)")
    if chosen[2].stat().st_size > MAX_MODELS_BYTES:
        raise SubmissionError("bad-submission", f"{chosen[0]} is larger than {MAX_MODELS_BYTES >> 20} MiB")
    sub.models = chosen[2]
    sub.notebooks = [p for rel, k, p in picked if k == "notebook"]
    sub.checkpoints = [p for rel, k, p in picked if k == "checkpoint"]
    return sub


def build_sandbox(sub, sandbox, kit, with_notebooks=False):
    """The folder the child runs in: the reference kit's package with the student's models.py, the reference
    models as reference_models.py, the hidden tests and the child script."""
    sandbox = Path(sandbox)
    shutil.copytree(kit / "captioning", sandbox / "captioning",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "grading"))
    shutil.copyfile(sub.models, sandbox / "captioning" / "models.py")
    shutil.copyfile(kit / "captioning" / "models.py", sandbox / "reference_models.py")
    shutil.copyfile(HERE / "hidden_tests.py", sandbox / "_hidden_tests.py")
    shutil.copyfile(HERE / "child.py", sandbox / "_grade_child.py")
    if with_notebooks:
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


# ---------------------------------------------------------------------------------------------------- grading
def grade(subs_dir, out, jobs=2, timeout=300.0, memory_mb=2048, notebooks=False, notebook_timeout=1800.0,
          notebook_params=(), rubric_path=RUBRIC, progress=True, keep_sandboxes=False, test_timeout=None,
          notebook_runs=NOTEBOOK_RUNS):
    """Grade every submission of ``subs_dir``; write the outputs into ``out``. Returns the list of results.

    ``timeout``: wall-clock seconds per submission (its process group is killed after it); ``test_timeout``:
    seconds per hidden test and for importing models.py (default: the rubric's ``per_test_timeout_s``);
    ``memory_mb``: address space a submission may allocate beyond what Python + torch map at import.
    ``notebooks``: afterwards run ``python -m captioning notebooks --only NOTEBOOK_RUNS`` in the sandbox (the
    student's train*/test* notebooks in place of the kit's) with SMALL_NOTEBOOK_PARAMS updated by
    ``notebook_params`` ("KEY=VALUE" strings), within ``notebook_timeout`` seconds; their BLEU-4 is recorded.
    """
    rubric = load_rubric(rubric_path)
    kit = _kit()
    if notebooks and not (kit / "captioning" / "notebooks.py").is_file():
        raise KitError("--notebooks needs the notebooks runner captioning/notebooks.py, which this kit does not "
                       "have yet")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    subs = discover(subs_dir, out)
    if not subs:
        raise KitError(f"no submissions (folders or .zip files) in '{subs_dir}'")
    jobs = max(1, int(jobs))
    per_test = min(float(test_timeout or rubric["per_test_timeout_s"]), float(timeout))
    nb_args = None
    if notebooks:
        # the runner refuses a parameter that none of the selected notebooks has
        params = {k: str(v) for k, v in SMALL_NOTEBOOK_PARAMS.items()
                  if set(_PARAM_RUNS.get(k, ("train1", "train2"))) & set(notebook_runs)}
        for kv in notebook_params:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise KitError(f"--notebook-param '{kv}' is not KEY=VALUE (e.g. epochs=2)")
            params[k] = v
        nb_args = ["--timeout", f"{notebook_timeout:g}", "--only", *notebook_runs]
        for k, v in params.items():
            nb_args += ["-p", k, v]

    from tqdm.auto import tqdm

    # Copy every submission out of subs_dir before any student code runs (one cannot delete another's files).
    staged = []
    for sub in subs:
        tmp = Path(tempfile.mkdtemp(prefix=f"grade-{sub.id}-"))
        try:
            stage(sub, tmp / "submission", with_extras=notebooks)
            staged.append((sub, tmp, None))
        except SubmissionError as e:
            staged.append((sub, tmp, e))
    bar = tqdm(total=len(subs), desc="grading", unit="submission", disable=not progress)
    sel = selectors.DefaultSelector()
    pending, running, results = staged, [], {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                sub, tmp, err = pending.pop(0)
                job = _Job(sub, tmp, err, kit, rubric, sel, timeout, memory_mb, per_test, nb_args,
                           notebook_timeout, keep_sandboxes)
                if job.done:
                    results[sub.id] = job.result
                    bar.update(1)
                else:
                    running.append(job)
            for key, _ in sel.select(timeout=0.2):
                proc, kind = key.data
                proc.feed(key.fd, kind)
            now = time.monotonic()
            for job in list(running):
                if job.step(now):
                    running.remove(job)
                    results[job.sub.id] = job.result
                    bar.update(1)
                    bar.set_postfix_str(f"{job.sub.id}: {job.result['status']}", refresh=False)
    finally:
        for job in running:
            job.abort()
        for _, tmp, _ in pending:
            shutil.rmtree(tmp, ignore_errors=True)
        bar.close()
        sel.close()
    ordered = [results[s.id] for s in subs]
    write_outputs(out, ordered, rubric, notebooks)
    return ordered


def _kit():
    from captioning.release import kit_root

    return kit_root()


class _Job:
    def __init__(self, sub, tmp, staging_error, kit, rubric, sel, timeout, memory_mb, per_test, nb_args,
                 notebook_timeout, keep):
        self.sub, self.kit, self.rubric, self.sel = sub, kit, rubric, sel
        self.timeout, self.memory_mb, self.per_test = timeout, memory_mb, per_test
        self.nb_args, self.notebook_timeout = nb_args, notebook_timeout
        self.notebooks = nb_args is not None
        self.keep, self.done, self.result, self.proc, self.nb_proc = keep, False, None, None, None
        self.t0 = time.monotonic()
        self.tmp = tmp
        try:
            if staging_error is not None:
                raise staging_error
            self.sandbox = build_sandbox(sub, self.tmp / "sandbox", kit, with_notebooks=self.notebooks)
            (self.tmp / "home").mkdir()
            self.env = _child_env(self.sandbox, self.tmp / "home")
            self.proc = _Proc([sys.executable, str(self.sandbox / "_grade_child.py"), "{fd}", str(per_test),
                               str(memory_mb)], self.sandbox, self.env, timeout, memory_mb, sel, self)
        except SubmissionError as e:
            self._finish(status=e.status, message=str(e))
        except OSError as e:
            self._finish(status="crashed", message=f"could not set up the sandbox: {e}")
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def step(self, now):
        if self.nb_proc is not None:
            if not self.nb_proc.poll(now):
                return False
            self.nb = _notebook_result(self.nb_proc, self.sandbox / "notebook_outputs")
            self._finish(*self._status())
            return True
        if not self.proc.poll(now):
            return False
        status = self._status()
        if self.notebooks and status[0] not in ("import-error", "crashed", "no-models", "bad-submission"):
            args = [sys.executable, "-m", "captioning", "notebooks", "--out", str(self.sandbox / "notebook_outputs"),
                    *self.nb_args]
            try:
                self.nb_proc = _Proc(args, self.sandbox, self.env, self.notebook_timeout, self.memory_mb, self.sel,
                                     self, result_pipe=False)
                return False
            except OSError as e:
                self.nb = {"status": "crashed", "returncode": None, "message": str(e), "bleu4": {}}
        self._finish(*status)
        return True

    def _status(self):
        p = self.proc
        evs = p.events
        kinds = {e.get("event") for e in evs}
        imp = next((e for e in evs if e.get("event") == "import"), None)
        fatal = next((e for e in evs if e.get("event") == "fatal"), None)
        tests = [e for e in evs if e.get("event") == "test"]
        if fatal:
            return "crashed", f"grader problem: {fatal.get('message')}"
        if "ready" not in kinds:
            if p.timed_out:
                return "timeout", f"the grading process did not start within {self.timeout:g} s"
            return "crashed", f"the grading process ended before loading the kit (exit status {p.returncode}); " \
                              f"see the instructor log"
        if imp is None:
            if p.timed_out:
                return "timeout", f"importing models.py did not finish within {self.timeout:g} s"
            return "crashed", f"the grading process ended while importing models.py (exit status {p.returncode})"
        if not imp.get("ok"):
            kind = imp.get("kind")
            status = {"memory": "memory", "timeout": "timeout"}.get(kind, "import-error")
            return status, f"models.py could not be imported: {imp.get('message')}"
        if p.timed_out or any(t.get("kind") == "timeout" for t in tests):
            return "timeout", f"stopped by the time limit ({self.per_test:g} s per test, {self.timeout:g} s " \
                              f"in all)"
        if any(t.get("kind") == "memory" for t in tests):
            return "memory", f"ran out of memory (limit: {self.memory_mb} MB beyond what torch needs)"
        if "done" not in kinds:
            sig = f"killed by signal {-p.returncode}" if p.returncode and p.returncode < 0 else \
                f"exit status {p.returncode}"
            return "crashed", f"the grading process ended after {len(tests)} tests ({sig}): does models.py call " \
                              f"os._exit, kill its process or crash the interpreter?"
        return "ok", ""

    def _finish(self, status, message):
        ran = {} if self.proc is None else {e.get("name"): e for e in self.proc.events if e.get("event") == "test"}
        why_not = {"import-error": "not run: models.py could not be imported",
                   "timeout": "not run: grading stopped at the time limit",
                   "memory": "not run: grading stopped after running out of memory",
                   "crashed": "not run: the grading process ended early",
                   "no-models": "not run: no models.py", "bad-submission": "not run: submission rejected"}
        tests, regions = {}, {}
        for region, pts in self.rubric["regions"].items():
            got = 0
            for name, p in pts.items():
                ev = ran.get(name)
                if ev is None:
                    msg = message if status in ("import-error", "no-models", "bad-submission") and message \
                        else why_not.get(status, "not run")
                    tests[name] = {"region": region, "ok": False, "kind": "not-run", "message": msg, "points": 0,
                                   "max": p}
                else:
                    ok = bool(ev.get("ok"))
                    tests[name] = {"region": region, "ok": ok, "kind": ev.get("kind"), "message": ev.get("message", ""),
                                   "points": p if ok else 0, "max": p, "seconds": ev.get("seconds")}
                    got += p if ok else 0
            regions[region] = [got, sum(pts.values())]
        total = sum(v[0] for v in regions.values())
        maximum = sum(v[1] for v in regions.values())
        self.result = {
            "id": self.sub.id, "source": str(self.sub.source), "status": status, "message": message,
            "notes": list(self.sub.notes), "regions": regions, "tests": tests, "total": total, "max": maximum,
            "percent": round(100.0 * total / maximum, 1) if maximum else 0.0,
            "seconds": round(time.monotonic() - self.t0, 2),
            "log": None if self.proc is None else bytes(self.proc.log).decode("utf-8", "replace"),
            "log_bytes": 0 if self.proc is None else self.proc.log_bytes,
            "notebooks": getattr(self, "nb", None),
        }
        if getattr(self, "nb_proc", None) is not None:
            self.result["log"] += "\n--- notebooks ---\n" + bytes(self.nb_proc.log).decode("utf-8", "replace")
        self.done = True
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self):
        for p in (self.proc, self.nb_proc):
            if p is not None and p.returncode is None:
                _kill_group(p.proc)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _notebook_result(proc, out_dir):
    """{run: BLEU-4} from the ``<run>.metrics.json`` files the notebooks runner wrote (a test run's ``bleu4``, a
    training run's best validation ``best_bleu4``), and how the run ended."""
    found = {}
    if out_dir.is_dir():
        for p in sorted(out_dir.glob("*.metrics.json")):
            try:
                m = json.loads(p.read_text(encoding="utf-8")) if p.stat().st_size < 20 * 2 ** 20 else None
            except (OSError, ValueError):
                continue
            if isinstance(m, dict):
                v = m.get("bleu4", m.get("best_bleu4"))
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    found[p.name[:-len(".metrics.json")]] = float(v)
    log = bytes(proc.log).decode("utf-8", "replace")
    errors = [ln[len("error:"):].strip() for ln in log.splitlines() if ln.startswith("error:")]
    status = "timeout" if proc.timed_out else ("ok" if proc.returncode == 0 else "failed")
    message = errors[-1] if errors else ("" if status == "ok" else f"exit status {proc.returncode}")
    return {"status": status, "returncode": proc.returncode, "bleu4": found, "message": message[:1500]}


# ------------------------------------------------------------------------------------------------------ outputs
def _atomic_write(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(out, results, rubric, notebooks=False):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # again: a submission may have deleted it
    regions = list(rubric["regions"])
    maxima = {r: sum(t.values()) for r, t in rubric["regions"].items()}
    runs = sorted({run for r in results for run in ((r.get("notebooks") or {}).get("bleu4") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    nb_cols = (["notebooks_status"] + [f"bleu4_{run}" for run in runs]) if notebooks else []
    w.writerow(["id", *regions, "total", "percent", "grading_status", *nb_cols])
    w.writerow(["max", *[_num(maxima[r]) for r in regions], _num(sum(maxima.values())), "100.0", ""] +
               [""] * len(nb_cols))
    for r in results:
        row = [r["id"], *[_num(r["regions"][g][0]) for g in regions], _num(r["total"]), f"{r['percent']:.1f}",
               r["status"]]
        if notebooks:
            nb = r.get("notebooks") or {}
            bleu = nb.get("bleu4") or {}
            row += [nb.get("status", "not-run")] + [f"{bleu[run]:.4f}" if run in bleu else "" for run in runs]
        w.writerow(row)
    _atomic_write(out / "grades.csv", buf.getvalue())
    for r in results:
        _atomic_write(out / "feedback" / f"{r['id']}.md", feedback_md(r, rubric))
        _atomic_write(out / "logs" / f"{r['id']}.log", (r.get("log") or "") +
                      (f"\n[{r['log_bytes']} bytes of output in all; last {LOG_TAIL} kept]\n"
                       if r.get("log_bytes", 0) > LOG_TAIL else ""))
    _atomic_write(out / "summary.md", summary_md(results, rubric))
    public = [{k: v for k, v in r.items() if k != "log"} for r in results]
    _atomic_write(out / "results.json", json.dumps(public, indent=1))


def _num(x):
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_STATUS_TEXT = {
    "ok": "all hidden tests ran",
    "timeout": "stopped by the time limit — look for an endless loop",
    "memory": "ran out of memory — look for allocations that grow without bound",
    "import-error": "models.py could not be imported, so no test could run",
    "crashed": "the grading process ended early",
    "no-models": "no models.py found in the submission",
    "bad-submission": "the submission could not be unpacked safely",
}


def feedback_md(r, rubric):
    lines = [f"# Feedback: {r['id']}", "",
             f"**Score: {_num(r['total'])} / {_num(r['max'])} points ({r['percent']:.1f} %)**", "",
             f"Grading status: `{r['status']}` — {_STATUS_TEXT.get(r['status'], '')}"]
    if r.get("message"):
        lines.append(f"\n> {_md(r['message'])}")
    for n in r.get("notes", []):
        lines.append(f"\nNote: {_md(n)}")
    lines += ["", "Each TODO region of `models.py` is tested on its own: your code for that region runs with the "
                  "reference layers, weights and other methods, so a mistake costs the points of its own region. "
                  "Numbers are compared with max|got − expected| / (max|expected| + 1e-8) ≤ 1e-4.", ""]
    for region, pts in rubric["regions"].items():
        got, mx = r["regions"][region]
        lines += [f"## {region} — {_num(got)} / {_num(mx)}", "", "| test | result | points | message |",
                  "|---|---|---|---|"]
        for name in pts:
            t = r["tests"][name]
            res = "pass" if t["ok"] else ("fail" if t["kind"] == "fail" else t["kind"])
            lines.append(f"| {name} | {res} | {_num(t['points'])}/{_num(t['max'])} | {_md(t['message'])} |")
        lines.append("")
    nb = r.get("notebooks")
    if nb:
        lines += ["## Notebooks (not graded here: small sizes on the shapes data)", "", f"Run: {nb['status']}"
                  + (f" — {_md(nb['message'])}" if nb.get("message") else ""), ""]
        lines += [f"- {run}: BLEU-4 {v:.4f}" for run, v in sorted((nb.get("bleu4") or {}).items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def _md(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def summary_md(results, rubric):
    n = len(results)
    pct = [r["percent"] for r in results]
    lines = ["# Grading summary", "", f"{n} submissions.", ""]
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["## Grading status", "", "| status | submissions |", "|---|---|"]
    lines += [f"| {s} | {c} |" for s, c in sorted(counts.items(), key=lambda x: -x[1])]
    lines += ["", "## Score distribution", ""]
    if pct:
        lines.append(f"mean {statistics.mean(pct):.1f} %, median {statistics.median(pct):.1f} %, min {min(pct):.1f} %, "
                     f"max {max(pct):.1f} %")
        lines += ["", "| percent | submissions | |", "|---|---|---|"]
        for lo in range(0, 100, 10):
            hi = lo + 10
            c = sum(1 for p in pct if lo <= p < hi or (hi == 100 and p == 100))
            lines.append(f"| {lo}–{hi}{']' if hi == 100 else ')'} | {c} | {'█' * c} |")
    lines += ["", "## Per region (mean points)", "", "| region | mean | max |", "|---|---|---|"]
    for region, pts in rubric["regions"].items():
        vals = [r["regions"][region][0] for r in results]
        lines.append(f"| {region} | {statistics.mean(vals):.2f} | {_num(sum(pts.values()))} |")
    fails = {}
    for r in results:
        for name, t in r["tests"].items():
            if not t["ok"]:
                fails[name] = fails.get(name, 0) + 1
    lines += ["", "## Most-failed tests", "", "| test | region | failed by |", "|---|---|---|"]
    region_of = {t: g for g, ts in rubric["regions"].items() for t in ts}
    for name, c in sorted(fails.items(), key=lambda x: (-x[1], x[0]))[:15]:
        lines.append(f"| {name} | {region_of.get(name, '')} | {c} of {n} |")
    return "\n".join(lines) + "\n"
