"""Grading ONE submission: its sandbox folder, its process, the hidden tests run against it, its result.

The sandbox folder holds only what students have anyway: the student edition's ``captioning/`` package with the
submission's ``models.py``, the child script (``child.py`` as ``_grade_child.py``, with ``child_errors.py`` as
``_child_errors.py``) and the message format (``wire.py`` as ``_wire.py``). The hidden tests and the reference run
here, in the grader's process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from instructor.grading import remote as rem
from instructor.grading.hidden_harness import Context, Failed
from instructor.grading.hidden_tests import TESTS
from instructor.grading.outputs import plain
from instructor.grading.sandbox import (
    BASE_ADDRESS_SPACE_MB,
    SANDBOX_UID,
    WALL_BACKSTOP,
    Cgroups,
    bwrap_args,
    child_env,
    cpu_budget,
    ended_by_cpu_budget,
    exit_status,
    preexec,
    site_packages,
)
from instructor.grading.sandbox_outputs import clip, notebook_result, tail_of

HERE = Path(__file__).resolve().parent
MAX_RESTARTS = 3
NOTEBOOK_GLOBS = ("train*.ipynb", "test*.ipynb")  # the student's notebooks that replace the kit's
NOT_RUN = {
    "import-error": "not run: models.py could not be imported",
    "timeout": "not run: grading stopped at the time limit",
    "memory": "not run: grading stopped after running out of memory",
    "crashed": "not run: the grading process ended early",
    "no-models": "not run: no models.py",
    "bad-submission": "not run: submission rejected",
    "protocol-error": "not run: the grading process broke the message protocol",
    "grader-error": "not run: the grader failed on its own side (re-run to grade it)",
}


def build_sandbox(sub, folder, edition, with_notebooks=False):
    """The folder mounted at /sandbox: the edition's package with the student's models.py, the child script."""
    folder = Path(folder)
    shutil.copytree(edition / "captioning", folder / "captioning")
    shutil.copyfile(sub.models, folder / "captioning" / "models.py")
    shutil.copyfile(HERE / "child.py", folder / "_grade_child.py")
    shutil.copyfile(HERE / "wire.py", folder / "_wire.py")
    shutil.copyfile(HERE / "child_errors.py", folder / "_child_errors.py")
    if with_notebooks:
        shutil.copytree(edition / "notebooks", folder / "notebooks")
        (folder / "instructor").mkdir()
        (folder / "instructor" / "__init__.py").write_text("")
        shutil.copyfile(HERE.parent / "notebook_runs.py", folder / "instructor" / "notebook_runs.py")
        for nb in sub.notebooks:
            if any(Path(nb.name).match(g) for g in NOTEBOOK_GLOBS):
                shutil.copyfile(nb, folder / "notebooks" / nb.name)
        if sub.checkpoints:
            (folder / "checkpoints").mkdir(exist_ok=True)
            for ck in sub.checkpoints:
                shutil.copyfile(ck, folder / "checkpoints" / ck.name)
    return folder


def command(layers, folder, program):
    """(argv, cwd, PYTHONPATH) to run ``program`` (argv after the interpreter) in the sandbox ``folder``."""
    if "bwrap" in layers:
        return bwrap_args([], folder) + [sys.executable, "-S", *program], None, ["/sandbox", *site_packages()]
    return [sys.executable, "-S", *program], str(folder), [str(folder), *site_packages()]


class Job:
    """The state of one submission while its tests run (in a worker thread of ``batch.grade``)."""

    def __init__(self, sub, work, edition, ref_module, opts, layers, run_id):
        self.sub, self.work, self.edition, self.opts, self.layers = sub, Path(work), edition, opts, layers
        self.ref_module, self.run_id = ref_module, run_id
        self.remote, self.cgroups, self.logs, self.log_bytes = None, None, [], 0
        self.restarts, self.problems = 0, []
        # RLIMIT_CPU of each process: every test (and the import) at its full CPU limit, plus start-up
        self.cpu_seconds = cpu_budget(opts["per_test"], len(TESTS) + 1)

    # ---------------------------------------------------------------------------------------------- process
    def _start(self, ctx):
        sandbox = self.work / "sandbox"
        where = "/sandbox" if "bwrap" in self.layers else str(sandbox)
        argv, cwd, pypath = command(
            self.layers, sandbox, [f"{where}/_grade_child.py", "{in}", "{out}", str(self.opts["memory_mb"])]
        )
        env = child_env("/tmp" if "bwrap" in self.layers else self.work / "home", pypath)
        self.remote = rem.Remote(
            argv,
            cwd,
            env,
            self.opts["memory_mb"],
            self.deadline,
            self.cgroups,
            refcall=ctx.serve_refcall,
            cpu_seconds=self.cpu_seconds,
        )
        ready = self.remote.next_message(time.monotonic() + min(120.0, self.opts["timeout"]))
        if not isinstance(ready, dict) or not ready.get("ready"):
            raise rem.ChildGone(f"grader problem: {ready.get('fatal') if isinstance(ready, dict) else ready}")
        reply = self.remote.request({"op": "import"}, self.opts["per_test"])
        return reply

    def _stop(self):
        if self.remote is not None:
            self.remote.close()
            self.logs.append(self.remote.log_text())
            self.log_bytes += self.remote.log_bytes
            self.remote = None

    def _problem(self, e):
        """Kind of a ChildGone/ChildTimeout: timeout, memory (the cgroup's OOM killer) or crashed."""
        if isinstance(e, rem.ChildTimeout):
            return "timeout", f"did not answer within the time limit ({self.opts['per_test']:g} s per test)"
        if isinstance(e, rem.ProtocolError):
            return "protocol-error", f"the submission's process broke the message protocol: {e}"
        if self.cgroups is not None and self.cgroups.oom_killed():
            return "memory", "ran out of memory (all processes of the submission together)"
        rc = exit_status(self.remote.proc) if self.remote is not None else None
        if ended_by_cpu_budget(rc):  # RLIMIT_CPU: the kernel ended it (it had stopped or outrun its own timers)
            return (
                "timeout",
                f"used its whole CPU-time budget ({self.cpu_seconds} s for the process) and was "
                f"stopped by the kernel: does models.py cancel the grader's timers (signal.setitimer) "
                f"or spin in a thread?",
            )
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        return (
            "crashed",
            f"the submission's process ended ({how}{'; ' + str(e) if str(e) else ''}): does "
            f"models.py call os._exit, kill its process or crash the interpreter?",
        )

    # ------------------------------------------------------------------------------------------------- tests
    def run(self):
        """The result dict of this submission (never raises for anything the submission does)."""
        t0 = time.monotonic()
        self.deadline = t0 + self.opts["timeout"]
        tests, status, message, nb = {}, "ok", "", None
        try:
            try:
                build_sandbox(self.sub, self.work / "sandbox", self.edition, self.opts["notebooks"] is not None)
                (self.work / "home").mkdir(exist_ok=True)
                self.cgroups = Cgroups(f"grade-{self.run_id}-{self.sub.id}", self.opts["memory_mb"], self.layers)
            except OSError as e:  # the grader's side (a full disk, cgroups): this row says so, the batch goes on
                return self._result(
                    {}, "grader-error", f"could not set up the sandbox: {e}", None, time.monotonic() - t0
                )
            status, message = self._run_tests(tests)
            nb = (
                self._notebooks()
                if self.opts["notebooks"] is not None and status not in ("import-error", "crashed")
                else None
            )
        finally:
            self._stop()
            if self.cgroups is not None:
                self.cgroups.remove()
        return self._result(tests, status, message, nb, time.monotonic() - t0)

    def _run_tests(self, tests):
        """Run every hidden test into ``tests`` ({name: result}); (status, message) of the whole run."""
        ctx = Context(self.ref_module, seed=self.opts.get("seed"))
        failed = self._start_and_import(ctx)
        if failed is not None:
            return failed
        ctx.remote = self.remote
        stuck = {}  # region -> its first test that timed out
        for name, (region, fn) in TESTS.items():
            if self.remote is None:  # restart after a crash, a bounded number of times
                ctx = self._restart(ctx)
                if ctx is None:
                    continue
            if region in stuck:  # its method hung once: running it again would only wait for the limit again
                tests[name] = {
                    "region": region,
                    "ok": False,
                    "kind": "timeout",
                    "seconds": 0.0,
                    "message": f"not run: {stuck[region]} did not finish within the time limit",
                }
                continue
            tests[name] = self._run_one(ctx, region, fn)
            if self.remote is not None and self.remote.unsure:  # its pipe may be out of step: a fresh process
                self._stop()
                self.restarts -= 1  # the grader's slowness, not the submission's: not one of its restarts
            if tests[name]["kind"] == "timeout":
                stuck.setdefault(region, name)
        return self._overall(tests)

    def _start_and_import(self, ctx):
        """Start the submission's process and import their models.py: None when it imported, else the run's
        (status, message)."""
        try:
            reply = self._start(ctx)
        except (rem.ChildGone, rem.ChildTimeout) as e:
            kind, msg = self._problem(e)
            return ("import-error" if kind == "crashed" else kind), f"models.py could not be imported: {msg}"
        if not isinstance(reply, dict):
            return "protocol-error", "the import request was answered out of protocol"
        if not reply.get("ok"):
            kind = reply.get("kind")
            return {"memory": "memory", "timeout": "timeout"}.get(
                kind, "import-error"
            ), f"models.py could not be imported: {reply.get('message')}"
        return None

    def _restart(self, ctx):
        """A fresh process (and Context, keeping which tests passed) after a crash; None when no more restarts
        are allowed or the new process did not start."""
        if self.restarts >= MAX_RESTARTS or time.monotonic() > self.deadline:
            return None
        self.restarts += 1
        try:
            ctx = Context(self.ref_module, seed=self.opts.get("seed"), passed=ctx.passed)
            self._start(ctx)
            ctx.remote = self.remote
        except (rem.ChildGone, rem.ChildTimeout) as e:
            self.problems.append(self._problem(e)[0])
            self._stop()
            return None
        return ctx

    def _run_one(self, ctx, region, fn):
        """Run one hidden test ``fn``; its result ({region, ok, kind, message, seconds})."""
        t = time.monotonic()
        # CPU time per test (the child's timer), a wall-clock backstop several times larger (a busy machine)
        ctx.cpu_limit = self.opts["per_test"]
        ctx.deadline = min(self.deadline, t + WALL_BACKSTOP * self.opts["per_test"])
        try:
            fn(ctx)
            ok, kind, msg = True, "pass", ""
        except Failed as e:
            ok, kind, msg = False, "fail", str(e)
        except (rem.ChildGone, rem.ChildTimeout) as e:
            kind, msg = self._problem(e)
            ok = False
            self.problems.append(kind)
            self._stop()
        except Exception as e:  # noqa: BLE001 - the test could not use what the code returned (None, a
            # wrong rank...): this test scores 0 and says why; the others run on
            ok, kind = False, "test-error"
            msg = (
                f"this test could not use what your code returned ({type(e).__name__}: {e}): check the "
                f"types, shapes and devices of the values your method returns"
            )
            self.problems.append(kind)
        if not ok and kind == "fail" and "did not finish within" in msg:
            kind = "timeout"
        if not ok and kind == "fail" and msg.startswith("ran out of memory"):
            kind = "memory"
        return {
            "region": region,
            "ok": ok,
            "kind": kind,
            "message": clip(msg),
            "seconds": round(time.monotonic() - t, 3),
        }

    def _overall(self, tests):
        """(status, message) of a run whose tests all ran: the first problem met, in this order, else ("ok", "")."""
        kinds = {t["kind"] for t in tests.values()} | set(self.problems)
        for k, text in (
            (
                "timeout",
                f"stopped by the time limit ({self.opts['per_test']:g} s per test, {self.opts['timeout']:g} s in all)",
            ),
            ("memory", f"ran out of memory (limit: {self.opts['memory_mb']} MB beyond what torch needs)"),
            ("crashed", "the submission's process ended during the tests"),
            (
                "protocol-error",
                "the submission's process sent a message outside the protocol (was "
                "the grading process tampered with?); it was restarted for the tests "
                "left",
            ),
            (
                "test-error",
                "a hidden test could not use what the code returned: "
                + "; ".join(n for n, t in tests.items() if t["kind"] == "test-error"),
            ),
        ):
            if k in kinds:
                return k, text
        return "ok", ""

    def _result(self, ran, status, message, nb, seconds):
        return result_dict(
            self.sub, self.opts["rubric"], ran, status, message, seconds, "\n".join(self.logs), self.log_bytes, nb
        )

    # --------------------------------------------------------------------------------------------- notebooks
    def _notebooks(self):
        """Run ``python -m instructor.notebook_runs`` in a writable sandbox; its BLEU-4 (recorded, not graded:
        the numbers come from the student's process)."""
        sandbox = self.work / "sandbox"
        where = "/sandbox" if "bwrap" in self.layers else str(sandbox)
        out_dir = f"{where}/notebook_outputs"
        program = ["-m", "instructor.notebook_runs", "--out", out_dir, *self.opts["notebooks"]]
        if "bwrap" in self.layers:
            argv = bwrap_args([], sandbox, writable=True) + [sys.executable, *program]
            cwd, pypath = None, ["/sandbox"]
            if os.geteuid() == 0:  # the notebooks write into their folder as the sandbox's user
                for dirpath, _, filenames in os.walk(sandbox):
                    for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                        os.chown(name, SANDBOX_UID, SANDBOX_UID)
        else:
            argv, cwd, pypath = [sys.executable, *program], str(sandbox), [str(sandbox)]
        env = child_env("/tmp" if "bwrap" in self.layers else self.work / "home", pypath)
        log = self.work / "notebooks.log"
        timed_out = False
        with open(log, "wb") as f:
            p = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec(
                    (self.opts["memory_mb"] + BASE_ADDRESS_SPACE_MB) * 2**20,
                    self.cgroups.procs_files if self.cgroups else [],
                ),
            )
            try:
                rc = p.wait(timeout=self.opts["notebook_timeout"])
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
            rem.kill_group(p.pid)
            if self.cgroups is not None:
                self.cgroups.kill_all()
            p.wait()
        text = tail_of(log, rem.LOG_TAIL).decode("utf-8", "replace")
        self.logs.append("--- notebooks ---\n" + text)
        return notebook_result(sandbox / "notebook_outputs", text, rc, timed_out)


