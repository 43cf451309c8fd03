"""Grading throughput: ``python -m instructor grade`` on N generated submissions (default 300), end to end as an
instructor runs it (one process, sandbox on, default limits), against the target of 30 minutes for 300.

The mix: 40 % correct (the reference and the correct alternative styles of ``tests/test_grading.py``), 50 %
one-bug submissions (its ``BUGS``), 10 % hostile (raise at import, endless loop in one method, ``sys.exit`` in a
method, a 30 GB allocation). Prints the wall time, the time per submission, the statuses and the grader's peak
memory, and the ratio to the target.

``--chaos``: the mix of the grader's robustness promise instead: 10 % hostile (the four above, plus a reply nested
200,000 deep, a list where the protocol has an object id, an exception message full of control characters and
HTML, a folder named ``edition``), 10 % broken (zips with a non-UTF-8 name, a corrupt deflate stream, a file and a
folder of the same name, a 300-character name; a syntax error; no models.py), the rest half correct, half one-bug.
``--busy N`` runs N CPU-bound processes beside the grader the whole time. Both print whether the batch finished
with a row for every submission and whether every correct one scored 100 %.

    .venv/bin/python benchmarks/grade_speed.py [--n 300] [--jobs 2] [--keep DIR] [--chaos] [--busy N]
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the generated submissions are the grader tests' bugs and alternatives

from test_grading import ALTERNATIVES, BUGS, REFERENCE, alternative_text, bug_text, mutate, write_sub  # noqa: E402

TARGET_S = 30 * 60
HOSTILE = {
    "raises": REFERENCE + "\nraise RuntimeError('boom at import')\n",
    "loops": mutate(
        REFERENCE,
        "DecoderWithRNN.one_step",
        "h, c = self.decode_step(",
        "while True:\n            pass\n        h, c = self.decode_step(",
    ),
    "exits": mutate(
        REFERENCE,
        "Attention.forward",
        "att1 = self.encoder_att(",
        "import sys; sys.exit(3)\n        att1 = self.encoder_att(",
    ),
    "hog": mutate(
        REFERENCE,
        "Attention.forward",
        "att1 = self.encoder_att(",
        "_hog = torch.ones(30 * 2 ** 30, dtype=torch.uint8)\n        att1 = self.encoder_att(",
    ),
}


def generate(folder, n, chaos=False):
    """Write ``n`` submissions into ``folder``; {id: kind} with kind correct / bug / hostile / broken."""
    correct = [("reference", REFERENCE)] + [(f"alt_{k}", alternative_text(k)) for k in ALTERNATIVES]
    bugs = [(f"bug_{k}", bug_text(k)) for k in BUGS]
    hostile = list(HOSTILE.items())
    n_hostile, n_broken = round(0.1 * n), (round(0.1 * n) if chaos else 0)
    n_correct = round(0.5 * (n - n_hostile - n_broken)) if chaos else round(0.4 * n)
    if chaos:
        from test_grading_robust import trigger_submissions

        hostile += [
            (k, text) for k, (text, status, _) in trigger_submissions().items() if status != "ok" or k == "odd_message"
        ] + [("edition", REFERENCE)]
    kinds = (
        [("correct", *correct[i % len(correct)]) for i in range(n_correct)]
        + [("bug", *bugs[i % len(bugs)]) for i in range(n - n_correct - n_hostile - n_broken)]
        + [("hostile", *hostile[i % len(hostile)]) for i in range(n_hostile)]
    )
    made = {}
    for i, (kind, name, text) in enumerate(kinds):
        sid = name if name == "edition" and "edition" not in made else f"s{i:03d}_{name}"
        write_sub(folder, sid, text)
        made[sid] = kind
    if n_broken:
        made.update(_broken(folder, n_broken, len(kinds)))
    return made


def _broken(folder, n, start):
    """{id: "broken"}: ``n`` submissions that cannot be staged or imported, written into ``folder``."""
    from test_grading_robust import hostile_zips

    scratch = Path(tempfile.mkdtemp(prefix="broken-"))
    zips = list(hostile_zips(scratch).items())
    other = [("syntax_error", "def broken(:\n"), ("no_models", None)]
    made = {}
    for i in range(n):
        k = i % (len(zips) + len(other))
        if k < len(zips):
            name, path = zips[k]
            sid = f"s{start + i:03d}_{name}"
            shutil.copyfile(path, folder / f"{sid}.zip")
        else:
            name, text = other[k - len(zips)]
            sid = f"s{start + i:03d}_{name}"
            if text is None:
                (folder / sid).mkdir()
                (folder / sid / "README.md").write_text("forgot models.py\n")
            else:
                write_sub(folder, sid, text)
        made[sid] = "broken"
    shutil.rmtree(scratch, ignore_errors=True)
    return made


def busy(n):
    """``n`` CPU-bound processes (what else an instructor's machine may be doing)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", help="grade into this folder and keep it (default: a temporary folder)")
    ap.add_argument("--chaos", action="store_true", help="10 %% hostile, 10 %% broken, the rest correct or one-bug")
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes running beside the grader")
    a = ap.parse_args(argv)
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, python {platform.python_version()}")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="grade-speed-"))
    subs, out = work / "submissions", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    subs.mkdir(parents=True)
    made = generate(subs, a.n, chaos=a.chaos)
    mix = collections.Counter(made.values())
    print(
        f"{a.n} submissions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(mix.items()))
        + (f"; {a.busy} busy processes beside the grader" if a.busy else "")
    )
    hogs = busy(a.busy)
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "instructor",
                "grade",
                str(subs),
                "--out",
                str(out),
                "--jobs",
                str(a.jobs),
                "--quiet",
            ],
            cwd=ROOT,
        )
    finally:
        wall = time.monotonic() - t0
        for p in hogs:
            p.kill()
            p.wait()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if r.returncode != 0:
        raise SystemExit(f"grading failed (exit {r.returncode})")
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))[1:]
    statuses = collections.Counter(row["grading_status"] for row in rows)
    full = sum(row["percent"] == "100.0" for row in rows)
    by_id = {row["id"]: row for row in rows}
    correct = [sid for sid, kind in made.items() if kind == "correct"]
    short = {
        sid: by_id[sid]["percent"] if sid in by_id else "no row"
        for sid in correct
        if sid not in by_id or by_id[sid]["percent"] != "100.0"
    }
    print(
        f"\n| what | value |\n|---|---|\n| submissions | {len(rows)} |\n| jobs | {a.jobs} |"
        f"\n| wall time | {wall / 60:.1f} min |\n| per submission | {wall / len(rows):.2f} s |"
        f"\n| target (30 min for 300) | {TARGET_S * len(rows) / 300 / 60:.1f} min |"
        f"\n| time / target | {wall / (TARGET_S * len(rows) / 300):.2f} |"
        f"\n| statuses | {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} |"
        f"\n| 100 % scores | {full} |\n| peak RSS of one process (grader or child) | {peak:.0f} MB |"
        f"\n| a row for every submission | {'yes' if len(rows) == a.n else f'NO ({len(rows)} of {a.n})'} |"
        f"\n| every correct one 100 % | {'yes' if not short else f'NO: {short}'} |"
    )
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
