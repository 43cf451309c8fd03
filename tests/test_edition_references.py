"""The student edition speaks to students only: every reference in it leads somewhere inside the edition.

Instructor-only. One release of this kit (unverified, ~5 s) is scanned by ``instructor.references``; a synthetic
edition with one planted dead reference of each kind shows that the scan finds them; the release's rewrites
(citations, nbval directives, pyproject.toml) are tested on small inputs.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from captioning.check import kit_root
from captioning.config import DEFAULT_CFG
from instructor.references import Names, dead_references
from instructor.release import kit_files, make_release
from instructor.student_text import strip_dead_citations, student_cell, student_pyproject

ROOT = kit_root()
SECTION = "Where this kit differs from the course text"


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("edition") / "student-kit"
    make_release(out, verify=False)
    return out


def _env(release):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV"))}
    env.update(PYTHONPATH=str(release), PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")
    return env


# ----------------------------------------------------------------------------------------------- this kit's edition
def test_every_reference_of_the_edition_resolves_inside_it(edition):
    assert dead_references(edition, kit_files(ROOT)) == []


def test_edition_leaves_out_what_students_cannot_use(edition):
    assert not (edition / "tests" / "public" / "make_reference_values.py").exists()
    assert (ROOT / "tests" / "public" / "make_reference_values.py").exists()  # the kit keeps it
    pyproject = (edition / "pyproject.toml").read_text()
    assert "instructor" not in pyproject and not [l for l in pyproject.splitlines() if l.lstrip().startswith("#")]
    for p in (edition / "notebooks").glob("*.ipynb"):
        for cell in nbformat.read(str(p), as_version=4).cells:
            assert "NBVAL" not in cell.source and "make test" not in cell.source, p.name


def test_the_readme_section_on_departures_states_the_notebooks_values(edition):
    """The section is short, and what it claims is what the notebooks and the shapes data do."""
    text = (edition / "README.md").read_text()
    body = text.split(f"## {SECTION}\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    assert len(body) + 1 <= 15
    section = "\n".join(body)

    def params(name):
        nb = nbformat.read(str(edition / "notebooks" / f"{name}.ipynb"), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        return {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body}

    train1, train2 = params("train1"), params("train2")
    assert train2["init_state"] == "learned" and DEFAULT_CFG["init_state"] == "mean"
    assert 'init_state = "learned"' in section and '"mean"' in section
    assert train2["alpha_c"] == 0.0 and DEFAULT_CFG["alpha_c"] == 1.0 and "alpha_c = 0.0" in section
    assert train1["length_penalty"] == train2["length_penalty"] == 1.0 and DEFAULT_CFG["length_penalty"] == 0.0
    assert "length_penalty = 1.0" in section and "/ (words + 1)" in section
    from captioning.data.shapes import LARGER_FIRST

    assert LARGER_FIRST == 1.0 and "LARGER_FIRST" in section and "Larger objects are named first" in section
    # the code that explains a departure points at this section
    for rel in ("captioning/models.py", "captioning/data/shapes.py"):
        assert SECTION in " ".join(l.strip("# ") for l in (edition / rel).read_text().splitlines()), rel


def test_help_texts_of_the_edition_are_plain_and_lead_nowhere_else(edition):
    script = (
        "import argparse\nfrom captioning.cli import build_parser\np = build_parser()\nprint(p.format_help())\n"
        "for a in p._actions:\n    if isinstance(a, argparse._SubParsersAction):\n"
        "        for sp in a.choices.values():\n            print(sp.format_help())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=edition, env=_env(edition), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "usage: python -m captioning pretrain-encoder" in out and "usage: python -m captioning check" in out
    for bad in ("``", ":meth:", ":func:", "instructor", "SOLUTION", "benchmarks/", "docs/"):
        assert bad not in out, bad


def test_no_unused_import_in_the_edition(edition):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    res = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--select", "F401", "--output-format", "concise", "."],
        cwd=edition,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------------------- the scan, planted
KIT = [
    "captioning/__init__.py",
    "captioning/models.py",
    "captioning/solver.py",
    "instructor/__init__.py",
    "instructor/fastpath.py",
    "benchmarks/peer.py",
    "docs/results.md",
    "tests/public/test_a.py",
    "tests/test_layout.py",
    "README.md",
    "Makefile",
]


def _edition(root, planted):
    files = {
        "README.md": "# Kit\n\n## Install\n\ntext\n\n## Known deviations\n",
        "Makefile": "install:\n\tpip install -e .\n\ntest:\n\tpytest tests/public\n",
        "captioning/__init__.py": "",
        "captioning/models.py": "def fit():\n    pass\n",
        "captioning/solver.py": "",
        "tests/public/test_a.py": "",
    }
    files.update(planted)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "rel, text, expect",
    [
        ("captioning/a.py", "# measured by benchmarks/peer.py\n", "'benchmarks/peer.py' is not in the edition"),
        ("captioning/a.py", '"""See ``docs/results.md``."""\n', "'docs/results.md' is not in the edition"),
        ("captioning/a.py", "# rule: test_layout.py\n", "'test_layout.py' names a kit file"),
        ("captioning/a.py", "# captioning/metrics.py computes it\n", "'captioning/metrics.py' is not in"),
        ("captioning/a.py", "# see captioning.solver.train\n", "'captioning.solver.train' is no module"),
        ("captioning/a.py", "# the plug-in instructor.fastpath\n", "'instructor.fastpath' is no module"),
        ("captioning/a.py", '# (README, "Known\n# limitations")\n', 'section "Known limitations" of README'),
        ("notes.md", "[why](README.md#known-limitations)\n", "link anchor 'README.md#known-limitations'"),
        ("notes.md", "Run `make demo` first.\n", "'make demo': the edition's Makefile has no such target"),
        ("captioning/a.py", "# `make test` compares this cell's output\n", "says `make test` runs the notebooks"),
        ("captioning/a.py", "# Instructors regenerate it\n", "'Instructors' means something only"),
        ("captioning/a.py", "# fill in between BEGIN SOLUTION and END\n", "'BEGIN SOLUTION' means"),
    ],
)
def test_scan_reports_each_kind_of_dead_reference(tmp_path, rel, text, expect):
    ed = _edition(tmp_path, {rel: text})
    problems = dead_references(ed, KIT)
    assert problems and all(p.startswith(f"{rel}:") for p in problems), problems
    assert any(expect in p for p in problems), problems


def test_scan_accepts_references_that_resolve(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("The loop is `captioning/solver.py`; see [install](../README.md#install).")
    ]
    ed = _edition(
        tmp_path,
        {
            "captioning/a.py": (
                '"""Uses ``captioning.models.fit`` and models.py (README, "Known deviations"); run `make test`,\n'
                'tests/public/, ../captioning/models.py, outputs/x.json and data/coco."""\n'
            ),
            "notebooks/n.ipynb": nbformat.writes(nb),
        },
    )
    assert dead_references(ed, KIT) == []


