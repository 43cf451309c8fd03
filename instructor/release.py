"""``python -m instructor release --out DIR``: the student edition of the kit.

Copies the kit's files that make up the student edition (``STUDENT_EDITION``: the files git tracks or would
track — ``git ls-files --cached --others --exclude-standard`` — under those folders; outside a git checkout a
walk that skips ``.venv``, ``outputs``, ``__pycache__`` …; less ``NOT_IN_STUDENT_EDITION``) to ``--out``, writes
the students' README and Makefile (``STUDENT_FILES``) and a pyproject.toml without the entry points that name this
package and without the kit's comments, and

* replaces every solution region of a ``.py`` file by a stub (``instructor.regions``) and drops the citations of
  files the edition lacks from its comments and docstrings (``instructor.student_text``);
* clears the outputs of every notebook, stubs solution regions in its code cells the same way and drops nbval's
  directives (the edition's ``make test`` does not run the notebooks).

The release is verified before it is moved into place: no marker line and no non-trivial line of any solution
region appears in a released ``.py`` file or notebook code cell; no reference in the edition leads nowhere
(``instructor.references``: paths, file and module names, README sections, make targets, instructor-only
words); every ``.py`` file compiles; ``import captioning.models`` works with only the release on the path; and
``pytest tests/public`` in the release fails only with "TODO …" messages (one subprocess does both).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from captioning.check import PUBLIC_TESTS, kit_root
from captioning.internals.atomic import atomic_path
from captioning.internals.errors import KitError
from instructor.references import Names, dead_references
from instructor.regions import _kind, solution_lines, strip_solutions
from instructor.student_text import strip_dead_citations, student_cell, student_pyproject

# What students get: these folders and files of the kit and nothing else, so that a new instructor file can never
# leak into the edition (the instructor/ package, benchmarks/ and the kit's own tests are simply not listed).
STUDENT_EDITION = (
    "captioning/",
    "data_prep/",
    "notebooks/",
    "tests/public/",
    "docs/student/",
    "pyproject.toml",
    "environment.yml",
    ".gitignore",
)
# Files under those folders that students cannot use: they need the reference solution (make_reference_values
# rewrites the public checks' expected values from it).
NOT_IN_STUDENT_EDITION = ("tests/public/make_reference_values.py",)
# Written into the edition in place of the kit's own file: {edition path: kit path}.
STUDENT_FILES = {"README.md": "instructor/student_edition/README.md", "Makefile": "instructor/student_edition/Makefile"}
# Skipped when walking a tree that is not a git checkout (a checkout lists its files with git).
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "outputs",
    "__pycache__",
    ".pytest_cache",
    ".ipynb_checkpoints",
    "build",
    "dist",
    "data",
    ".mypy_cache",
    ".ruff_cache",
}
_ALWAYS_SKIP = {".git", ".venv", "outputs", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".pth.tar")


# ---------------------------------------------------------------------------------------------------- file list
def in_student_edition(rel):
    """Whether the kit file ``rel`` (a relative POSIX path) is part of the student edition."""
    if rel in NOT_IN_STUDENT_EDITION:
        return False
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in STUDENT_EDITION)


def kit_files(root):
    """Relative POSIX paths of the kit's files (all of them: ``make_release`` picks the student edition's)."""
    root = Path(root)
    files = None
    if (root / ".git").exists() and shutil.which("git"):
        try:
            res = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                capture_output=True,
                check=True,
            )
            files = [p for p in res.stdout.decode().split("\0") if p]
        except (subprocess.CalledProcessError, OSError):
            files = None
    if files is None:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
            for f in sorted(filenames):
                files.append((Path(dirpath) / f).relative_to(root).as_posix())
    keep = []
    for rel in sorted(set(files)):
        parts = rel.split("/")
        if any(p in _ALWAYS_SKIP or p.endswith(".egg-info") for p in parts[:-1]) or rel.endswith(_SKIP_SUFFIXES):
            continue
        if parts[-1].startswith(".") and parts[-1].endswith(".ipynb"):  # a notebook run's temporary copy
            continue
        p = root / rel
        if p.is_symlink() or not p.is_file():  # deleted but still in the index, or a link
            continue
        keep.append(rel)
    return keep


# ------------------------------------------------------------------------------------------------------ release
def _release_notebook(src, dst, rel, leaks):
    import nbformat

    nb = nbformat.read(str(src), as_version=4)
    regions = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            text, regs = strip_solutions(cell.source, f"{rel} (cell {k + 1})")
            if regs:
                leaks.update(solution_lines(cell.source, regs))
                regions.extend(regs)
            cell.source = student_cell(text)
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    nbformat.write(nb, str(dst))
    return regions


def make_release(out, root=None, zip_=False, verify=True, progress=functools.partial(print, flush=True)):
    """Write the student edition of the kit at ``root`` (default: this kit) to the folder ``out``.

    Returns a dict: ``out``, ``files`` (released relative paths), ``regions`` (TODO names), ``left_out``
    (the kit's paths not in the edition), ``zip`` (path or None), ``public_tests`` (summary of the verification run).
    """
    root = Path(root) if root is not None else kit_root()
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitError(f"release folder '{out}' already exists and is not empty: remove it or choose another --out")
    if root.resolve() in out.parents or out == root.resolve():
        if not (out.relative_to(root.resolve()).as_posix() + "/").startswith("outputs/"):
            raise KitError(f"release folder '{out}' is inside the kit: put it outside, or under outputs/")
    files = kit_files(root)
    released = [f for f in files if in_student_edition(f)]
    left_out = [f for f in files if not in_student_edition(f) and f not in STUDENT_FILES]
    missing = [src for src in STUDENT_FILES.values() if not (root / src).is_file()]
    if missing:
        raise KitError(f"'{root}' has no {missing[0]}: run the release from the kit's repository")
    if "captioning/models.py" not in released:
        raise KitError(f"'{root}' holds no captioning/models.py: run the release from the kit's repository")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        leaks, regions, student_text = {}, [], {}
        names = Names(released + list(STUDENT_FILES), files)
        for rel in released:
            src, dst = root / rel, tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel == "pyproject.toml":
                dst.write_text(student_pyproject(src.read_text(encoding="utf-8")), encoding="utf-8")
            elif rel.endswith(".py"):
                text = src.read_text(encoding="utf-8")
                new, regs = strip_solutions(text, rel)
                new = strip_dead_citations(new, names, rel.rpartition("/")[0])
                if regs:
                    leaks.update(solution_lines(text, regs))
                    regions.extend(regs)
                dst.write_text(new, encoding="utf-8")
                student_text[rel] = new
            elif rel.endswith(".ipynb"):
                regions.extend(_release_notebook(src, dst, rel, leaks))
            else:
                shutil.copy2(src, dst)
            if os.access(src, os.X_OK):
                os.chmod(dst, os.stat(src).st_mode & 0o777)
        for rel, src in STUDENT_FILES.items():
            shutil.copy2(root / src, tmp / rel)
        released = sorted(released + list(STUDENT_FILES))
        summary = None
        if verify:
            progress(f"release: {len(released)} files, {len(regions)} solution regions stubbed; verifying …")
            verify_static(tmp, leaks, files)
            summary = verify_runs(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    zip_path = None
    if zip_:
        zip_path = out.with_name(out.name + ".zip")
        _write_zip(out, zip_path)
    return {
        "out": str(out),
        "files": released,
        "regions": [r.name for r in regions],
        "left_out": left_out,
        "zip": None if zip_path is None else str(zip_path),
        "public_tests": summary,
    }


def _write_zip(folder, zip_path):
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, Path(folder.name) / p.relative_to(folder))


def released_sources(release_dir):
    """(where, text) of every .py file and notebook code cell of a release."""
    release_dir = Path(release_dir)
    for p in sorted(release_dir.rglob("*.py")):
        yield p.relative_to(release_dir).as_posix(), p.read_text(encoding="utf-8")
    for p in sorted(release_dir.rglob("*.ipynb")):
        import nbformat

        nb = nbformat.read(str(p), as_version=4)
        rel = p.relative_to(release_dir).as_posix()
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                yield f"{rel} (cell {k + 1})", cell.source


def verify_static(release_dir, leaks, kit_paths=None):
    """No marker, no solution line, every .py compiles, every notebook code cell has no output; with
    ``kit_paths`` (the kit's files), no reference that leads nowhere in the edition (``dead_references``)."""
    problems = []
    for where, text in released_sources(release_dir):
        for i, line in enumerate(text.splitlines(), 1):
            if _kind(line):
                problems.append(f"{where}:{i}: solution marker left in the release")
            s = line.strip()
            if s in leaks:
                problems.append(f"{where}:{i}: repeats the solution line {s!r} of {leaks[s]}")
        if where.endswith(".py"):
            try:
                compile(text, where, "exec", dont_inherit=True)
            except SyntaxError as e:
                problems.append(f"{where}:{e.lineno}: the released file does not compile ({e.msg})")
    import nbformat

    for p in sorted(Path(release_dir).rglob("*.ipynb")):
        nb = nbformat.read(str(p), as_version=4)
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                problems.append(f"{p.relative_to(release_dir)} (cell {k + 1}): outputs not cleared")
    if kit_paths is not None:
        problems += [f"{d} (rewrite it in the kit's file)" for d in dead_references(release_dir, kit_paths)]
    if problems:
        raise KitError(
            "the student edition is not clean:\n  "
            + "\n  ".join(problems[:30])
            + (f"\n  … and {len(problems) - 30} more" if len(problems) > 30 else "")
        )


_VERIFY_SCRIPT = r"""
import os, sys
try:
    import captioning.models as m
except BaseException as e:
    print(f"IMPORT-FAILED {type(e).__name__}: {e}", flush=True)
    sys.exit(3)
if not os.path.abspath(m.__file__).startswith(os.path.abspath(sys.argv[1])):
    print(f"IMPORT-FAILED captioning.models came from {m.__file__}, not from the release", flush=True)
    sys.exit(3)
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--junitxml", sys.argv[2],
                      "-o", "junit_family=xunit1", sys.argv[3]]))
"""


def verify_runs(release_dir, timeout=600):
    """In one subprocess with only the release on the path: ``import captioning.models``, then pytest on the
    public tests; every failure must name a TODO. Returns {"passed": n, "failed": n, "messages": [...]}."""
    release_dir = Path(release_dir)
    public = release_dir / PUBLIC_TESTS
    if not public.is_dir():
        raise KitError(f"the release has no {PUBLIC_TESTS}/ folder: the students need the public tests")
    with tempfile.TemporaryDirectory(prefix="release-verify-") as td:
        xml = Path(td) / "junit.xml"
        env = _clean_env(release_dir)
        try:
            res = subprocess.run(
                [sys.executable, "-c", _VERIFY_SCRIPT, str(release_dir), str(xml), PUBLIC_TESTS],
                cwd=release_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise KitError(f"the public tests of the release did not finish within {timeout} s") from None
        tail = (res.stdout + res.stderr)[-3000:]
        if res.returncode == 3 or "IMPORT-FAILED" in res.stdout:
            raise KitError(f"the release does not import: {tail.strip()}")
        if res.returncode not in (0, 1) or not xml.exists():
            raise KitError(f"pytest on the release's {PUBLIC_TESTS} did not run (exit {res.returncode}):\n{tail}")
        summary = junit_summary(xml)
    if summary["passed"] + summary["failed"] == 0:
        raise KitError(f"the release's {PUBLIC_TESTS} holds no tests")
    bad = [m for m in summary["messages"] if "TODO" not in m[1]]
    if bad:
        lines = "\n  ".join(f"{n}: {msg[:300]}" for n, msg in bad[:10])
        raise KitError(f"public tests of the release fail for reasons other than a TODO:\n  {lines}")
    return summary


def junit_summary(xml_path):
    """passed/failed counts and (test id, message) of every failing test in a pytest junit XML file."""
    root = ET.parse(xml_path).getroot()
    passed, messages = 0, []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [el for el in case if el.tag in ("failure", "error")]
        if bad:
            for el in bad:
                text = (el.text or "").strip().splitlines()
                messages.append((name, el.get("message") or (text[-1] if text else "")))
        elif not any(el.tag == "skipped" for el in case):
            passed += 1
    return {"passed": passed, "failed": len({n for n, _ in messages}), "messages": messages}


def _clean_env(release_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "COVERAGE_"))}
    env["PYTHONPATH"] = str(release_dir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# ---------------------------------------------------------------------------------------------------------- CLI
def _cmd_release(a):
    res = make_release(a.out, zip_=a.zip, verify=not a.no_verify)
    print(
        f"wrote the student edition to {res['out']}: {len(res['files'])} files, "
        f"{len(res['regions'])} TODO regions stubbed ({', '.join(dict.fromkeys(res['regions']))})"
    )
    print(f"left out (instructor-only): {len(res['left_out'])} files")
    if res["public_tests"]:
        s = res["public_tests"]
        print(
            f"verified: no solution line or marker; imports; public tests {s['passed']} passed, "
            f"{s['failed']} fail with TODO messages"
        )
    if res["zip"]:
        print(f"wrote {res['zip']}")


def register(subparsers):
    s = subparsers.add_parser(
        "release",
        help="write the student edition (solutions stubbed, notebook outputs "
        "cleared, instructor files left out) and verify it",
    )
    s.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    s.add_argument("--zip", action="store_true", help="also write OUT.zip")
    s.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_release)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(make_release(sys.argv[1]), indent=1))
