"""Solution regions: the lines between a ``### BEGIN SOLUTION`` line and a ``### END SOLUTION`` line of the
reference ``models.py`` (or a notebook code cell), and their stubs in the student edition.

A region is replaced by ``raise NotImplementedError("TODO Class.method")``, or inside an ``__init__`` by a comment
and ``pass`` (the object stays constructible; using a layer that is not defined yet raises ``TodoError`` naming the
TODO). The TODO's name comes from the banner line ``# ==== TODO X.y ====`` in the comment block right above the
region, else from the enclosing class and function. The banner and its hints stay. Nested, unclosed, stray or
misspelt markers are refused (``KitError`` naming file and line).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from captioning.internals.errors import KitError

# Split so that this file holds no marker line itself.
BEGIN = "### BEGIN " + "SOLUTION"
END = "### END " + "SOLUTION"
_MARKER_LIKE = re.compile(r"^\s*#+\s*(BEGIN|END)[\s_-]*SOLUTION\b", re.IGNORECASE)
_BANNER = re.compile(r"^\s*#\s*=+\s*TODO\s+([A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class Region:
    """One solution region: lines ``begin`` (the BEGIN marker) … ``end`` (the END marker), 1-based."""

    where: str  # file (and notebook cell) for messages
    begin: int
    end: int
    name: str  # "DecoderWithRNN.one_step"
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
            raise KitError(
                f"{where}:{i}: malformed solution marker {line.strip()!r}: write exactly '{BEGIN}' or "
                f"'{END}' on a line of its own"
            )
        if k == "begin":
            if open_at is not None:
                raise KitError(
                    f"{where}:{i}: nested '{BEGIN}': the region opened at line {open_at} is not closed "
                    f"yet (add '{END}' before line {i})"
                )
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
        out.extend(lines[prev : r.begin - 1])
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
