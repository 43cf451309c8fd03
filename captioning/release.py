"""The student edition of the kit (``python -m captioning release``) and the students' self-check
(``python -m captioning check``).

Release
    Copies the kit (the files git tracks or would track: ``git ls-files --cached --others --exclude-standard``;
    outside a git checkout a walk that skips ``.venv``, ``outputs``, ``__pycache__`` …) to ``--out``, leaving out
    the instructor-only files (``INSTRUCTOR_ONLY``), and

    * replaces every solution region of a ``.py`` file — the lines between a ``### BEGIN SOLUTION`` line and a
      ``### END SOLUTION`` line — by a stub: ``raise NotImplementedError("TODO Class.method")``, or inside an
      ``__init__`` a comment and ``pass`` (the object stays constructible; using a layer that is not defined yet
      raises ``TodoError`` naming the TODO). The TODO's name comes from the banner line ``# ==== TODO X.y ====``
      in the comment block right above the region, else from the enclosing class and function. The banner and
      its hints stay;
    * clears the outputs of every notebook (and stubs solution regions in its code cells the same way);
    * refuses nested, unclosed, stray or misspelt markers (``KitError`` naming file and line).

    The release is verified before it is moved into place: no marker line and no non-trivial line of any
    solution region appears in a released ``.py`` file or notebook code cell; every ``.py`` file compiles;
    ``import captioning.models`` works with only the release on the path; and ``pytest tests/public`` in the
    release fails only with "TODO …" messages (one subprocess does both).

Check
    Runs the public checks (``tests/public/public_checks.py``) of one part in this process and prints one
    PASS/FAIL line per check, with a message that names the tensor, the expected and actual shape or the relative
    error. See that file for the relative-error measure.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

from captioning.errors import KitError

# Split so that this file holds no marker line itself.
BEGIN = "### BEGIN " + "SOLUTION"
END = "### END " + "SOLUTION"
_MARKER_LIKE = re.compile(r"^\s*#+\s*(BEGIN|END)[\s_-]*SOLUTION\b", re.IGNORECASE)
_BANNER = re.compile(r"^\s*#\s*=+\s*TODO\s+([A-Za-z_][\w.]*)")

# Left out of the student edition (fnmatch patterns on the POSIX relative path; a pattern ending in "/" is a
# folder and everything under it).
INSTRUCTOR_ONLY = (
    "captioning/grading/",
    # the fast training path re-derives the decoders' step: it would hand students the solution (the solver
    # trains with the student's own forward when it is absent)
    "captioning/fastpath.py",
    # tests of the reference solution itself (students get tests/public and the data tests)
    "tests/test_models.py",
    "tests/test_decoding.py",
    "tests/test_solver.py",
    "tests/test_extensions.py",
    "tests/test_notebooks.py",
    "tests/test_demo.py",
    "tests/test_grading.py",
    "tests/test_release.py",
    "tests/grading_fixtures/",
    "outputs/",
)
# Skipped when walking a tree that is not a git checkout (a checkout lists its files with git).
_SKIP_DIRS = {".git", ".venv", "venv", "outputs", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", "build",
              "dist", "data", ".mypy_cache", ".ruff_cache"}
_ALWAYS_SKIP = {".git", ".venv", "outputs", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".pth.tar")
PARTS = ("rnn", "attention", "attention-decoder")
PUBLIC_TESTS = "tests/public"


@dataclass(frozen=True)
class Region:
    """One solution region: lines ``begin`` (the BEGIN marker) … ``end`` (the END marker), 1-based."""

    where: str      # file (and notebook cell) for messages
    begin: int
    end: int
    name: str       # "DecoderWithRNN.one_step"
    indent: str
    is_init: bool


# ------------------------------------------------------------------------------------------------------ regions
def _kind(line):
    """'begin' / 'end' for a marker line, 'bad' for a line that looks like a misspelt marker, else None."""
    s = line.strip()
    if s == BEGIN:
        return "begin"
    if s == END:
        return "end"
    if _MARKER_LIKE.match(line):
        return "bad"
    return None


def find_regions(text, where="<text>"):
    """The solution regions of ``text`` (a .py file or a notebook cell), in order.

    Raises KitError("FILE:LINE: …") for a nested BEGIN, an END without BEGIN, a BEGIN never closed, or a line that
    looks like a marker but is not exactly one.
    """
    lines = text.splitlines()
    spans, open_at = [], None
    for i, line in enumerate(lines, 1):
        k = _kind(line)
        if k == "bad":
            raise KitError(f"{where}:{i}: malformed solution marker {line.strip()!r}: write exactly '{BEGIN}' or "
                           f"'{END}' on a line of its own")
        if k == "begin":
            if open_at is not None:
                raise KitError(f"{where}:{i}: nested '{BEGIN}': the region opened at line {open_at} is not closed "
                               f"yet (add '{END}' before line {i})")
            open_at = i
        elif k == "end":
            if open_at is None:
                raise KitError(f"{where}:{i}: stray '{END}' without a '{BEGIN}' before it")
            spans.append((open_at, i))
            open_at = None
    if open_at is not None:
        raise KitError(f"{where}:{open_at}: '{BEGIN}' is never closed (no '{END}' after it)")
    if not spans:
        return []
    enclosing = _enclosing_functions(text, where)
    regions = []
    for b, e in spans:
        name = _banner_name(lines, b)
        cls_func = enclosing(b)
        if name is None:
            stem = Path(where.split(" (cell")[0]).stem
            if cls_func is None:
                name = stem
            else:
                name = ".".join(cls_func) if cls_func[0] else f"{stem}.{cls_func[1]}"
        is_init = name.endswith(".__init__") or (cls_func is not None and cls_func[1] == "__init__")
        indent = re.match(r"\s*", lines[b - 1]).group(0)
        regions.append(Region(where, b, e, name, indent, is_init))
    return regions


def _banner_name(lines, begin):
    """The X.y of a ``# ==== TODO X.y ====`` line in the comment block right above line ``begin``."""
    i = begin - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        m = _BANNER.match(lines[i])
        if m:
            return m.group(1)
        i -= 1
    return None


