"""Grading of student submissions — INSTRUCTOR-ONLY (the release leaves this package out).

``python -m instructor grade SUBMISSIONS_DIR --out DIR [--jobs N] [--notebooks [key=value …]] [--timeout S] [--memory-mb M]``
``python -m instructor grade --check-sandbox``

* ``batch.py`` — ``grade``: stages every submission, grades the reference first (``canary.py``: below 100 % it
  stops and names the cause, no grades), then the submissions a few at a time (``job.py``), journals each result
  and the run's secret seed (``journal.py``) and writes the outputs (``outputs.py``: grades.csv, feedback/,
  summary.md, …);
* ``job.py`` — one submission: its sandbox folder, its process, the hidden tests run against it, its result;
  ``sandbox_outputs.py`` — what comes back from its sandbox (messages, log tails, notebook numbers), made safe;
* ``sandbox.py`` — the OS sandbox (bubblewrap namespaces, cgroup limits, resource limits); ``seccomp.py`` — its
  seccomp filter (no keyring, no new namespaces); ``escapes.py`` — ``--check-sandbox``;
* ``remote.py`` — the grader's end of the pipes to a submission's process; ``wire.py`` — their message format;
* ``child.py`` — runs inside the sandbox: does what the grader asks with the student's code, returns raw outputs;
  ``child_errors.py`` — its names for what went wrong (timeouts, memory, the student's exceptions);
* ``hidden_tests.py`` — the hidden tests, one region each (``hidden_init_tests.py``: those of the ``__init__``
  regions, scored by behaviour; ``hidden_attention_tests.py``: those of ``Attention.forward``;
  ``hidden_harness.py``: their registry, comparisons and ``Context``; ``hidden_checks.py``: what they share);
  ``rubric.toml`` — their points; ``rubric.py`` loads and checks it;
* ``submissions.py`` — finds the submissions (folders / .zip) and copies out, checked, the files grading needs.
"""

from __future__ import annotations


def _cmd_grade(a):
    from instructor.grading.batch import grade

    if a.check_sandbox:
        from instructor.grading.escapes import check_sandbox

        raise SystemExit(0 if check_sandbox() else 1)
    if a.submissions is None or a.out is None:
        from captioning.internals.errors import KitError

        raise KitError("grade needs SUBMISSIONS_DIR and --out DIR (or --check-sandbox)")
    results = grade(
        a.submissions,
        a.out,
        jobs=a.jobs,
        timeout=a.timeout,
        memory_mb=a.memory_mb,
        notebooks=a.notebooks,
        notebook_timeout=a.notebook_timeout,
        notebook_params=a.overrides,
        rubric_path=a.rubric,
        progress=not a.quiet,
        keep_sandboxes=a.keep_sandboxes,
        test_timeout=a.test_timeout,
        allow_unsandboxed=a.allow_unsandboxed,
    )
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    mean = sum(r["percent"] for r in results) / len(results)
    print(
        f"graded {len(results)} submissions (mean {mean:.1f} %; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        + f"); wrote {a.out}/grades.csv, "
        f"{a.out}/feedback/, {a.out}/summary.md"
    )


def register(subparsers):
    import os

    from instructor.grading.rubric import RUBRIC

    s = subparsers.add_parser(
        "grade",
        help="grade student submissions (folders or .zip files with models.py) "
        "with the hidden tests, each in its own sandboxed process",
    )
    s.add_argument("submissions", nargs="?", help="folder with one sub-folder or .zip per student")
    s.add_argument("--out", help="folder for grades.csv, feedback/, summary.md, results.json, logs/, journal/")
    s.add_argument(
        "--check-sandbox",
        action="store_true",
        help="try each known escape in a sandbox and print what is contained (exit 1 if one is not)",
    )
    s.add_argument(
        "--allow-unsandboxed",
        action="store_true",
        help="grade even where a sandbox layer (bubblewrap, cgroups) is missing; summary.md says so",
    )
    s.add_argument(
        "--jobs",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 2) // 2)),
        help="submissions graded in parallel (each with its own memory limit)",
    )
    s.add_argument("--timeout", type=float, default=300.0, help="wall-clock seconds per submission (default 300)")
    s.add_argument(
        "--test-timeout",
        type=float,
        default=None,
        help="seconds per hidden test and for importing models.py (default: rubric.toml's)",
    )
    s.add_argument(
        "--memory-mb",
        type=int,
        default=2048,
        help="memory the submission's processes may use together beyond what Python + torch take (default 2048)",
    )
    s.add_argument(
        "--notebooks",
        action="store_true",
        help="also run the student's train*/test* notebooks (python -m instructor notebooks) in the "
        "sandbox and record their BLEU-4",
    )
    s.add_argument("--notebook-timeout", type=float, default=1800.0)
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="with --notebooks: notebook settings, passed on to `python -m instructor notebooks`",
    )
    s.add_argument("--rubric", default=str(RUBRIC), help="points per hidden test (TOML)")
    s.add_argument("--keep-sandboxes", action="store_true", help="keep the temporary folders (debugging)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_grade)