# ------------------------------------------------------------------------------------------------------ rewrites
def test_strip_dead_citations_drops_them_from_prose_only():
    names = Names(["captioning/a.py", "README.md"], KIT + ["captioning/a.py"])
    src = (
        '"""Faster (``benchmarks/peer.py --load 2`` measures both) and smaller (15 s on 2 cores,\n'
        "``benchmarks/peer.py``). Why: docs/results.md.\n"
        "Per second\n(``docs/results.md``). Next sentence.\n"
        '"""\n\n'
        "x = 1  # oneDNN, 1.5x faster (benchmarks/peer.py); put back\n"
        'p = open("benchmarks/peer.py")  # (kept: code)\n'
    )
    out = strip_dead_citations(src, names)
    compile(out, "a.py", "exec")
    assert out.startswith('"""Faster and smaller (15 s on 2 cores). Why: docs/results.md.\nPer second.\nNext sentence.')
    assert "x = 1  # oneDNN, 1.5x faster; put back\n" in out
    assert 'p = open("benchmarks/peer.py")' in out


def test_student_cell_and_pyproject():
    cell = "# NBVAL_CHECK_OUTPUT\n# (make test compares this cell's output with the saved one)\n# keep\nprint(1)"
    assert student_cell(cell) == "# keep\nprint(1)"
    assert student_cell("# a comment about make test\nx = 1") == "# a comment about make test\nx = 1"
    toml = (
        '[project]\n# Pinned for grading\nname = "k"\n\n[tool.setuptools.packages.find]\n'
        'include = ["captioning*", "data_prep*", "instructor*"]\n\n[project.entry-points."captioning.plugins"]\n'
        'fast_path = "instructor.fastpath"\n\n[tool.ruff.lint.isort]\nknown-first-party = ["captioning", "instructor"]\n'
    )
    out = student_pyproject(toml)
    assert "instructor" not in out and "#" not in out and "entry-points" not in out
    assert 'include = ["captioning*", "data_prep*"]' in out and 'known-first-party = ["captioning"]' in out