def _enclosing_functions(text, where):
    """A function line -> (class name or "", function name) of the innermost def around it, or None."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise KitError(f"{where}:{e.lineno}: not valid Python ({e.msg}); fix it before releasing") from None
    found = []  # (start, end, class, func)

    def visit(node, cls):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((child.lineno, child.end_lineno, cls or "", child.name))
                visit(child, None)
            else:
                visit(child, cls)

    visit(tree, None)

    def lookup(line):
        best = None
        for start, end, cls, func in found:
            if start <= line <= end and (best is None or start >= best[0]):
                best = (start, cls, func)
        return None if best is None else best[1:]

    return lookup


def stub_lines(region):
    """What a region becomes in the student edition."""
    ind = region.indent
    if region.is_init:
        return [f"{ind}# TODO {region.name}: define the layers listed above.", f"{ind}pass"]
    return [f'{ind}raise NotImplementedError("TODO {region.name}")']


def strip_solutions(text, where="<text>"):
    """(student text, regions): every solution region of ``text`` replaced by its stub, markers removed."""
    regions = find_regions(text, where)
    if not regions:
        return text, []
    lines = text.splitlines()
    out, prev = [], 0
    for r in regions:
        out.extend(lines[prev:r.begin - 1])
        out.extend(stub_lines(r))
        prev = r.end
    out.extend(lines[prev:])
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), regions


def solution_lines(text, regions):
    """The non-trivial lines (stripped) inside ``regions`` of ``text``: what must not appear in a release."""
    lines = text.splitlines()
    out = {}
    for r in regions:
        for i in range(r.begin, r.end - 1):
            s = lines[i].strip()
            if _nontrivial(s):
                out.setdefault(s, f"{r.where}:{i + 1}")
    return out


def _nontrivial(s):
    return len(s) >= 10 and not s.startswith("#") and re.search(r"[A-Za-z]", s) is not None


# ---------------------------------------------------------------------------------------------------- file list
def kit_root():
    """The folder that holds the ``captioning`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def _instructor_only(rel):
    for pat in INSTRUCTOR_ONLY:
        if pat.endswith("/"):
            if rel.startswith(pat) or fnmatch.fnmatch(rel, pat + "*"):
                return True
        elif fnmatch.fnmatch(rel, pat):
            return True
    return False


def kit_files(root):
    """Relative POSIX paths of the kit's files, before leaving out the instructor-only ones."""
    root = Path(root)
    files = None
    if (root / ".git").exists() and shutil.which("git"):
        try:
            res = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True)
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
            cell.source = text
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
    (instructor-only paths), ``zip`` (path or None), ``public_tests`` (summary of the verification run).
    """
    root = Path(root) if root is not None else kit_root()
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KitError(f"release folder '{out}' already exists and is not empty: remove it or choose another --out")
    if root.resolve() in out.parents or out == root.resolve():
        if not _instructor_only(out.relative_to(root.resolve()).as_posix() + "/"):
            raise KitError(f"release folder '{out}' is inside the kit: put it outside, or under outputs/")
    files = kit_files(root)
    released = [f for f in files if not _instructor_only(f)]
    left_out = [f for f in files if _instructor_only(f)]
    if "captioning/models.py" not in released:
        raise KitError(f"'{root}' holds no captioning/models.py: run the release from the kit's repository")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        leaks, regions, student_text = {}, [], {}
        for rel in released:
            src, dst = root / rel, tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(".py"):
                text = src.read_text(encoding="utf-8")
                new, regs = strip_solutions(text, rel)
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
        summary = None
        if verify:
            progress(f"release: {len(released)} files, {len(regions)} solution regions stubbed; verifying …")
            verify_static(tmp, leaks)
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
    return {"out": str(out), "files": released, "regions": [r.name for r in regions], "left_out": left_out,
            "zip": None if zip_path is None else str(zip_path), "public_tests": summary}


def _write_zip(folder, zip_path):
    tmp = zip_path.with_name(f".{zip_path.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    z.write(p, Path(folder.name) / p.relative_to(folder))
        os.replace(tmp, zip_path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def verify_static(release_dir, leaks):
    """No marker, no solution line, every .py compiles, every notebook code cell has no output."""
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
    if problems:
        raise KitError("the student edition is not clean:\n  " + "\n  ".join(problems[:30]) +
                       (f"\n  … and {len(problems) - 30} more" if len(problems) > 30 else ""))


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
            res = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, str(release_dir), str(xml), PUBLIC_TESTS],
                                 cwd=release_dir, env=env, capture_output=True, text=True, timeout=timeout)
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


# -------------------------------------------------------------------------------------------------------- check
def load_public_checks(root=None):
    """Import ``tests/public/public_checks.py`` of the kit at ``root`` (default: this kit)."""
    root = Path(root) if root is not None else kit_root()
    path = root / PUBLIC_TESTS / "public_checks.py"
    if not path.is_file():
        raise KitError(f"{path} is missing: the self-check needs the kit's {PUBLIC_TESTS}/ folder (run it from "
                       f"the kit you installed with `pip install -e .`)")
    spec = importlib.util.spec_from_file_location("public_checks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("public_checks", mod)
    spec.loader.exec_module(mod)
    return mod


def run_checks(part="all", root=None, out=print):
    """Run the public checks of ``part`` (one of PARTS or "all"); print one line each. Returns the results:
    a list of (part, name, ok, message)."""
    if part not in PARTS + ("all",):
        raise KitError(f"unknown part '{part}': choose one of {', '.join(PARTS)} or all")
    checks = load_public_checks(root)
    results = checks.run(None if part == "all" else part)
    width = max((len(f"{p}/{n}") for p, n, _, _ in results), default=10)
    for p, n, ok, msg in results:
        out(f"{'PASS' if ok else 'FAIL'}  {f'{p}/{n}':<{width}}  {msg}")
    n_fail = sum(not ok for _, _, ok, _ in results)
    out(f"\n{len(results) - n_fail} of {len(results)} checks passed"
        + ("" if not n_fail else f"; relative error = max|got - expected| / (max|expected| + 1e-8), "
                                 f"tolerance {checks.REL_TOL:g}"))
    return results


# ---------------------------------------------------------------------------------------------------------- CLI
def _cmd_release(a):
    res = make_release(a.out, zip_=a.zip, verify=not a.no_verify)
    print(f"wrote the student edition to {res['out']}: {len(res['files'])} files, "
          f"{len(res['regions'])} TODO regions stubbed ({', '.join(dict.fromkeys(res['regions']))})")
    print(f"left out (instructor-only): {len(res['left_out'])} files")
    if res["public_tests"]:
        s = res["public_tests"]
        print(f"verified: no solution line or marker; imports; public tests {s['passed']} passed, "
              f"{s['failed']} fail with TODO messages")
    if res["zip"]:
        print(f"wrote {res['zip']}")


def _cmd_check(a):
    results = run_checks(a.part)
    if not all(ok for _, _, ok, _ in results):
        raise SystemExit(1)


def register(subparsers):
    s = subparsers.add_parser("release", help="write the student edition (solutions stubbed, notebook outputs "
                                              "cleared, instructor files left out) and verify it")
    s.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    s.add_argument("--zip", action="store_true", help="also write OUT.zip")
    s.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_release)

    s = subparsers.add_parser("check", help="self-check models.py: run the public checks of one part "
                                            "(rnn, attention, attention-decoder, or all)")
    s.add_argument("part", nargs="?", default="all", choices=PARTS + ("all",))
    s.set_defaults(func=_cmd_check)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(make_release(sys.argv[1]), indent=1))
