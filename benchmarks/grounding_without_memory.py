"""Is the attention decoder's pointing game limited by its memory of the image? Side by side on a finished demo's
data, encoder and settings, the demo's attention checkpoint and the same decoder retrained with the same cfg and
seed but the other ``init_state``:

* ``mean``    — the course: h₀/c₀ = Linear(mean feature), so the LSTM starts out knowing every object in the image
                and may never need to look;
* ``learned`` — h₀/c₀ = the same layers on a zero feature (learned constants): the image reaches the LSTM only
                through attention. The demo's default since 2026-11-29.

Both are scored on the TEST split with the demo's beam size and length penalty: BLEU-4 and the pointing game with
its splits (``evaluate.grounding``). Nothing is asserted. The retraining takes as long as the demo's attention
training (about 7 minutes on a 2-core CPU).

    python -m instructor demo decoders=attention seed=4 --out /tmp/d4     # any demo folder
    python benchmarks/grounding_without_memory.py /tmp/d4 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _common import THREADS_HELP, setup


def line(name, r):
    g = r["grounding"]
    pos = ", ".join(f"{k} {v['rate']:.2f} ({v['n']})" for k, v in g["by_position"].items() if v["n"])
    size = ", ".join(f"{k} {v['rate']:.2f} ({v['n']})" for k, v in g["by_size"].items() if v["n"])
    m = g["misses"]
    return (
        f"| {name} | {r['bleu4']:.3f} | {g['all']:.3f} ({g['n_words']}) | {g['chance']:.3f} | "
        f"{m['other_object']} / {m['background']} ({m.get('next_to_named', 0)} next to it) | {pos} | {size} |"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo_dir", help="output folder of `python -m instructor demo` (with the attention decoder)")
    p.add_argument("--out", help="where the retrained decoder goes (default DEMO_DIR/init_<other>)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    a = p.parse_args()
    setup(a.threads, "pointing game with and without the image in h0/c0")

    from captioning.checkpoints import load_checkpoint
    from captioning.evaluation.evaluate import evaluate
    from captioning.solver import fit

    summary_path = os.path.join(a.demo_dir, "summary.json")
    if not os.path.isfile(summary_path):
        sys.exit(f"{summary_path} does not exist: give the output folder of a finished `python -m instructor demo`")
    with open(summary_path) as fh:
        summary = json.load(fh)
    if "attention" not in summary["decoders"]:
        sys.exit(f"the demo in {a.demo_dir} did not train the attention decoder: run it with decoders=attention")
    settings = summary["settings"]
    demo_ckpt = summary["decoders"]["attention"]["checkpoint"]
    cfg = load_checkpoint(demo_ckpt)["cfg"]
    demo_init = cfg.get("init_state", "mean")  # checkpoints from before the option were "mean"
    other = "mean" if demo_init == "learned" else "learned"
    cfg = dict(
        cfg,
        init_state=other,
        output_dir=a.out or os.path.join(a.demo_dir, f"init_{other}"),
        checkpoint=None,
        overwrite=True,
        progress=True,
    )
    test = dict(split="TEST", beam_size=settings["beam_size"], length_penalty=settings["length_penalty"], coco=False)

    results = {demo_init: evaluate(demo_ckpt, **test)}
    results[other] = evaluate(fit(cfg)["best_checkpoint"], **test)

    print(
        f"\nTEST split of {a.demo_dir} (seed {settings['seed']}), beam {test['beam_size']}, length penalty "
        f"{test['length_penalty']}; pointing game = hits of all scored words; misses: on another object / on none"
    )
    print("| h0/c0 from | BLEU-4 | pointing game (words) | chance | misses | by position | by size |")
    print("|---|---|---|---|---|---|---|")
    names = {"mean": "mean feature (course)", "learned": "zero feature (learned, no image)"}
    for init in ("mean", "learned"):
        print(line(names[init] + (" — the demo's" if init == demo_init else ""), results[init]))


if __name__ == "__main__":
    main()
