"""The kit's layout rules: the student package never imports the instructor package; no import cycles; no file
over 400 lines and no function over 80 lines in either package; one atomic-write helper; one override syntax."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("captioning", "instructor", "data_prep")


def _sources(packages=PACKAGES):
    for pkg in packages:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            yield p, p.read_text(encoding="utf-8")


def _module(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path, src):
    """Every kit module that ``path`` imports, at any depth of the file (lazy imports count: they can cycle too)."""
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_no_file_over_400_lines_and_no_function_over_80():
    long_files = [f"{p.relative_to(ROOT)}: {src.count(chr(10))}" for p, src in _sources() if src.count("\n") > 400]
    long_functions = [
        f"{p.relative_to(ROOT)}:{n.lineno} {n.name}: {n.end_lineno - n.lineno + 1}"
        for p, src in _sources()
        for n in ast.walk(ast.parse(src))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 80
    ]
    assert not long_files and not long_functions, (long_files, long_functions)


def test_the_student_package_never_names_the_instructor_package():
    offenders = [
        f"{p.relative_to(ROOT)}: {m}"
        for p, src in _sources(("captioning", "data_prep"))
        for m in _imports(p, src)
        if m.split(".")[0] == "instructor"
    ]
    assert not offenders
    # nor does it fall back on a missing module
    assert not [p for p, src in _sources(("captioning",)) if "except ImportError" in src and "plugins" not in p.name]


def test_no_import_cycles():
    modules = {_module(p): p for p, _ in _sources()}
    graph = {}
    for name, p in modules.items():
        deps = set()
        for m in _imports(p, p.read_text(encoding="utf-8")):
            while m and m not in modules:  # "pkg.mod.Name" -> "pkg.mod"
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + "."):  # a package's own __init__ is not a cycle
                deps.add(m)
        graph[name] = deps
    state, cycles = {}, []

    def visit(n, path):
        state[n] = "open"
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d) :] + [d]) if d in path else f"{n} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def test_one_atomic_write_helper():
    """Every "write to a temporary name, then rename" goes through captioning.internals.atomic, except writers of a set of
    files or a folder (prepare's ten files, the feature cache's resumable .partial, the release folder)."""
    allowed = {
        "captioning/internals/atomic.py",
        "captioning/data/prepare.py",
        "captioning/data/features.py",
        "instructor/release.py",
    }
    users = {str(p.relative_to(ROOT)) for p, src in _sources() if "os.replace(" in src or ".rename(" in src}
    assert users <= allowed, users - allowed


@pytest.mark.parametrize(
    "cmd", [["captioning", "train"], ["instructor", "demo"], ["instructor", "notebooks"], ["instructor", "grade"]]
)
def test_one_override_syntax(cmd):
    """Every command that takes settings takes them as key=value words."""
    res = subprocess.run([sys.executable, "-m", *cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "key=value" in res.stdout and " -p " not in res.stdout


def test_the_infrastructure_imports_nothing_of_the_course_layer():
    """``captioning.internals`` is the machinery students never read: it may import only itself (and the standard
    library / third-party packages), never the course layer (models, solver, datasets…) nor ``data`` /
    ``evaluation``, at any depth of the file (lazy imports count)."""
    offenders = [
        f"{p.relative_to(ROOT)}: {m}"
        for p, src in _sources(("captioning",))
        if "internals" in p.relative_to(ROOT).parts
        for m in _imports(p, src)
        if m.split(".")[0] in ("captioning", "instructor") and not m.startswith("captioning.internals")
    ]
    assert not offenders, offenders


def test_the_top_of_the_package_holds_what_the_course_names():
    """What a student opens first: the course's files at the top, everything else in three subpackages."""
    top = sorted(p.stem for p in (ROOT / "captioning").glob("*.py"))
    assert top == sorted(
        "__init__ __main__ adaptive check checkpoints cli config datasets decoding encoder models notebooks solver".split()
    ), top
    assert sorted(p.name for p in (ROOT / "captioning").iterdir() if (p / "__init__.py").is_file()) == [
        "data",
        "evaluation",
        "internals",
    ]


def test_the_code_is_formatted_and_lint_clean():
    """``ruff format`` was applied once to every .py file (settings in pyproject.toml); a change that drifts from it,
    or leaves an unused import or an undefined name, fails here with ruff's own list."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is a dependency in pyproject.toml: reinstall the kit)")
    for args in (["format", "--check"], ["check"]):
        run = subprocess.run([ruff, *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
