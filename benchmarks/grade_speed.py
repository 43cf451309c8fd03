"""Grading throughput: ``python -m instructor grade`` on N generated submissions (default 300), end to end as an
instructor runs it (one process, sandbox on, default limits), against the target of 30 minutes for 300.

The mix: 40 % correct (the reference and the correct alternative styles of ``tests/test_grading.py``), 50 %
one-bug submissions (its ``BUGS``), 10 % hostile (raise at import, endless loop in one method, ``sys.exit`` in a
method, a 30 GB allocation). Prints the wall time, the time per submission, the statuses and the grader's peak
memory, and the ratio to the target.

    .venv/bin/python benchmarks/grade_speed.py [--n 300] [--jobs 2] [--keep DIR]
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
    "loops": mutate(REFERENCE, "DecoderWithRNN.one_step", "h, c = self.decode_step(",
                    "while True:\n            pass\n        h, c = self.decode_step("),
    "exits": mutate(REFERENCE, "Attention.forward", "att1 = self.encoder_att(",
                    "import sys; sys.exit(3)\n        att1 = self.encoder_att("),
    "hog": mutate(REFERENCE, "Attention.forward", "att1 = self.encoder_att(",
                  "_hog = torch.ones(30 * 2 ** 30, dtype=torch.uint8)\n        att1 = self.encoder_att("),
}


def generate(folder, n):
    correct = [("reference", REFERENCE)] + [(f"alt_{k}", alternative_text(k)) for k in ALTERNATIVES]
    bugs = [(f"bug_{k}", bug_text(k)) for k in BUGS]
    hostile = list(HOSTILE.items())
    n_correct, n_hostile = round(0.4 * n), round(0.1 * n)
    kinds = ([correct[i % len(correct)] for i in range(n_correct)] +
             [bugs[i % len(bugs)] for i in range(n - n_correct - n_hostile)] +
             [hostile[i % len(hostile)] for i in range(n_hostile)])
    for i, (name, text) in enumerate(kinds):
        write_sub(folder, f"s{i:03d}_{name}", text)
    return collections.Counter(k.split("_")[0] if not k.startswith(("alt", "bug")) else k[:3] for k, _ in kinds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", help="grade into this folder and keep it (default: a temporary folder)")
    a = ap.parse_args(argv)
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, python {platform.python_version()}")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="grade-speed-"))
    subs, out = work / "submissions", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    subs.mkdir(parents=True)
    mix = generate(subs, a.n)
    print(f"{a.n} submissions: " + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "instructor", "grade", str(subs), "--out", str(out), "--jobs",
                        str(a.jobs), "--quiet"], cwd=ROOT)
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if r.returncode != 0:
        raise SystemExit(f"grading failed (exit {r.returncode})")
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))[1:]
    statuses = collections.Counter(row["grading_status"] for row in rows)
    full = sum(row["percent"] == "100.0" for row in rows)
    print(f"\n| what | value |\n|---|---|\n| submissions | {len(rows)} |\n| jobs | {a.jobs} |"
          f"\n| wall time | {wall / 60:.1f} min |\n| per submission | {wall / len(rows):.2f} s |"
          f"\n| target (30 min for 300) | {TARGET_S * len(rows) / 300 / 60:.1f} min |"
          f"\n| time / target | {wall / (TARGET_S * len(rows) / 300):.2f} |"
          f"\n| statuses | {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))} |"
          f"\n| 100 % scores | {full} |\n| peak RSS of one process (grader or child) | {peak:.0f} MB |")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
