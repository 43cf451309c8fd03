"""The outputs of a grading run: ``grades.csv``, ``feedback/ID.md``, ``summary.md``, ``results.json`` and
``logs/ID.log``, each written to a temporary name then renamed (``captioning.internals.atomic``).

Text that comes from a submission (messages, notes, logs) is untrusted: it may hold lone surrogates, NUL, terminal
escape sequences, HTML or Markdown that would fetch a remote image. ``plain`` makes it printable (control and
format characters shown as ``\\xNN`` escapes, invalid UTF-8 as ``\\udcNN``), ``_md`` also escapes HTML and
Markdown, so that feedback shows the text and never acts on it. Writing one file never stops the others.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import statistics
import sys
from pathlib import Path

from captioning.internals.atomic import write_text
from instructor.grading.remote import LOG_TAIL

# C0/C1 controls (NUL, ESC: terminal escape sequences), DEL, lone surrogates, and the invisible format characters
# (zero-width, bidi overrides, line/paragraph separators) that can make shown text differ from what it is
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_UNSAFE_ALL = re.compile(_UNSAFE.pattern[:-1] + "\n\t]")


def plain(text, newlines=False):
    """``text`` (any object) as printable text that always encodes to UTF-8: control and invisible format
    characters (ESC, NUL, bidi overrides) and lone surrogates become visible escapes (``\\x1b``, ``\\udcff``);
    with ``newlines``, newlines and tabs stay."""
    return (_UNSAFE if newlines else _UNSAFE_ALL).sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256 else f"\\u{ord(m[0]):04x}", str(text)
    )


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def _md(text):
    """Untrusted ``text`` on one line of Markdown (a table cell): shown, never rendered as HTML, link or image."""
    text = plain(" ".join(str(text).split()))
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _atomic_write(path, text):
    """Write ``text`` to ``path`` (atomically); an error is reported on stderr, never raised: one output that
    cannot be written must not stop the others."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(plain(text, newlines=True), path)
        return True
    except (OSError, ValueError) as e:
        print(f"error: could not write {plain(path)}: {plain(e)}", file=sys.stderr, flush=True)
        return False


