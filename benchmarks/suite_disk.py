"""Disk space taken by ``make test``: the peak and the final growth of the used space on the filesystems that hold
the checkout and the temporary folder, for one or more checkouts run one after the other (the first is the
reference of the ratio column).

    .venv/bin/python benchmarks/suite_disk.py CHECKOUT [CHECKOUT ...] [--interval 1] [--logs DIR]

Each CHECKOUT is a clone whose ``.venv`` is already built (``make .venv/.installed``): the 6 GB of the venv are
not counted, only what the tests write. Each run gets a new, empty temporary folder (TMPDIR), deleted after. The used space is read with ``statvfs`` every ``--interval`` seconds, so
anything else that writes to the same disk meanwhile counts too: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, table  # noqa: E402

GB = 2**30


def filesystems(*paths):
    """One representative path per filesystem among ``paths`` (a dict st_dev -> path)."""
    out = {}
    for p in paths:
        out.setdefault(os.stat(p).st_dev, str(p))
    return out


def used(fs):
    return sum(shutil.disk_usage(p).used for p in fs.values())


def run_suite(checkout, log, interval, tmp):
    """``make test`` in ``checkout`` with TMPDIR=``tmp`` (a new folder: pytest keeps or deletes its earlier
    sessions' folders under the temporary folder, which would count towards another run)."""
    tmp.mkdir(parents=True)
    fs = filesystems(checkout, tmp)
    base = peak = used(fs)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            ["make", "test"], cwd=checkout, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TMPDIR=str(tmp))
        )
        while proc.poll() is None:
            peak = max(peak, used(fs))
            time.sleep(interval)
    end = used(fs)
    peak = max(peak, end)
    shutil.rmtree(tmp, ignore_errors=True)  # what it left there is counted in "left"; it must not fill the disk
    rev = (
        subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    summary = [
        line
        for line in Path(log).read_text(errors="replace").splitlines()
        if " in " in line and ("passed" in line or "failed" in line)
    ]
    return {
        "checkout": str(checkout),
        "rev": rev,
        "rc": proc.returncode,
        "wall": time.monotonic() - t0,
        "free": shutil.disk_usage(checkout).free + end - base,
        "peak": peak - base,
        "end": end - base,
        "summary": " | ".join(summary),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two readings (default 1)")
    ap.add_argument("--logs", type=Path, default=None, help="folder for each run's output (default: a temp folder)")
    args = ap.parse_args(argv)
    for c in args.checkouts:
        if not (c / ".venv" / "bin" / "python").exists():
            raise SystemExit(f"{c}: no .venv/bin/python. Build it first: make -C {c} .venv/.installed")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="suite_disk_"))
    logs.mkdir(parents=True, exist_ok=True)
    print("== disk taken by make test ==")
    print(f"command : python {' '.join(sys.argv)}")
    print(f"date    : {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    print(f"machine : {cpu_model()}, os.cpu_count() = {os.cpu_count()}, temporary folders under {logs}")
    print(flush=True)
    rows = []
    for i, c in enumerate(args.checkouts):
        r = run_suite(c.resolve(), logs / f"{i}_{c.name}.log", args.interval, logs / f"tmp_{i}")
        rows.append(r)
        print(
            f"{r['rev']} ({c}): exit {r['rc']}, {r['wall'] / 60:.1f} min, peak +{r['peak'] / GB:.2f} GB, "
            f"left +{r['end'] / GB:.2f} GB; pytest: {r['summary'] or 'no summary line'}",
            flush=True,
        )
    ref = rows[0]["peak"] or 1
    print()
    print(
        table(
            ["checkout", "rev", "exit", "minutes", "free at start GB", "peak GB", "left GB", "peak / first"],
            [
                [
                    r["checkout"],
                    r["rev"],
                    r["rc"],
                    f"{r['wall'] / 60:.1f}",
                    f"{r['free'] / GB:.1f}",
                    f"{r['peak'] / GB:.2f}",
                    f"{r['end'] / GB:.2f}",
                    f"{r['peak'] / ref:.2f}",
                ]
                for r in rows
            ],
        )
    )
    print(f"\nlogs: {logs}")


if __name__ == "__main__":
    main()
