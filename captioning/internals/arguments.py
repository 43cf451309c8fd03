"""Checked command-line values: an argparse ``type`` per rule, so that a value out of range stops at once with
argparse's message naming the option, the value and what is allowed. Without torch (``prepare`` and ``shapes`` do
not load it); the rules match ``config.RULES``."""

from __future__ import annotations

import argparse

AT_LEAST_1 = ((lambda v: v >= 1), "an integer >= 1")
FINITE_AT_LEAST_0 = ((lambda v: 0 <= v < float("inf")), "a number >= 0")
FINITE_ABOVE_0 = ((lambda v: 0 < v < float("inf")), "a number > 0")


def checked(rule, convert=int):
    """An argparse ``type`` that converts and then checks with ``rule`` (test, message): a value out of range stops at
    once with argparse's message naming the option, the value and what is allowed (``--beam-size 0`` used to
    reach the beam search, ``--length-penalty inf`` to rank every caption alike)."""
    ok, allowed = rule

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: it must be {allowed}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be {allowed}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in some messages
    return parse
