"""The canary: before any student, the grader grades the reference solution in exactly the same sandbox, with the
same limits and the same run seed, as every submission. Below 100 % the environment is at fault, not the students:
the grader stops before writing any grade (``grades.csv`` and the rest are not written, no journal entry is made)
and names the cause it can find.

The causes it names: a Python, venv or site-packages folder reached through a symbolic link (bubblewrap binds the
folder the link points to, so the path the grader runs does not exist inside the sandbox); otherwise the
reference's status and its first failed tests (e.g. torch not importable in the sandbox, a limit too small).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from captioning.internals.errors import KitError

CANARY_ID = "_canary"  # a submission id never starts with "_" or "." (submissions.discover)
CANARY_DIR = ".canary"


def _first_link(path):
    """(the first symbolic link on the way to ``path``, what it points to), or None."""
    p = Path(os.path.abspath(path))
    for part in [*reversed(p.parents), p]:
        if part.is_symlink():
            return part, Path(os.path.realpath(part))
    return None


def link_problems(paths=None):
    """Messages for the interpreter paths the sandbox cannot show as the grader names them: the paths the
    command line and PYTHONPATH use (``sys.executable``, ``sys.prefix``, site-packages) reached through a link."""
    from instructor.grading.sandbox import site_packages

    if paths is None:
        paths = [
            ("the venv", sys.prefix),
            ("the Python interpreter", sys.executable),
            *(("site-packages", p) for p in site_packages()),
        ]
    out, seen = [], set()
    for what, path in paths:
        found = _first_link(path)
        if found is None or found[0] in seen:
            continue
        link, target = found
        seen.add(link)
        if what == "the Python interpreter" and str(link) == os.path.abspath(path):
            # the venv's own bin/python -> /usr/bin/python3.x is fine: the sandbox resolves it itself
            continue
        out.append(
            f"{what} at {path} is not visible inside the sandbox: {link} is a symbolic link to {target} "
            f"(the sandbox binds {target}, not the link). Run the grader with the venv's real path "
            f"({target}), or replace the link by the folder itself"
        )
    return out


def explain(result, layers, paths=None):
    """Why the reference scored below 100 %: what ``link_problems`` finds (with bubblewrap), then its status and
    its first failed tests."""
    causes = link_problems(paths) if "bwrap" in layers else []
    failed = [f"{name}: {t.get('message', '')[:200]}" for name, t in result.get("tests", {}).items() if not t.get("ok")]
    what = (
        f"the reference solution scored {result.get('total')}/{result.get('max')} in the grading sandbox "
        f"(status {result.get('status')}{': ' + result['message'][:300] if result.get('message') else ''})"
    )
    lines = [f"canary failed: {what}, so every submission would be graded wrongly; no grades were written."]
    if causes:
        lines.append("Cause: " + "; ".join(causes) + ".")
    if failed:
        lines.append("First failed tests: " + " | ".join(failed[:3]))
    if not causes:
        lines.append(
            "Check the environment (python -m instructor grade --check-sandbox; torch importable; the "
            "limits --timeout, --test-timeout, --memory-mb) and grade again."
        )
    return "\n".join(lines)


def run_canary(edition, reference, opts, layers, work, run_id):
    """Grade the kit's reference ``models.py`` as the submission ``CANARY_ID`` (``Job``, the same options and
    layers). Returns its result at 100 %; raises KitError (``explain``) below."""
    from captioning.check import kit_root
    from instructor.grading.job import Job
    from instructor.grading.submissions import Submission

    folder = Path(work) / CANARY_DIR
    shutil.rmtree(folder, ignore_errors=True)
    src = folder / "submission"
    src.mkdir(parents=True)
    shutil.copyfile(kit_root() / "captioning" / "models.py", src / "models.py")
    try:
        result = Job(
            Submission(CANARY_ID, src, models=src / "models.py"), folder, edition, reference, opts, layers, run_id
        ).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if result.get("status") != "ok" or result.get("total") != result.get("max"):
        raise KitError(explain(result, layers))
    return result
