"""``python -m captioning check [PART]`` — the students' self-check of ``models.py``.

Runs the public checks (``tests/public/public_checks.py``) of one part in this process and prints one PASS, FAIL
or WARN line per check, with a message that names the TODO, the tensor, the expected and actual shape or the
relative error, and the cause where the check can tell it. A WARN passed but points at something that looks wrong
(it does not change the exit status). See that file for the relative-error measure.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from captioning.errors import KitError

PARTS = ("rnn", "attention", "attention-decoder")
PUBLIC_TESTS = "tests/public"


def kit_root():
    """The folder that holds the ``captioning`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


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
    a list of (part, name, ok, message); a WARN is ok with a ``Warn`` message."""
    if part not in PARTS + ("all",):
        raise KitError(f"unknown part '{part}': choose one of {', '.join(PARTS)} or all")
    checks = load_public_checks(root)
    results = checks.run(None if part == "all" else part)
    width = max((len(f"{p}/{n}") for p, n, _, _ in results), default=10)
    status = [checks.status(ok, msg) for _, _, ok, msg in results]
    for (p, n, _, msg), st in zip(results, status):
        out(f"{st}  {f'{p}/{n}':<{width}}  {msg}")
    n_fail, n_warn = status.count("FAIL"), status.count("WARN")
    out(f"\n{len(results) - n_fail} of {len(results)} checks passed"
        + ("" if not n_warn else f", {n_warn} of them with a warning (WARN: read its message)")
        + ("" if not n_fail else f"; relative error = max|got - expected| / (max|expected| + 1e-8), "
                                 f"tolerance {checks.REL_TOL:g}"))
    return results


def _cmd_check(a):
    results = run_checks(a.part)
    if not all(ok for _, _, ok, _ in results):
        raise SystemExit(1)


def register(subparsers):
    s = subparsers.add_parser("check", help="self-check models.py: run the public checks of one part "
                                            "(rnn, attention, attention-decoder, or all)")
    s.add_argument("part", nargs="?", default="all", choices=PARTS + ("all",))
    s.set_defaults(func=_cmd_check)
