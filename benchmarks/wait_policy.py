"""How OpenMP's threads wait, on one run alone: one epoch of the notebooks' attention recipe per side, side by side.

Each side is a separate process (OpenMP reads its settings once, when torch loads) that trains the recipe's
attention decoder for one epoch on the shapes recipe's data and encoder, then validates it (beam search on the
VAL images, as the notebooks' epochs do): ``solver.fit`` with ``epochs=1``, timed from the call to its return.
Sides: the OpenMP wait setting × the kit's fast path or the decoder's own forward (``CAPTIONING_PLUGINS=off``, the
student edition's path), with ``--threads`` fixed threads (default 2: what the notebooks pick on an idle 2-core
machine). The data, the encoder's pretraining and the feature caches are made once beforehand, untimed.

* ``kit``: the kit's default (``GOMP_SPINCOUNT=10000`` unless set: spin briefly, then sleep);
* ``spin``: GNU OpenMP's default (300,000 rounds of spinning);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (never spin: the kit's default before);
* ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (spin without end).

    .venv/bin/python benchmarks/wait_policy.py [--rounds 2] [--threads 2] [--waits kit,spin,passive,active]
        [--paths fast,own] [--work DIR]

Run it on an idle machine: the point is the single run's speed (``benchmarks/contention.py`` measures runs that
share the cores). Rounds alternate the sides, so a change in the machine's speed touches every side alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, load_note, recipe_epoch_cfg, table  # noqa: E402

WAITS = {
    "kit": {},
    "spin": {"GOMP_SPINCOUNT": "300000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
PATHS = {"fast": {}, "own": {"CAPTIONING_PLUGINS": "off"}}


def child(work, threads):
    """One side: the recipe's attention decoder, one epoch + validation; prints the fit seconds as JSON."""
    from captioning.internals.threads import prefer_short_spin

    prefer_short_spin()  # as the notebooks and the command line do, before torch loads
    from captioning.internals import threads as cpu_threads
    from captioning.solver import fit

    cfg = recipe_epoch_cfg(work, "attention", os.path.join(work, "run"))
    if threads:
        cpu_threads.fixed(threads)
        t0 = time.monotonic()
        fit(cfg, progress=False)
        print("RESULT " + json.dumps({"seconds": time.monotonic() - t0}), flush=True)
    else:  # the preparation run: data, encoder, feature caches (timed too, not compared)
        t0 = time.monotonic()
        fit(dict(cfg, max_train_images=20, max_val_images=10), progress=False)
        print("RESULT " + json.dumps({"seconds": time.monotonic() - t0}), flush=True)


def run_side(work, threads, env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra, TQDM_DISABLE="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(work), "--threads", str(threads)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])["seconds"]
    sys.exit(f"a side failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--waits", default="kit,spin,passive,active", help=f"comma-separated, of {', '.join(WAITS)}")
    ap.add_argument("--paths", default="fast,own", help="fast: the kit's fast path; own: the decoder's own forward")
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="wait_policy_"))
    print("== OpenMP's wait policy: one attention epoch of the recipe, alone ==")
    print(f"command : python {' '.join(sys.argv)}")
    print(f"machine : {cpu_model()}, os.cpu_count() = {os.cpu_count()}, load at start {os.getloadavg()[0]:.2f}")
    print(f"threads : {a.threads} fixed in every side\n", flush=True)
    run_side(work, 0, {})  # untimed preparation
    sides = [(w, p) for p in a.paths.split(",") for w in a.waits.split(",")]
    times = {s: [] for s in sides}
    for r in range(a.rounds):
        for w, p in sides if r % 2 == 0 else sides[::-1]:
            times[(w, p)].append(run_side(work, a.threads, {**WAITS[w], **PATHS[p]}))
            print(f"round {r}: {w:8s} {p:5s} {times[(w, p)][-1]:6.1f} s", flush=True)
    rows = []
    for w, p in sides:
        base = statistics.median(times[("kit", p)]) if ("kit", p) in times else None
        med = statistics.median(times[(w, p)])
        ratio = f"{med / base:.2f}" if base else "—"
        rows.append([w, p, ", ".join(f"{t:.1f}" for t in times[(w, p)]), f"{med:.1f}", ratio])
    print()
    print(table(["wait", "decoder path", "fit s per round", "median s", "× kit's default"], rows))
    print(load_note())


if __name__ == "__main__":
    main()
