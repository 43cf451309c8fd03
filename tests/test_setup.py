"""The kit's setup files agree with each other."""
import re
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
