"""Dead references in a student edition: what a student reads there must lead somewhere inside the edition.

``dead_references(release_dir, kit_paths)`` scans the edition's text files (``.py``, ``.md``, ``.ipynb`` cells,
``Makefile``, ``.toml``, ``.yml``) and returns one ``"FILE:LINE: …"`` line per reference that does not resolve:

* a path whose first folder is one of the kit's (``captioning/…``, ``docs/…``, ``benchmarks/…``, ``instructor/``)
  and that is neither a file nor a folder of the edition; a bare file name (``results.md``, ``peer.py``) that names
  a file of the kit but of no file of the edition; a dotted module name of the kit (``captioning.x.y``,
  ``instructor.fastpath``) that is no module of the edition, or no name defined in that module;
* a section named in quotes beside a Markdown file (``README, "Known limitations"``, ``docs/x.md's "Y"``) or an
  anchor of a Markdown link, that is no heading of that file in the edition;
* ``make TARGET`` where the edition's Makefile has no such target, and any sentence that says ``make test`` runs
  the notebooks (nbval) when the edition's ``make test`` does not;
* words that only mean something in the instructor kit: the package ``instructor``, the solution markers, the
  ``fast_path`` plug-in (none is installed in the edition).

The kit's file list decides what counts as a reference (the names of the kit's top folders and files), so a new
instructor file or folder is covered without editing a list here.
"""

from __future__ import annotations

import bisect
import json
import posixpath
import re
from pathlib import Path, PurePosixPath

TEXT_SUFFIXES = (".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".cfg", ".txt")
TEXT_NAMES = ("Makefile",)
# Extensions of the names checked as bare file names (a name of the kit's files with one of them is a reference).
_NAME_EXT = r"(?:py|md|ipynb|pt|toml|yml|yaml|json|cfg|txt|sh)"
_PATH = re.compile(r"(?<![\w.\-/$~])(?:\.\./|\./)*((?:[A-Za-z_][\w.\-]*/)+(?:[\w.\-]*[\w/])?)")
_NAME = re.compile(rf"(?<![\w.\-/$~])([A-Za-z_][\w\-]*\.{_NAME_EXT})\b(?![\w/]|\.\w)")
_MODULE = re.compile(r"(?<![\w.\-/$\"'])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w\-])")
_QUOTE = r"[\"“'‘]([^\"”'’\n]{2,80})[\"”'’]"
_MD_FILE = r"((?:[\w.\-]+/)*(?:README|[\w.\-]+\.md))(?:\.md)?\b"
_SECTION_REFS = (
    re.compile(_MD_FILE + r"(?:'s|’s)?(?:,|:)?\s+(?:section\s+)?" + _QUOTE),
    re.compile(_QUOTE + r"\s+(?:section\s+)?(?:in|of)\s+(?:the\s+)?" + _MD_FILE),
)
_MD_LINK = re.compile(r"\]\(([^)#\s]*)#([\w\-]+)\)")
# ``make X`` as a command: at the start of a line (a shell block) or right after a backtick.
_MAKE = re.compile(r"(?:^[ \t]*(?:\$ )?|`+)make[ \t]+([a-z][\w\-]*)", re.M)
# A line saying that ``make test`` runs or compares notebooks (nbval) — true only where its recipe does.
_MAKE_TEST_NOTEBOOKS = re.compile(r"\bmake test\b`*[^\n]{0,60}?\b(?:nbval|compares|notebooks?|cells?)\b", re.I)
_WORDS = re.compile(r"\b(instructors?|BEGIN SOLUTION|END SOLUTION)\b", re.IGNORECASE)
_COMMENT_LEAD = re.compile(r"^\s*(?:#+\s?|//\s?)?")


def _text_files(root):
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES):
            yield p


def _chunks(root, p):
    """(where, text) of a file; a notebook gives one chunk per cell (where names the cell)."""
    rel = p.relative_to(root).as_posix()
    text = p.read_text(encoding="utf-8")
    if p.suffix != ".ipynb":
        yield rel, text
        return
    for k, cell in enumerate(json.loads(text).get("cells", []), 1):
        src = cell.get("source", "")
        yield f"{rel} (cell {k})", "".join(src) if isinstance(src, list) else src


def _flat(text):
    """The text with each line break and the comment leader after it made one space (a sentence of a comment
    spans lines), and the offset in it where each line starts."""
    starts, parts, pos = [], [], 0
    for line in text.splitlines():
        line = _COMMENT_LEAD.sub("", line, count=1).strip()
        starts.append(pos)
        parts.append(line)
        pos += len(line) + 1
    return " ".join(parts), starts


def _line(text, m):
    return text.count("\n", 0, m.start()) + 1


def _norm_heading(s):
    return re.sub(r"\s+", " ", re.sub(r"[*_`]", "", s)).strip().rstrip(":.").lower()


def _slug(s):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", _norm_heading(s)).replace(" ", "-")


def _headings(md_text):
    out = set()
    fence = False
    for line in md_text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6}\s", line):
            out.add(_norm_heading(line.lstrip("#")))
    return out


