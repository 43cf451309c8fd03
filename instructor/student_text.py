"""What the release changes in the text of the files it copies, so that the edition speaks to students only.

* ``student_pyproject``: the kit's pyproject.toml without its entry points (they name the instructor package),
  its comments (written for the kit's developers) and the ``instructor`` package in its lists;
* ``student_cell``: a notebook code cell without nbval's directives and the comments that explain them (the
  edition's ``make test`` runs ``tests/public`` only and its notebooks hold no outputs to compare);
* ``strip_dead_citations``: a ``.py`` file's comments and docstrings without their citations of files the
  edition lacks (benchmarks, the kit's docs and tests).

What is left is checked by ``instructor.references.dead_references``.
"""

from __future__ import annotations

import re

from instructor.references import _NAME, _PATH

# The packages of the kit that the edition does not hold, as pyproject.toml lists them.
_INSTRUCTOR_ITEM = re.compile(r',\s*"instructor\*?"|"instructor\*?"\s*,\s*')
_NBVAL_DIRECTIVE = re.compile(r"^\s*#\s*NBVAL_\w+\s*$")
_ABOUT_NBVAL = re.compile(r"\bnbval\b|\bmake test\b|\bsaved (?:one|output)", re.IGNORECASE)


def student_pyproject(text):
    """pyproject.toml for the edition: no ``[project.entry-points…]`` table, no comment line, no ``instructor``
    item in a list (``include = [... "instructor*"]``, isort's ``known-first-party``)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.startswith("[project.entry-points")
        if skipping or line.lstrip().startswith("#"):
            continue
        out.append(_INSTRUCTOR_ITEM.sub("", line))
    return re.sub(r"\n{3,}", "\n\n", "".join(out))


def student_cell(source):
    """A notebook code cell's source without ``# NBVAL_…`` directive lines and the comment lines right after one
    that speak of nbval, ``make test`` or the saved output."""
    out, after_directive = [], False
    for line in source.splitlines(keepends=True):
        if _NBVAL_DIRECTIVE.match(line):
            after_directive = True
            continue
        if after_directive and line.lstrip().startswith("#") and _ABOUT_NBVAL.search(line):
            continue
        after_directive = False
        out.append(line)
    return "".join(out)


def _prose_spans(text):
    """(start, end) offsets of the comments and docstrings of Python source ``text``."""
    import ast
    import io
    import tokenize

    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def off(row, col):  # tokenize/ast give 1-based rows, columns in characters (ast: UTF-8 bytes)
        return starts[row - 1] + col

    spans = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            spans.append((off(*tok.start), off(*tok.end)))
    lines = text.splitlines(keepends=True)
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            c = body[0].value
            if isinstance(c, ast.Constant) and isinstance(c.value, str):
                b0 = len(lines[c.lineno - 1].encode()[: c.col_offset].decode())
                b1 = len(lines[c.end_lineno - 1].encode()[: c.end_col_offset].decode())
                spans.append((off(c.lineno, b0), off(c.end_lineno, b1)))
    return spans


def _removable_citation(text, lo, hi, s0, s1):
    """(start, end, replacement) for a dead reference at text[s0:s1] inside the prose span [lo, hi): the
    ``, reference`` that ends a parenthetical, or the whole parenthetical with the space before it (a line that
    began with it keeps its line break); None when the reference is not inside parentheses of that span."""
    open_ = text.rfind("(", lo, s0)
    close = text.find(")", s1, hi)
    if open_ < 0 or close < 0 or ")" in text[open_ + 1 : s0] or "(" in text[s1:close]:
        return None
    sep = re.search(r"\s*[,:;]\s*$", text[open_ + 1 : s0])
    if sep and not text[s1:close].strip():
        return open_ + 1 + sep.start(), s1, ""
    gap = re.search(r"(?:[ \t]*\n[ \t]*(?:#+[ \t]*)?|[ \t]+)$", text[lo:open_])
    gap = gap.group(0) if gap else ""
    if "\n" not in gap:
        return open_ - len(gap), close + 1, ""
    after = re.match(r"[.,;:]*[ \t]*", text[close + 1 :]).group(0)
    rest_of_line = text[close + 1 + len(after) :].split("\n", 1)[0]
    if not rest_of_line.strip():
        return open_ - len(gap), close + 1, ""
    return open_ - len(gap), close + 1 + len(after), after.strip() + gap[gap.index("\n") :]


def strip_dead_citations(text, names, here=""):
    """Python source ``text`` without the citations of files the edition lacks (``names``: a ``Names``) in its
    comments and docstrings: ``(measured in ``docs/results.md``)`` and ``(``benchmarks/peer.py --load 2`` measures
    both)`` are dropped, ``(15 s …, ``benchmarks/x.py``)`` loses its last item. A dead reference outside
    parentheses stays, for ``dead_references`` to report: its sentence needs a person to rewrite it."""
    skip = set()
    while True:
        spans = _prose_spans(text)
        found = None
        for rx in (_PATH, _NAME):
            for m in rx.finditer(text):
                token, (s0, s1) = m.group(1), m.span(1)
                if (s0, token) in skip or not names.dead(token, here):
                    continue
                if text[s0 - 1] == "`":  # the whole ``…`` (a command line with its arguments)
                    end = text.find("`", s1)
                    if 0 <= end and "\n" not in text[s1:end]:
                        while text[s0 - 1] == "`":
                            s0 -= 1
                        s1 = end
                        while s1 < len(text) and text[s1] == "`":
                            s1 += 1
                span = next(((lo, hi) for lo, hi in spans if lo <= s0 and s1 <= hi), None)
                cut = span and _removable_citation(text, span[0], span[1], s0, s1)
                if cut:
                    found = cut
                    break
                skip.add((m.start(1), token))
            if found:
                break
        if not found:
            return text
        text = text[: found[0]] + found[2] + text[found[1] :]
        skip = set()  # offsets moved
