"""``python -m instructor COMMAND`` — the instructor's commands. Settings use the student command line's one
syntax, ``key=value`` words (``captioning.cli.parse_overrides``)."""

from __future__ import annotations

import argparse

from captioning.cli import parse_command_line, parse_overrides, run_command


def _cmd_demo(a):
    import matplotlib

    matplotlib.use("Agg")
    from instructor.demo import run_demo

    run_demo(a.out, **parse_overrides(a.overrides))


def build_parser():
    from instructor import grading, notebook_runs, release, report

    p = argparse.ArgumentParser(prog="python -m instructor", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("demo", help="the whole kit on the built-in shapes data (what `make demo` runs)")
    s.add_argument("--out", default="outputs/demo")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. n_train=200 epochs=2 (tests)")
    s.set_defaults(func=_cmd_demo)
    for module in (notebook_runs, release, grading, report):
        module.register(sub)
    return p


def main(argv=None) -> int:
    return run_command(parse_command_line(build_parser(), argv))