def write_outputs(out, results, rubric, notebooks=False, sandbox=None):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # again: a submission may have deleted it
    regions = list(rubric["regions"])
    maxima = {r: sum(t.values()) for r, t in rubric["regions"].items()}
    runs = sorted({run for r in results for run in ((r.get("notebooks") or {}).get("bleu4") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    nb_cols = (["notebooks_status"] + [f"bleu4_{run}" for run in runs]) if notebooks else []
    w.writerow(["id", *regions, "total", "percent", "grading_status", *nb_cols])
    w.writerow(
        ["max", *[_num(maxima[r]) for r in regions], _num(sum(maxima.values())), "100.0", ""] + [""] * len(nb_cols)
    )
    for r in results:
        row = [
            r["id"],
            *[_num(r["regions"][g][0]) for g in regions],
            _num(r["total"]),
            f"{r['percent']:.1f}",
            r["status"],
        ]
        if notebooks:
            nb = r.get("notebooks") or {}
            bleu = nb.get("bleu4") or {}
            row += [nb.get("status", "not-run")] + [f"{bleu[run]:.4f}" if run in bleu else "" for run in runs]
        w.writerow(row)
    _atomic_write(out / "grades.csv", buf.getvalue())
    for r in results:
        _atomic_write(out / "feedback" / f"{r['id']}.md", _or_error(feedback_md, r, rubric))
        _atomic_write(
            out / "logs" / f"{r['id']}.log",
            plain(r.get("log") or "", newlines=True)
            + (
                f"\n[{r['log_bytes']} bytes of output in all; last {LOG_TAIL} kept]\n"
                if r.get("log_bytes", 0) > LOG_TAIL
                else ""
            ),
        )
    _atomic_write(out / "summary.md", _or_error(summary_md, results, rubric, sandbox))
    public = [{k: v for k, v in r.items() if k != "log"} for r in results]
    # ensure_ascii: lone surrogates and control characters become \\u escapes, valid JSON that any reader takes
    _atomic_write(out / "results.json", json.dumps(public, indent=1, ensure_ascii=True, default=str))


def _or_error(fn, *args):
    """``fn(*args)``, or a page saying why it could not be made (a grader bug must not cost the other outputs)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        print(f"error: {fn.__name__} failed: {type(e).__name__}: {plain(e)}", file=sys.stderr, flush=True)
        return f"# Grader error\n\nThis page could not be written ({_md(type(e).__name__)}: {_md(e)}).\n"


def _num(x):
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_STATUS_TEXT = {
    "ok": "all hidden tests ran",
    "timeout": "stopped by the time limit — look for an endless loop",
    "memory": "ran out of memory — look for allocations that grow without bound",
    "import-error": "models.py could not be imported, so no test could run",
    "crashed": "the grading process ended early",
    "no-models": "no models.py found in the submission",
    "bad-submission": "the submission could not be unpacked safely",
    "protocol-error": "the grading process broke the message protocol (tampered output?); the tests that were "
    "left could not run",
    "test-error": "a hidden test could not use what your code returned (see the test's message)",
    "grader-error": "the grader failed on its own side, not because of your code: the instructor re-grades it",
}


def feedback_md(r, rubric):
    lines = [
        f"# Feedback: {_md(r['id'])}",
        "",
        f"**Score: {_num(r['total'])} / {_num(r['max'])} points ({r['percent']:.1f} %)**",
        "",
        f"Grading status: `{_md(r['status'])}` — {_STATUS_TEXT.get(r['status'], '')}",
    ]
    if r.get("message"):
        lines.append(f"\n> {_md(r['message'])}")
    for n in r.get("notes", []):
        lines.append(f"\nNote: {_md(n)}")
    lines += [
        "",
        "Each TODO region of `models.py` is tested on its own: your code for that region runs with the "
        "reference layers, weights and other methods, so a mistake costs the points of its own region. "
        "Numbers are compared with max|got − expected| / (max|expected| + 1e-8) ≤ 1e-4.",
        "",
    ]
    for region, pts in rubric["regions"].items():
        got, mx = r["regions"][region]
        lines += [
            f"## {region} — {_num(got)} / {_num(mx)}",
            "",
            "| test | result | points | message |",
            "|---|---|---|---|",
        ]
        for name in pts:
            t = r["tests"][name]
            res = "pass" if t["ok"] else ("fail" if t["kind"] == "fail" else t["kind"])
            lines.append(f"| {name} | {res} | {_num(t['points'])}/{_num(t['max'])} | {_md(t['message'])} |")
        lines.append("")
    nb = r.get("notebooks")
    if nb:
        lines += [
            "## Notebooks (not graded here: small sizes on the shapes data)",
            "",
            f"Run: {nb['status']}" + (f" — {_md(nb['message'])}" if nb.get("message") else ""),
            "",
        ]
        lines += [f"- {run}: BLEU-4 {v:.4f}" for run, v in sorted((nb.get("bleu4") or {}).items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def summary_md(results, rubric, sandbox=None):
    n = len(results)
    pct = [r["percent"] for r in results]
    lines = ["# Grading summary", "", f"{n} submissions.", ""]
    if sandbox is not None:
        lines += ["## Sandbox", "", "Layers in use: " + (", ".join(sandbox["layers"]) or "none") + "."]
        if sandbox["missing"]:
            lines += [
                "",
                "**Graded WITHOUT these layers (--allow-unsandboxed):** "
                + "; ".join(f"{k} ({_md(d)})" for k, d in sandbox["missing"].items()),
            ]
        lines.append("")
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines += ["## Grading status", "", "| status | submissions |", "|---|---|"]
    lines += [f"| {s} | {c} |" for s, c in sorted(counts.items(), key=lambda x: -x[1])]
    lines += ["", "## Score distribution", ""]
    if pct:
        lines.append(
            f"mean {statistics.mean(pct):.1f} %, median {statistics.median(pct):.1f} %, min {min(pct):.1f} %, "
            f"max {max(pct):.1f} %"
        )
        lines += ["", "| percent | submissions | |", "|---|---|---|"]
        for lo in range(0, 100, 10):
            hi = lo + 10
            c = sum(1 for p in pct if lo <= p < hi or (hi == 100 and p == 100))
            lines.append(f"| {lo}–{hi}{']' if hi == 100 else ')'} | {c} | {'█' * c} |")
    lines += ["", "## Per region (mean points)", "", "| region | mean | max |", "|---|---|---|"]
    for region, pts in rubric["regions"].items():
        vals = [r["regions"][region][0] for r in results]
        lines.append(f"| {region} | {statistics.mean(vals):.2f} | {_num(sum(pts.values()))} |")
    fails = {}
    for r in results:
        for name, t in r["tests"].items():
            if not t["ok"]:
                fails[name] = fails.get(name, 0) + 1
    lines += ["", "## Most-failed tests", "", "| test | region | failed by |", "|---|---|---|"]
    region_of = {t: g for g, ts in rubric["regions"].items() for t in ts}
    for name, c in sorted(fails.items(), key=lambda x: (-x[1], x[0]))[:15]:
        lines.append(f"| {name} | {region_of.get(name, '')} | {c} of {n} |")
    return "\n".join(lines) + "\n"
