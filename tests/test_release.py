"""The student edition (``python -m instructor release``) and the self-check (``python -m captioning check``).

Instructor-only (not part of the release). One release of this repository is built per session (unverified), and
each verification step is its own test, so a failure names the step; a tiny synthetic kit covers marker errors,
notebooks, instructor-only files and --zip without subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from captioning.check import kit_root, run_checks
from captioning.internals.errors import KitError
from instructor.regions import BEGIN, END, find_regions, solution_lines, strip_solutions
from instructor.release import STUDENT_FILES, kit_files, make_release, verify_runs, verify_static

ROOT = kit_root()
MODELS = (ROOT / "captioning" / "models.py").read_text(encoding="utf-8")
TODOS = [
    "DecoderWithRNN.__init__",
    "DecoderWithRNN.forward",
    "DecoderWithRNN.one_step",
    "Attention.__init__",
    "Attention.forward",
    "DecoderWithAttention.__init__",
    "DecoderWithAttention.forward",
    "DecoderWithAttention.one_step",
]


def _env(release):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV"))}
    env.update(PYTHONPATH=str(release), PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")
    return env


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "student-kit"
    res = make_release(out, verify=False, zip_=True)
    return out, res


# ------------------------------------------------------------------------------------------------ markers / stubs
def test_regions_of_models_are_the_todos():
    regs = find_regions(MODELS, "captioning/models.py")
    assert [r.name for r in regs] == TODOS
    assert [r.is_init for r in regs] == [n.endswith("__init__") for n in TODOS]


def test_strip_solutions_stubs_each_region_and_keeps_the_banner():
    text, regs = strip_solutions(MODELS, "captioning/models.py")
    assert not any(line.strip() in (BEGIN, END) for line in text.splitlines())
    for name in TODOS:
        assert f"TODO {name} =" in text  # the banner stays
        if name.endswith("__init__"):
            assert f"# TODO {name}: define the layers" in text
        else:
            assert f'raise NotImplementedError("TODO {name}")' in text
    leaks = solution_lines(MODELS, regs)
    assert leaks and not [l for l in text.splitlines() if l.strip() in leaks]
    compile(text, "models.py", "exec")


@pytest.mark.parametrize(
    "src, line, what",
    [
        (f"x = 1\n{BEGIN}\ny = 2\n{BEGIN}\n{END}\n{END}\n", 4, "nested"),
        (f"def f():\n    {BEGIN}\n    return 1\n", 2, "never closed"),
        (f"x = 1\n{END}\n", 2, "stray"),
        ("x = 1\n\n# BEGIN SOLUTION\n", 3, "malformed"),
        ("x = 1\n    ##  END  SOLUTION\n", 2, "malformed"),
    ],
)
def test_marker_errors_name_file_and_line(src, line, what):
    with pytest.raises(KitError, match=rf"^pkg/mod\.py:{line}: .*{what}"):
        find_regions(src, "pkg/mod.py")


def test_todo_name_from_enclosing_def_without_banner():
    src = (
        f"class A:\n    def go(self):\n        {BEGIN}\n        return 1\n        {END}\n\n"
        f"def helper():\n    {BEGIN}\n    return 2\n    {END}\n"
    )
    text, regs = strip_solutions(src, "pkg/util.py")
    assert [r.name for r in regs] == ["A.go", "util.helper"]
    assert 'raise NotImplementedError("TODO A.go")' in text and 'raise NotImplementedError("TODO util.helper")' in text


# --------------------------------------------------------------------------------------------- synthetic kit
def _mini_kit(root, models_src=None):
    (root / "captioning").mkdir(parents=True)
    (root / "instructor" / "grading").mkdir(parents=True)
    (root / "instructor" / "student_edition").mkdir()
    (root / "instructor" / "student_edition" / "README.md").write_text("# For students\n")
    (root / "instructor" / "student_edition" / "Makefile").write_text("test:\n\tpytest tests/public\n")
    (root / "README.md").write_text("# Instructor README: solutions, hidden tests\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "kit"\n\n[project.entry-points."captioning.plugins"]\n'
        'fast_path = "instructor.fastpath"\n\n[tool.x]\ny = 1\n'
    )
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "speed.py").write_text("x = 1\n")
    (root / "captioning" / "__init__.py").write_text("")
    (root / "captioning" / "models.py").write_text(
        models_src
        or (
            "class Net:\n    def __init__(self):\n"
            "        # ===== TODO Net.__init__ =====\n"
            f"        {BEGIN}\n        self.w = 41 + 1\n        {END}\n\n"
            "    def run(self):\n        # ===== TODO Net.run =====\n"
            f"        {BEGIN}\n        return self.w * 1000\n        {END}\n"
        )
    )
    (root / "instructor" / "grading" / "hidden.py").write_text("SECRET = 1\n")
    (root / "tests" / "public").mkdir(parents=True)
    (root / "tests" / "grading_fixtures").mkdir()
    (root / "tests" / "public" / "test_net.py").write_text("def test_ok():\n    pass\n")
    (root / "tests" / "test_grading.py").write_text("x = 1\n")
    (root / "tests" / "test_release.py").write_text("x = 1\n")
    (root / "tests" / "grading_fixtures" / "mutant.py").write_text("x = 1\n")
    (root / "outputs").mkdir()
    (root / "outputs" / "run.txt").write_text("x")
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(
        f"a = 1\n# ===== TODO notebook.cell =====\n{BEGIN}\nb = a * 12345\n{END}\nprint(b)"
    )
    code.outputs = [nbformat.v4.new_output("stream", text="12345\n")]
    code.execution_count = 3
    code.metadata["papermill"] = {"duration": 1.0}
    nb.cells = [nbformat.v4.new_markdown_cell("# Train"), code]
    nb.metadata["papermill"] = {"parameters": {}}
    (root / "notebooks").mkdir()
    nbformat.write(nb, str(root / "notebooks" / "train.ipynb"))
    return root


def test_release_of_a_kit_without_git(tmp_path):
    kit = _mini_kit(tmp_path / "kit")
    files = kit_files(kit)
    assert "outputs/run.txt" not in files  # walked tree skips outputs/
    res = make_release(tmp_path / "out", root=kit, verify=False, zip_=True)
    out = Path(res["out"])
    released = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert released == [
        "Makefile",
        "README.md",
        "captioning/__init__.py",
        "captioning/models.py",
        "notebooks/train.ipynb",
        "pyproject.toml",
        "tests/public/test_net.py",
    ]
    assert set(res["left_out"]) >= {
        "instructor/grading/hidden.py",
        "tests/test_grading.py",
        "tests/test_release.py",
        "tests/grading_fixtures/mutant.py",
        "benchmarks/speed.py",
    }
    assert (out / "README.md").read_text() == "# For students\n"  # the students' README, not the kit's
    pyproject = (out / "pyproject.toml").read_text()
    assert "entry-points" not in pyproject and "instructor" not in pyproject and "[tool.x]" in pyproject
    models = (out / "captioning" / "models.py").read_text()
    assert "41 + 1" not in models and "# TODO Net.__init__: define the layers" in models and "pass" in models
    assert 'raise NotImplementedError("TODO Net.run")' in models and "self.w * 1000" not in models
    nb = nbformat.read(str(out / "notebooks" / "train.ipynb"), as_version=4)
    code = nb.cells[1]
    assert code.outputs == [] and code.execution_count is None and "papermill" not in code.metadata
    assert "papermill" not in nb.metadata
    assert "a * 12345" not in code.source and 'raise NotImplementedError("TODO notebook.cell")' in code.source
    verify_static(out, {"self.w * 1000": "x", "b = a * 12345": "y"})
    with zipfile.ZipFile(res["zip"]) as z:
        assert sorted(z.namelist()) == sorted(f"out/{p}" for p in released)


def test_release_refuses_bad_markers_and_leaves_nothing(tmp_path):
    kit = _mini_kit(tmp_path / "kit", models_src=f"x = 1\n{BEGIN}\ny = 2\n{BEGIN}\n{END}\n")
    with pytest.raises(KitError, match=r"captioning/models\.py:4: nested"):
        make_release(tmp_path / "out", root=kit, verify=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    kit2 = _mini_kit(tmp_path / "kit2")
    (kit2 / "tests" / "public" / "helper.py").write_text(f"def f():\n    {END}\n")
    with pytest.raises(KitError, match=r"tests/public/helper\.py:2: stray"):
        make_release(tmp_path / "out2", root=kit2, verify=False)


def test_verify_static_catches_leaks_and_markers(tmp_path):
    kit = _mini_kit(tmp_path / "kit")
    out = Path(make_release(tmp_path / "out", root=kit, verify=False)["out"])
    (out / "captioning" / "extra.py").write_text(f"v = self.w * 1000\n        return self.w * 1000\n{BEGIN}\n")
    with pytest.raises(KitError) as e:
        verify_static(out, {"return self.w * 1000": "captioning/models.py:11"})
    assert "captioning/extra.py:2: repeats the solution line" in str(e.value)
    assert "captioning/extra.py:3: solution marker" in str(e.value)


def test_release_refuses_existing_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(KitError, match="not empty"):
        make_release(tmp_path / "out", root=_mini_kit(tmp_path / "kit"), verify=False)


# ------------------------------------------------------------------------------------------- this kit's release
def test_release_files(release):
    out, res = release
    files = set(res["files"])
    assert (
        "captioning/models.py" in files
        and "captioning/data/shapes.py" in files
        and "captioning/data/prepare.py" in files
    )
    assert {"tests/public/public_checks.py", "tests/public/reference_values.pt"} <= files
    assert "tests/public/make_reference_values.py" not in files  # it needs the reference solution
    for rel in files:
        assert not rel.startswith(("instructor/", "benchmarks/", "tests/grading_fixtures/", "outputs/")), rel
        assert rel not in ("tests/test_grading.py", "tests/test_release.py")
    assert not (out / "instructor").exists() and not (out / "benchmarks").exists()
    for rel, src in STUDENT_FILES.items():
        assert (out / rel).read_text() == (ROOT / src).read_text()
    assert res["regions"][:8] == TODOS
    with zipfile.ZipFile(res["zip"]) as z:
        assert f"{out.name}/captioning/models.py" in z.namelist()


def test_release_notebooks_have_no_outputs(release):
    out, _ = release
    for p in out.rglob("*.ipynb"):
        nb = nbformat.read(str(p), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, p


def test_release_contains_no_solution_line_or_marker(release):
    out, _ = release
    _, regs = strip_solutions(MODELS, "captioning/models.py")
    verify_static(out, solution_lines(MODELS, regs))  # raises KitError naming file:line of any leak


def test_release_imports_and_public_tests_fail_only_with_todo(release):
    out, _ = release
    summary = verify_runs(out)
    assert summary["failed"] >= 20 and all("TODO" in m for _, m in summary["messages"])


def test_check_on_the_release_names_the_todos(release):
    out, _ = release
    res = subprocess.run(
        [sys.executable, "-m", "captioning", "check", "attention"],
        cwd=out,
        env=_env(out),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    fails = [l for l in res.stdout.splitlines() if l.startswith("FAIL")]
    # the empty __init__ fails every check: one FAIL line, which lists them
    assert len(fails) == 1 and "TODO Attention.__init__" in fails[0], res.stdout
    assert "this one cause fails 4 checks" in res.stdout and "0 of 4 checks passed" in res.stdout


# ---------------------------------------------------------------------------------------------------- check
def test_check_passes_on_the_reference():
    lines = []
    results = run_checks("all", out=lines.append)
    assert results and all(ok for _, _, ok, _ in results), [r for r in results if not r[2]]
    assert {p for p, *_ in results} == {"rnn", "attention", "attention-decoder"}
    assert lines[-1].strip() == f"{len(results)} of {len(results)} checks passed"


def test_check_reports_actionable_messages(monkeypatch):
    import captioning.models as m

    orig = m.Attention.forward

    def wrong_dim(self, encoder_out, decoder_hidden):
        z, alpha = orig(self, encoder_out, decoder_hidden)
        return z, torch.softmax(alpha.log(), dim=0)

    monkeypatch.setattr(m.Attention, "forward", wrong_dim)
    lines = []
    results = {n: (ok, msg) for p, n, ok, msg in run_checks("attention", out=lines.append)}
    ok, msg = results["alpha_sums_to_one"]
    assert not ok and msg.startswith("TODO Attention.forward: alpha does not sum to 1 over regions")
    assert not results["values"][0] and "relative error" in results["values"][1]
    assert results["shapes"][0] and any(l.startswith("FAIL  attention/alpha_sums_to_one") for l in lines)
    with pytest.raises(KitError, match="unknown part"):
        run_checks("nope")


def test_reference_values_are_small_and_reproducible(tmp_path):
    path = ROOT / "tests" / "public" / "reference_values.pt"
    assert path.stat().st_size < 200_000
    saved = torch.load(path, map_location="cpu", weights_only=True)
    sys.path.insert(0, str(ROOT / "tests" / "public"))
    try:
        import make_reference_values
    finally:
        sys.path.pop(0)
    fresh = make_reference_values.make_values()

    def compare(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                compare(a[k], b[k], f"{where}.{k}")
        elif torch.is_tensor(a):
            assert a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7), where
        elif where != "meta.torch":
            assert a == b, where

    compare(fresh, saved, "values")
    assert json.dumps(saved["meta"]["cfg"])  # plain types only