class Names:
    """What a path or file name in the text of an edition refers to: ``dead(token)`` for a path under one of the
    kit's top folders that is no file or folder of the edition, or a bare name of a kit file that no file of the
    edition has. ``edition`` and ``kit_paths`` are relative POSIX file paths."""

    def __init__(self, edition, kit_paths):
        self.files = set(edition)
        self.dirs = {"/".join(f.split("/")[:k]) for f in self.files for k in range(1, f.count("/") + 1)}
        self.names = {PurePosixPath(f).name for f in self.files}
        kit_paths = list(kit_paths)
        self.kit_tops = {f.split("/")[0] for f in kit_paths if "/" in f}
        self.kit_names = {PurePosixPath(f).name for f in kit_paths}
        self.kit_packages = {t for t in self.kit_tops if f"{t}/__init__.py" in kit_paths}

    def path_ok(self, rel):
        rel = rel.rstrip("/")
        return rel in self.files or rel in self.dirs

    def dead_path(self, path, here=""):
        return (
            path.split("/")[0] in self.kit_tops
            and not self.path_ok(path)
            and not self.path_ok(posixpath.normpath(f"{here}/{path}") if here else path)
        )

    def dead_name(self, name):
        return name in self.kit_names and name not in self.names

    def dead(self, token, here=""):
        return self.dead_path(token, here) if "/" in token else self.dead_name(token)


class _Edition(Names):
    def __init__(self, root, kit_paths):
        self.root = Path(root)
        super().__init__([p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()], kit_paths)
        self.make_targets = set()
        makefile = self.root / "Makefile"
        self.make_test_runs_notebooks = False
        if makefile.is_file():
            text = makefile.read_text(encoding="utf-8")
            self.make_targets = {m.group(1) for m in re.finditer(r"^([\w\-]+)\s*:", text, re.M)}
            recipe = re.search(r"^test\s*:.*\n((?:\t.*\n?)*)", text, re.M)
            self.make_test_runs_notebooks = bool(recipe and re.search(r"nbval|\.ipynb", recipe.group(1)))

    def module_ok(self, dotted):
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            base = "/".join(parts[:n])
            for f in (f"{base}.py", f"{base}/__init__.py"):
                if f in self.files:
                    if n == len(parts):
                        return True
                    text = (self.root / f).read_text(encoding="utf-8")
                    return re.search(rf"(?:def|class)\s+{parts[n]}\b|^\s*{parts[n]}\s*[:=]|\b{parts[n]}\b", text, re.M)
        return False

    def section_ok(self, md, section, where_dir):
        md = md if md.endswith(".md") else md + ".md"
        for cand in (md, posixpath.normpath(f"{where_dir}/{md}")):
            if cand in self.files:
                return _norm_heading(section) in _headings((self.root / cand).read_text(encoding="utf-8"))
        return False


def dead_references(release_dir, kit_paths):
    """``"FILE:LINE: …"`` for every reference of the edition at ``release_dir`` that does not resolve there;
    ``kit_paths`` are the kit's relative file paths (what ``release.kit_files`` lists)."""
    ed = _Edition(release_dir, kit_paths)
    problems = []
    for p in _text_files(ed.root):
        here = p.parent.relative_to(ed.root).as_posix()
        for where, text in _chunks(ed.root, p):
            flat, starts = _flat(text)

            def at(match, group=0):
                return f"{where}:{bisect.bisect_right(starts, match.start(group))}"

            for m in _PATH.finditer(flat):
                if ed.dead_path(m.group(1), here):
                    problems.append(f"{at(m, 1)}: '{m.group(1)}' is not in the edition")
            for m in _NAME.finditer(flat):
                name = m.group(1)
                if ed.dead_name(name):
                    problems.append(f"{at(m, 1)}: '{name}' names a kit file that is not in the edition")
            for m in _MODULE.finditer(flat):
                dotted = m.group(1)
                if dotted.split(".")[0] in ed.kit_packages and not ed.module_ok(dotted):
                    problems.append(f"{at(m, 1)}: '{dotted}' is no module or name of the edition")
            for rx in _SECTION_REFS:
                for m in rx.finditer(flat):
                    md, section = (m.group(1), m.group(2)) if rx is _SECTION_REFS[0] else (m.group(2), m.group(1))
                    if not ed.section_ok(md, section, here):
                        problems.append(f'{at(m)}: section "{section}" of {md} does not exist in the edition')
            if p.suffix == ".md" or p.suffix == ".ipynb":
                for m in _MD_LINK.finditer(flat):
                    target = m.group(1) or p.relative_to(ed.root).as_posix()
                    t = target if target in ed.files else posixpath.normpath(f"{here}/{target}")
                    text_t = (ed.root / t).read_text(encoding="utf-8") if t in ed.files else ""
                    if m.group(2) not in {_slug(h) for h in _headings(text_t)}:
                        problems.append(f"{at(m)}: link anchor '{target}#{m.group(2)}' leads to no heading")
            for m in _MAKE.finditer(text):
                if ed.make_targets and m.group(1) not in ed.make_targets:
                    problems.append(
                        f"{where}:{_line(text, m)}: 'make {m.group(1)}': the edition's Makefile has no such target"
                    )
            if not ed.make_test_runs_notebooks:
                for m in _MAKE_TEST_NOTEBOOKS.finditer(text):
                    problems.append(
                        f"{where}:{_line(text, m)}: says `make test` runs the notebooks; the edition's does not"
                    )
            for m in _WORDS.finditer(flat):
                problems.append(f"{at(m)}: '{m.group(1)}' means something only in the instructor kit")
    return problems
