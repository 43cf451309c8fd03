"""bf16 or fp32 training steps on a CPU (cfg ``precision``): one epoch of each notebook decoder, side by side.

Each side is a separate process that trains one decoder of the notebooks' shapes recipe for one epoch on the
recipe's data and encoder, then validates it (as every notebook epoch does): ``solver.fit`` with ``epochs=1``,
timed from the call to its return. Sides: decoder (``rnn``: train1's, ``attention``: train2's) × path (``fast``:
the kit's fast path; ``own``: the decoder's own forward, ``CAPTIONING_PLUGINS=off``, the student edition's path) ×
precision (``fp32``, what ``precision="auto"`` keeps on a CPU; ``bf16``: bf16 autocast in the training steps,
``precision="bf16"``). ``--threads`` fixed threads (default 2: the notebooks' choice on an idle 2-core machine). The data,
the encoder's pretraining and the feature caches are made once beforehand, untimed. It prints each side's seconds,
their median and the fp32 / bf16 ratio, and the last epoch's training loss (the two precisions should be close).

    .venv/bin/python benchmarks/cpu_precision.py [--rounds 2] [--threads 2] [--decoders rnn,attention]
        [--paths fast,own] [--work DIR]

Run it on an idle machine. Rounds alternate the order of the sides, so a change in the machine's speed touches
every side alike. On a CPU without native bf16 (``captioning.internals.precision.cpu_has_native_bf16``) the bf16
sides run emulated: the script says which this machine is.
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

PATHS = {"fast": {}, "own": {"CAPTIONING_PLUGINS": "off"}}


def child(work, threads, decoder, precision):
    """One side: one epoch + validation of ``decoder``; prints the fit seconds and the loss as JSON."""
    from captioning.internals.threads import prefer_short_spin

    prefer_short_spin()  # as the notebooks and the command line do, before torch loads
    from captioning.internals import threads as cpu_threads
    from captioning.solver import fit

    cfg = recipe_epoch_cfg(work, decoder, os.path.join(work, f"run_{decoder}"), precision=precision)
    if not threads:  # the preparation run: data, encoder, feature caches
        cfg.update(max_train_images=20, max_val_images=10)
    else:
        cpu_threads.fixed(threads)
    t0 = time.monotonic()
    hist = fit(cfg, progress=False)["history"]
    seconds = time.monotonic() - t0
    print("RESULT " + json.dumps({"seconds": seconds, "loss": hist[-1]["train_loss"]}), flush=True)


def run_side(work, threads, decoder, precision, env_extra):
    env = dict(os.environ, TQDM_DISABLE="1", **env_extra)
    cmd = [sys.executable, __file__, "--child", str(work), "--threads", str(threads)]
    out = subprocess.run(
        cmd + ["--decoders", decoder, "--precision", precision], cwd=ROOT, env=env, capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.exit(f"a side failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoders", default="rnn,attention")
    ap.add_argument("--paths", default="fast,own", help="fast: the kit's fast path; own: the decoder's own forward")
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.threads, a.decoders, a.precision)
    from captioning.internals.precision import cpu_has_native_bf16

    work = Path(a.work or tempfile.mkdtemp(prefix="cpu_precision_"))
    print("== bf16 or fp32 training steps on a CPU: one epoch of each notebook decoder, alone ==")
    print(f"command : python {' '.join(sys.argv)}")
    print(f"machine : {cpu_model()}, os.cpu_count() = {os.cpu_count()}, load at start {os.getloadavg()[0]:.2f}")
    native = cpu_has_native_bf16()
    print(f"bf16    : {'native' if native else 'emulated'} on this CPU")
    print(f"threads : {a.threads} fixed in every side\n", flush=True)
    for d in a.decoders.split(","):
        run_side(work, 0, d, "fp32", {})  # untimed preparation
    sides = [(d, p, q) for d in a.decoders.split(",") for p in a.paths.split(",") for q in ("fp32", "bf16")]
    got = {s: [] for s in sides}
    for r in range(a.rounds):
        for d, p, q in sides if r % 2 == 0 else sides[::-1]:
            got[(d, p, q)].append(run_side(work, a.threads, d, q, PATHS[p]))
            print(f"round {r}: {d:9s} {p:4s} {q:4s} {got[(d, p, q)][-1]['seconds']:6.1f} s", flush=True)
    rows = []
    for d, p, q in sides:
        med = statistics.median(x["seconds"] for x in got[(d, p, q)])
        fp32 = statistics.median(x["seconds"] for x in got[(d, p, "fp32")])
        secs = ", ".join(f"{x['seconds']:.1f}" for x in got[(d, p, q)])
        rows.append([d, p, q, secs, f"{med:.1f}", f"{fp32 / med:.2f}×", f"{got[(d, p, q)][-1]['loss']:.4f}"])
    print()
    print(table(["decoder", "path", "precision", "fit s per round", "median s", "fp32 / this", "train loss"], rows))
    print(load_note())


if __name__ == "__main__":
    main()
