"""Grade a folder of submissions: ``python -m instructor grade SUBMISSIONS_DIR --out DIR``.

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

import json
import selectors
import shutil
import sys
import tempfile
import time
from pathlib import Path

from captioning.errors import KitError
from captioning.recipe import GRADING, notebook_parameters
from instructor.grading.outputs import write_outputs
from instructor.grading.rubric import RUBRIC, load_rubric
from instructor.grading.sandbox import _child_env, _kill_group, _Proc, build_sandbox
from instructor.grading.submissions import SubmissionError, discover, stage

STATUSES = ("ok", "timeout", "memory", "import-error", "crashed", "no-models", "bad-submission")
# What --notebooks runs (`python -m instructor.notebook_runs --only …`) and its small sizes on the shapes data;
# the grader's key=value words after --notebooks (`--notebooks epochs=2`) override or add parameters.
NOTEBOOK_RUNS = ("train1", "train2", "test_rnn", "test_attention")
# the shapes recipe at grading size (captioning/recipe.py), one PyTorch thread: with --jobs 2 on 2 cores, the
# notebooks' default of 2 threads would put 4 threads on 2 cores, which slowed training ~30x in a measured case
SMALL_NOTEBOOK_PARAMS = {**notebook_parameters(GRADING), "threads": 1}
_PARAM_RUNS = {"beam_size": ("test_rnn", "test_attention"),  # others: the training notebooks (train1, train2)
               "threads": ("train1", "train2", "test_rnn", "test_attention")}


# ---------------------------------------------------------------------------------------------------- grading
def grade(subs_dir, out, jobs=2, timeout=300.0, memory_mb=2048, notebooks=False, notebook_timeout=1800.0,
          notebook_params=(), rubric_path=RUBRIC, progress=True, keep_sandboxes=False, test_timeout=None,
          notebook_runs=NOTEBOOK_RUNS):
    """Grade every submission of ``subs_dir``; write the outputs into ``out``. Returns the list of results.

    ``timeout``: wall-clock seconds per submission (its process group is killed after it); ``test_timeout``:
    seconds per hidden test and for importing models.py (default: the rubric's ``per_test_timeout_s``);
    ``memory_mb``: address space a submission may allocate beyond what Python + torch map at import.
    ``notebooks``: afterwards run ``python -m instructor.notebook_runs --only NOTEBOOK_RUNS`` in the sandbox (the
    student's train*/test* notebooks in place of the kit's) with SMALL_NOTEBOOK_PARAMS updated by
    ``notebook_params`` ("key=value" strings), within ``notebook_timeout`` seconds; their BLEU-4 is recorded.
    """
    rubric = load_rubric(rubric_path)
    kit = _kit()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    subs = discover(subs_dir, out)
    if not subs:
        raise KitError(f"no submissions (folders or .zip files) in '{subs_dir}'")
    jobs = max(1, int(jobs))
    per_test = min(float(test_timeout or rubric["per_test_timeout_s"]), float(timeout))
    nb_args = _notebook_args(notebook_runs, notebook_params, notebook_timeout) if notebooks else None

    from tqdm.auto import tqdm

    # Copy every submission out of subs_dir before any student code runs (one cannot delete another's files).
    staged = _stage_all(subs, with_extras=notebooks)
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


def _notebook_args(notebook_runs, notebook_params, notebook_timeout):
    """The arguments of ``python -m instructor.notebook_runs`` after ``--out DIR``: the grading sizes of the
    selected runs, updated by the ``key=value`` strings ``notebook_params``."""
    # the runner refuses a parameter that none of the selected notebooks has
    params = {k: str(v) for k, v in SMALL_NOTEBOOK_PARAMS.items()
              if set(_PARAM_RUNS.get(k, ("train1", "train2"))) & set(notebook_runs)}
    for kv in notebook_params:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise KitError(f"notebook setting '{kv}' is not key=value (e.g. epochs=2)")
        params[k] = v
    nb_args = ["--timeout", f"{notebook_timeout:g}", "--only", ",".join(notebook_runs)]
    nb_args += [f"{k}={v}" for k, v in params.items()]
    return nb_args


def _stage_all(subs, with_extras):
    """[(sub, its temporary folder, SubmissionError or None)]: each submission staged into its own folder."""
    staged = []
    for sub in subs:
        tmp = Path(tempfile.mkdtemp(prefix=f"grade-{sub.id}-"))
        try:
            stage(sub, tmp / "submission", with_extras=with_extras)
            staged.append((sub, tmp, None))
        except SubmissionError as e:
            staged.append((sub, tmp, e))
    return staged


def _kit():
    from captioning.check import kit_root

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
            args = [sys.executable, "-m", "instructor.notebook_runs", "--out", str(self.sandbox / "notebook_outputs"),
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
