"""The rubric (``rubric.toml``): points per hidden test, one table per TODO region of models.py, checked against the
hidden tests and the TODO regions of the reference models.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

from captioning.internals.errors import KitError

HERE = Path(__file__).resolve().parent
RUBRIC = HERE / "rubric.toml"


def load_rubric(path=RUBRIC, check=True):
    """{"regions": {region: {test: points}}, "per_test_timeout_s": float}; checked against the hidden tests and
    the TODO regions of the reference models.py."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise KitError(f"rubric '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise KitError(f"rubric '{path}' is not valid TOML: {e}") from None
    regions = data.get("regions")
    if not isinstance(regions, dict) or not regions:
        raise KitError(f"rubric '{path}' has no [regions.\"Class.method\"] tables")
    for region, tests in regions.items():
        for test, pts in tests.items():
            if not isinstance(pts, (int, float)) or isinstance(pts, bool) or pts < 0:
                raise KitError(f"rubric '{path}': [regions.\"{region}\"] {test} = {pts!r} is not a number >= 0")
    settings = data.get("grading", {})
    rubric = {"regions": regions, "per_test_timeout_s": float(settings.get("per_test_timeout_s", 20))}
    if check:
        _check_rubric(rubric, path)
    return rubric


def _check_rubric(rubric, path):
    from captioning.check import kit_root
    from instructor.grading.hidden_tests import TESTS
    from instructor.regions import find_regions

    in_rubric = {t: r for r, tests in rubric["regions"].items() for t in tests}
    missing = sorted(set(TESTS) - set(in_rubric))
    unknown = sorted(set(in_rubric) - set(TESTS))
    if missing or unknown:
        raise KitError(
            f"rubric '{path}' and the hidden tests differ: no points for {missing or 'none'}; "
            f"unknown tests {unknown or 'none'}"
        )
    wrong = [t for t, r in in_rubric.items() if TESTS[t][0] != r]
    if wrong:
        raise KitError(
            f"rubric '{path}': tests under the wrong region: "
            + ", ".join(f"{t} (belongs to {TESTS[t][0]})" for t in wrong)
        )
    models = kit_root() / "captioning" / "models.py"
    todo = [r.name for r in find_regions(models.read_text(encoding="utf-8"), "captioning/models.py")]
    if not todo:
        raise KitError(f"{models} has no solution regions: grade from the instructor kit (with the solutions)")
    if sorted(todo) != sorted(rubric["regions"]):
        raise KitError(
            f"rubric regions {sorted(rubric['regions'])} are not the TODO regions of models.py {sorted(todo)}"
        )
