"""Grade a folder of submissions: ``python -m instructor grade SUBMISSIONS_DIR --out DIR``.

A submission is a folder or a ``.zip`` (one per student; the id is its name) holding at least ``models.py``
(anywhere inside; the shallowest wins), optionally notebooks and checkpoints. For each one:

* its files are copied out (checked: no path traversal, no links, bounded sizes) before any student code runs;
* its code runs in its own OS sandbox (``sandbox.py``: bubblewrap namespaces, cgroup limits) holding the student
  edition's package, their ``models.py`` and the child script — never the reference or the hidden tests;
* the hidden tests run HERE (``job.py``): they send the child inputs, get raw outputs back (``wire.py``: no
  pickle) and compare them with the reference's; the child's calls to the reference's other methods are answered
  here. Nothing the child says is a score;
* its result goes to ``DIR/journal/ID.json`` at once; re-running the same command resumes from the journal.

Outputs (``grades.csv``, ``feedback/ID.md``, ``summary.md``, ``results.json``, ``logs/ID.log``) are written at the
end, each to a temporary name then renamed. One grading run per output folder at a time (a lock file).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
import threading
from pathlib import Path

from captioning.data.recipe import GRADING, notebook_parameters
from captioning.internals.errors import KitError
from captioning.internals.locks import folder_lock
from instructor.grading.canary import run_canary
from instructor.grading.job import Job, result_dict
from instructor.grading.journal import Journal, grader_key, run_seed, submission_key
from instructor.grading.outputs import write_outputs
from instructor.grading.rubric import RUBRIC, load_rubric
from instructor.grading.sandbox import INSTALL_HINT, LAYERS, probe_layers, remove_stale_groups
from instructor.grading.submissions import SubmissionError, discover, stage

# What --notebooks runs (`python -m instructor.notebook_runs --only …`) and its small sizes on the shapes data;
# the grader's key=value words after --notebooks (`--notebooks epochs=2`) override or add parameters.
NOTEBOOK_RUNS = ("train1", "train2", "test_rnn", "test_attention")
# the shapes recipe at grading size (captioning/data/recipe.py), one PyTorch thread: with --jobs 2 on 2 cores, the
# notebooks' default of 2 threads would put 4 threads on 2 cores, which slowed training ~30x in a measured case
SMALL_NOTEBOOK_PARAMS = {**notebook_parameters(GRADING), "threads": 1}
_PARAM_RUNS = {
    "beam_size": ("test_rnn", "test_attention"),  # others: the training notebooks (train1, train2)
    "threads": ("train1", "train2", "test_rnn", "test_attention"),
}


def check_layers(allow_unsandboxed):
    """The sandbox layers this machine has; KitError when one is missing and ``allow_unsandboxed`` is not set."""
    layers = probe_layers()
    missing = {k: detail for k, (ok, detail) in layers.items() if not ok}
    if missing and not allow_unsandboxed:
        raise KitError(
            "the grading sandbox is incomplete on this machine: "
            + "; ".join(f"{k}: {d}" for k, d in missing.items())
            + f". Install what is missing ({INSTALL_HINT}; cgroups need root) or pass --allow-unsandboxed "
            f"to grade without these layers (student code then runs with fewer protections)"
        )
    if missing:
        print(
            "warning: grading WITHOUT these sandbox layers (--allow-unsandboxed): "
            + "; ".join(f"{k}: {d}" for k, d in missing.items()),
            file=sys.stderr,
            flush=True,
        )
    return [k for k in LAYERS if layers[k][0]], missing


# ---------------------------------------------------------------------------------------------------- grading
def grade(
    subs_dir,
    out,
    jobs=2,
    timeout=300.0,
    memory_mb=2048,
    notebooks=False,
    notebook_timeout=1800.0,
    notebook_params=(),
    rubric_path=RUBRIC,
    progress=True,
    keep_sandboxes=False,
    test_timeout=None,
    notebook_runs=NOTEBOOK_RUNS,
    allow_unsandboxed=False,
):
    """Grade every submission of ``subs_dir``; write the outputs into ``out``. Returns the list of results.

    ``timeout``: wall-clock seconds per submission; ``test_timeout``: seconds per hidden test and for importing
    models.py (default: the rubric's ``per_test_timeout_s``); ``memory_mb``: memory the submission's processes may
    use together beyond what Python + torch take. ``notebooks``: afterwards run ``python -m
    instructor.notebook_runs --only NOTEBOOK_RUNS`` in the (writable) sandbox with SMALL_NOTEBOOK_PARAMS updated by
    ``notebook_params`` ("key=value" strings), within ``notebook_timeout`` s; their BLEU-4 is recorded.
    """
    rubric = load_rubric(rubric_path)
    out = Path(out).resolve()
    # the command line's own mistakes first: they need no sandbox to be reported
    subs = discover(subs_dir, out)
    if not subs:
        raise KitError(f"no submissions (folders or .zip files) in '{subs_dir}'")
    layers, missing = check_layers(allow_unsandboxed)
    per_test = min(float(test_timeout or rubric["per_test_timeout_s"]), float(timeout))
    opts = {
        "timeout": float(timeout),
        "memory_mb": int(memory_mb),
        "per_test": per_test,
        "notebooks": _notebook_args(notebook_runs, notebook_params, notebook_timeout) if notebooks else None,
        "notebook_timeout": float(notebook_timeout),
    }
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "grading", wait=False, what=f"grading into {out}"):
        work = out / ".work"
        shutil.rmtree(work, ignore_errors=True)  # a killed run's sandboxes (we hold the lock: it is dead)
        remove_stale_groups()
        work.mkdir()
        try:
            results = _grade_all(
                subs,
                out,
                work,
                dict(opts, rubric=rubric),
                rubric_path,
                layers,
                max(1, int(jobs)),
                progress,
                keep_sandboxes,
            )
        finally:
            if not keep_sandboxes:
                shutil.rmtree(work, ignore_errors=True)
        write_outputs(out, results, rubric, notebooks, sandbox={"layers": layers, "missing": missing})
    return results


def _grade_all(subs, out, work, opts, rubric_path, layers, jobs, progress, keep):
    from tqdm.auto import tqdm

    from captioning import models as reference
    from captioning.check import kit_root

    opts = dict(opts, seed=run_seed(out / "journal"))  # the run's secret seed (journal.run_seed); never sandboxed
    key_opts = {k: v for k, v in opts.items() if k != "rubric"}
    key_opts["layers"] = layers
    gkey = grader_key(rubric_path, kit_root() / "captioning" / "models.py", key_opts)
    journal = Journal(out / "journal")
    # "_edition" cannot be a submission's folder: submission ids never start with "_" (submissions.discover)
    edition = _edition(work / "_edition", with_notebooks=opts["notebooks"] is not None)
    # --- the canary (canary.py): the reference solution, graded exactly as a submission is, must score 100 %
    # before any student is graded; otherwise it stops here (KitError naming the cause) and nothing is written.
    run_canary(edition, reference, dict(opts, notebooks=None), layers, work, f"{os.getpid()}")
    results, todo = {}, []
    # Copy every submission out of its folder before any student code runs (one cannot delete another's files)
    for sub in subs:
        res, key = _stage_one(sub, work / sub.id, gkey, journal, opts)
        if res is not None:
            results[sub.id] = res
        else:
            todo.append((sub, key))
    bar = tqdm(total=len(subs), initial=len(results), desc="grading", unit="submission", disable=not progress)
    run_id = f"{os.getpid()}"
    lock = threading.Lock()

    def one(sub, key):
        try:
            res = Job(sub, work / sub.id, edition, reference, opts, layers, run_id).run()
        except Exception as e:  # noqa: BLE001 - a grader bug: this row says so, the batch goes on
            res = result_dict(
                sub,
                opts["rubric"],
                {},
                "grader-error",
                f"the grader failed on this submission "
                f"({type(e).__name__}: {e}); it is not journaled: re-run the same command to grade "
                f"it again",
                0.0,
            )
        _journal(journal, sub, key, res)
        if not keep:
            shutil.rmtree(work / sub.id, ignore_errors=True)
        with lock:
            bar.update(1)
            bar.set_postfix_str(f"{sub.id}: {res['status']}", refresh=False)
        return res

    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
            for (sub, _), res in zip(todo, ex.map(lambda a: one(*a), todo)):
                results[sub.id] = res
    finally:
        bar.close()
    return [results[s.id] for s in subs]


def _stage_one(sub, folder, gkey, journal, opts):
    """(result, None) for a submission whose result is known now (journaled, or rejected while staging), else
    (None, its journal key). A rejected submission's staged files are removed at once (a zip bomb's partial
    output must not stay on disk for the whole run); it is not journaled (staging it again is cheap and gives
    the same row)."""
    staged = folder / "submission"
    try:
        stage(sub, staged, with_extras=opts["notebooks"] is not None)
        key = submission_key(gkey, staged)
    except (SubmissionError, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        status = e.status if isinstance(e, SubmissionError) else "grader-error"
        return result_dict(sub, opts["rubric"], {}, status, str(e), 0.0), None
    done = journal.get(sub.id, key)
    return done, key


def _journal(journal, sub, key, res):
    """Journal ``res`` unless the grader failed on its own side (that row must be graded again next run)."""
    if res["status"] == "grader-error":
        return
    try:
        journal.put(sub.id, key, res)
    except (OSError, ValueError) as e:  # a full disk: the row stays in this run's outputs, graded again next run
        res["notes"] = list(res.get("notes", [])) + [f"not journaled ({type(e).__name__}: {e})"]


def _edition(dest, with_notebooks):
    """The student edition's ``captioning/`` (and ``notebooks/``) — what a sandbox may hold of the kit."""
    from captioning.check import kit_root
    from instructor.regions import strip_solutions
    from instructor.release import in_student_edition, kit_files

    root = kit_root()
    for rel in kit_files(root):
        if not (rel.startswith("captioning/") or (with_notebooks and rel.startswith("notebooks/"))):
            continue
        if not in_student_edition(rel):
            continue
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".py"):
            text = (root / rel).read_text(encoding="utf-8")
            dst.write_text(strip_solutions(text, rel)[0], encoding="utf-8")
        elif rel.endswith(".ipynb"):
            from instructor.release import _release_notebook

            _release_notebook(root / rel, dst, rel, set())
        else:
            shutil.copyfile(root / rel, dst)
    (dest / "notebooks").mkdir(parents=True, exist_ok=True)
    return dest


def _notebook_args(notebook_runs, notebook_params, notebook_timeout):
    """The arguments of ``python -m instructor.notebook_runs`` after ``--out DIR``: the grading sizes of the
    selected runs, updated by the ``key=value`` strings ``notebook_params``."""
    # the runner refuses a parameter that none of the selected notebooks has
    params = {
        k: str(v)
        for k, v in SMALL_NOTEBOOK_PARAMS.items()
        if set(_PARAM_RUNS.get(k, ("train1", "train2"))) & set(notebook_runs)
    }
    for kv in notebook_params:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise KitError(f"notebook setting '{kv}' is not key=value (e.g. epochs=2)")
        params[k] = v
    nb_args = ["--timeout", f"{notebook_timeout:g}", "--only", ",".join(notebook_runs)]
    nb_args += [f"{k}={v}" for k, v in params.items()]
    return nb_args
