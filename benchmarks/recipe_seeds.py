"""What a student sees from the notebooks' defaults, at several seeds, and how long it takes: the shapes recipe.

For each seed N this runs exactly what `make notebooks` runs — ``python -m instructor notebooks`` (train1, train2,
test and caption for both decoders, through papermill) — into a fresh folder with ``-p seed N -p shapes_seed N``,
so data generation, preparation and the encoder's pretraining are part of the time. It prints each run's wall
time, the test BLEU-4 (beam 5) of both decoders, the attention decoder's pointing game with its chance level, and
the captions test.ipynb shows. With ``--demo`` it runs ``python -m instructor demo seed=N`` instead (the same
recipe at the demo's size) and reads its ``summary.json``.

Targets (issue "The notebooks must visibly work"): notebooks ≤ 10 min per seed on 2 idle cores, test BLEU-4
≥ 0.50 for both decoders, pointing game ≥ 0.80; demo ≤ 15 min, BLEU-4 ≥ 0.55 (attention) and ≥ 0.50 (the
other).

Run from the repository root: ``python benchmarks/recipe_seeds.py [--seeds 0 1 2] [--threads 2] [--demo]
[--out DIR]``. The seeds run one after the other, so each gets the whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import cpu_model, load_note, table


def run(cmd, log):
    t0 = time.time()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc:
        sys.exit(f"failed (exit {rc}): {' '.join(cmd)} — see {log}")
    return time.time() - t0


def notebooks(seed, out, threads):
    cmd = [
        sys.executable,
        "-m",
        "instructor",
        "notebooks",
        "--out",
        out,
        f"seed={seed}",
        f"shapes_seed={seed}",
        f"threads={threads}",
    ]
    seconds = run(cmd, out + ".log")

    def metrics(name):
        with open(os.path.join(out, f"{name}.metrics.json")) as fh:
            return json.load(fh)

    rnn, att = metrics("test_rnn"), metrics("test_attention")
    g = att.get("grounding") or {}
    return {
        "seconds": seconds,
        "bleu4_rnn": rnn["bleu4"],
        "bleu4_attention": att["bleu4"],
        "pointing": g.get("all"),
        "chance": g.get("chance"),
        "examples": [e["caption"] for e in att["examples"]],
        "examples_rnn": [e["caption"] for e in rnn["examples"]],
        "caption": metrics("caption_attention")["caption"],
    }


def demo(seed, out, threads):
    env_cmd = [
        sys.executable,
        "-c",
        f"import torch, sys; torch.set_num_threads({threads}); "
        f"from instructor.cli import main; sys.exit(main(sys.argv[1:]))",
    ]
    seconds = run(env_cmd + ["demo", "--out", out, f"seed={seed}"], out + ".log")
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    d = s["decoders"]
    g = d["attention"]["grounding"] or {}
    return {
        "seconds": seconds,
        "bleu4_rnn": d["rnn"]["bleu4"],
        "bleu4_attention": d["attention"]["bleu4"],
        "pointing": g.get("all"),
        "chance": g.get("chance"),
        "examples": [e["caption"] for e in s["examples"] if e["decoder"] == "attention"],
        "examples_rnn": [e["caption"] for e in s["examples"] if e["decoder"] == "rnn"],
        "caption": None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="PyTorch threads in every notebook (default 2: both cores of an idle 2-core machine)",
    )
    ap.add_argument("--demo", action="store_true", help="run `demo seed=N` instead of the notebooks")
    ap.add_argument("--out", default="outputs/bench_recipe", help="one fresh folder per seed is made below it")
    a = ap.parse_args()
    what = "demo" if a.demo else "notebooks"
    os.makedirs(a.out, exist_ok=True)
    print(f"== {what} at seeds {a.seeds} ({a.threads} threads) ==")
    print(
        f"machine : {cpu_model()}, os.cpu_count() = {os.cpu_count()}, load at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows, results = [], {}
    for seed in a.seeds:
        out = os.path.abspath(os.path.join(a.out, f"{what}_seed{seed}"))
        if os.path.exists(out):
            sys.exit(f"{out} exists: remove it (each seed must start from nothing) or choose another --out")
        r = (demo if a.demo else notebooks)(seed, out, a.threads)
        results[seed] = r
        rows.append(
            [
                str(seed),
                f"{r['seconds'] / 60:.1f}",
                f"{r['bleu4_rnn']:.3f}",
                f"{r['bleu4_attention']:.3f}",
                f"{r['pointing']:.2f}",
                f"{r['chance']:.2f}",
            ]
        )
        print(
            f"seed {seed}: {r['seconds'] / 60:.1f} min; attention examples: {r['examples'][:3]}; "
            f"without attention: {r['examples_rnn'][:3]}",
            flush=True,
        )
    print()
    print(table(["seed", "minutes", "BLEU-4 rnn", "BLEU-4 attention", "pointing game", "chance"], rows))
    print(load_note())
    with open(os.path.join(a.out, f"{what}_results.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