def result_dict(sub, rubric, ran, status, message, seconds, log="", log_bytes=0, nb=None):
    """The result of ``sub``: the points of the tests in ``ran`` ({name: {ok, kind, message, …}}) by the rubric;
    the tests that did not run score 0 with the reason."""
    tests, regions = {}, {}
    message = clip(message)
    for region, pts in rubric["regions"].items():
        got = 0
        for name, p in pts.items():
            ev = ran.get(name)
            if ev is None:
                # the submission's message is stored once, in the result; each test only points to it
                msg = NOT_RUN.get(status, "not run") + (" (see the message above)" if message else "")
                tests[name] = {"region": region, "ok": False, "kind": "not-run", "message": msg, "points": 0, "max": p}
            else:
                tests[name] = dict(ev, points=p if ev["ok"] else 0, max=p)
                got += p if ev["ok"] else 0
        regions[region] = [got, sum(pts.values())]
    total = sum(v[0] for v in regions.values())
    maximum = sum(v[1] for v in regions.values())
    return {
        "id": sub.id,
        "source": plain(sub.source),
        "status": status,
        "message": message,
        "notes": [clip(n, 300) for n in sub.notes],
        "regions": regions,
        "tests": tests,
        "total": total,
        "max": maximum,
        "percent": round(100.0 * total / maximum, 1) if maximum else 0.0,
        "seconds": round(seconds, 2),
        "log": log,
        "log_bytes": log_bytes,
        "notebooks": nb,
    }
