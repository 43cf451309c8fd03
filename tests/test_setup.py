"""The kit's setup files agree with each other, and the test settings do what they say."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_lists_the_same_pinned_packages_as_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==\S+)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    assert sorted(d.lower() for d in deps) == sorted(e.lower() for e in env)
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("\n## ")]
    assert "make demo" in head and "make test" in head


def _pytest_in(folder, tmpdir, files):
    """Run pytest (-q) in ``folder`` with ``files`` written there and TMPDIR=``tmpdir``; (exit code, output)."""
    for name, text in files.items():
        (folder / name).write_text(text)
    tmpdir.mkdir(exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TMPDIR=str(tmpdir)),
    )
    return res.returncode, res.stdout + res.stderr


WRITES = (
    "def test_{name}(tmp_path):\n    (tmp_path / 'checkpoint.pth.tar').write_bytes(bytes(1 << 20))\n    assert {ok}\n"
)


def test_the_suite_keeps_only_the_folders_of_failed_tests(tmp_path):
    """pyproject's pytest settings: a passed test's tmp_path goes when it ends, a failed one's stays for
    inspection, and a session that passed leaves nothing of its own (pytest's default kept every folder of the
    last three sessions: 4.6 GB per `make test`)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    project, tmpdir = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    rc, out = _pytest_in(
        project,
        tmpdir,
        {
            "pyproject.toml": pyproject,
            "test_some.py": WRITES.format(name="passes", ok=True) + WRITES.format(name="fails", ok=False),
        },
    )
    assert rc == 1, out
    kept = [p.relative_to(tmpdir) for p in tmpdir.rglob("checkpoint.pth.tar")]
    assert [p.parent.name for p in kept] == ["test_fails0"], kept
    rc, out = _pytest_in(project, tmpdir, {"test_some.py": WRITES.format(name="passes", ok=True)})
    assert rc == 0, out
    assert [p.relative_to(tmpdir) for p in tmpdir.rglob("checkpoint.pth.tar")] == kept  # nothing of its own
    assert len(list(tmpdir.rglob("pytest-[0-9]*"))) == 1


def test_a_full_disk_is_named_once_in_the_summary(tmp_path):
    """The conftest's summary names the cause when tests fail because the disk filled up."""
    rc, out = _pytest_in(
        tmp_path,
        tmp_path / "tmp",
        {
            "conftest.py": (ROOT / "tests" / "conftest.py").read_text(),
            "test_full.py": "import errno, os\n\ndef test_writes():\n"
            "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n\ndef test_fine():\n    pass\n",
        },
    )
    assert rc == 1, out
    assert "the disk is full" in out
    assert "1 test(s) failed with 'No space left on device', the first: test_full.py::test_writes" in out
    assert "GB free for temporary files" in out and "set TMPDIR" in out
