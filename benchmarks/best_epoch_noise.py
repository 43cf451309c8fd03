"""How noisy is the validation BLEU-4 that picks the best epoch, and what does each remedy buy (issue 29, item 5).

Trains one decoder at the shapes recipe (exactly train1/train2's cfg) and, after every epoch, decodes the 200
validation images (as training does, greedy) and the 1,000 test images, keeping each image's BLEU-4 statistics
(``captioning.evaluation.selection.bleu4_stats``). From these, without training again:

* the bootstrap standard error of each epoch's validation BLEU-4 over its 200 images, and the epoch-to-epoch
  changes on validation (200 images) against the same changes on the test split (1,000 images);
* replicates: each draws a validation set of N images from a pool (the 200 validation images and the first 500
  test images, all from the same generator) and picks an epoch with each rule (the highest single value; the
  best epoch of the best 3 in a row as training now does, ``selection.newly_best``); the picked epoch is scored on the
  other 500 test images, which no rule sees. N = 200 is the recipe, N = 400 doubles it;
* the seconds one validation of the 200 images takes, beside an epoch's training.

Run from the repository root: ``python benchmarks/best_epoch_noise.py --data DATA_FOLDER [--decoder attention]
[--seed 0] [--replicates 2000] [--out FILE.json]``, or ``--checkpoint CK --data DATA_FOLDER`` for only the bootstrap
error of one checkpoint's greedy BLEU-4 on VAL and TEST; ``--data`` holds the prepared shapes data of the recipe (e.g.
the ``data`` folder that ``python -m instructor notebooks`` writes; it is generated there when missing).
``--from FILE.json`` repeats the analysis of a saved run without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time

from _common import load_note, setup


def train_and_decode(a):
    """Per epoch: the history row, the seconds of the validation, and the per-image stats on VAL and TEST."""
    from captioning.data.ensure import encoder_settings, ensure_data
    from captioning.data.recipe import RECIPE, decoder_cfg
    from captioning.evaluation.selection import bleu4_stats
    from captioning.solver import Trainer

    name = "shapes_5_cap_per_img_5_min_word_freq"
    data = ensure_data(a.data, name, shapes_seed=a.seed)
    cfg = dict(decoder_cfg(RECIPE, a.decoder), data_folder=a.data, data_name=name, **encoder_settings(data))
    cfg.update(seed=a.seed, workers=0, print_freq=0, progress=False, device="cpu")
    epochs = []

    class Measured(Trainer):
        def validate(self, epoch=0, split="VAL", **k):
            t0 = time.time()
            out = super().validate(epoch, split, **k)
            if split != "VAL":
                return out
            seconds = time.time() - t0
            val = [bleu4_stats(r, h) for r, h in zip(*self.captions)]
            super().validate(epoch, "TEST", **k)
            test = [bleu4_stats(r, h) for r, h in zip(*self.captions)]
            epochs.append({"epoch": epoch, "bleu4": out["bleu4"], "val_seconds": seconds, "val": val, "test": test})
            print(f"epoch {epoch}: val BLEU-4 {out['bleu4']:.4f} ({seconds:.1f} s)", flush=True)
            return out

    with tempfile.TemporaryDirectory() as out_dir:
        cfg = dict(cfg, output_dir=out_dir)
        from captioning.config import make_cfg

        result = Measured(make_cfg(cfg), progress=False).fit()
    for row, e in zip(result["history"], epochs):
        e["train_seconds"] = row["train_seconds"]
        e["kept_by_training"] = bool(row.get("best"))
    return {"cfg": {k: v for k, v in cfg.items() if k != "output_dir"}, "epochs": epochs}


def pick(values, window):
    """The epoch training keeps for this validation curve (``selection.newly_best`` epoch by epoch)."""
    from captioning.evaluation.selection import kept_epoch, newly_best

    history = []
    for v in values:
        history.append({"bleu4": v, "best": False})
        k = newly_best(history, window)
        if k is not None:
            history[k]["best"] = True
    k = newly_best(history, window, at_end=True)
    if k is not None:
        history[k]["best"] = True
    return kept_epoch(history)


def analyse(run, replicates, seed=0):
    from captioning.evaluation.selection import corpus_bleu4

    eps = run["epochs"]
    n = len(eps)
    rng = random.Random(seed)
    val = [e["val"] for e in eps]
    test = [e["test"] for e in eps]
    half = len(test[0]) // 2
    pool = [val[i] + test[i][:half] for i in range(n)]  # per epoch: 200 validation + 500 test images
    truth = [corpus_bleu4(test[i][half:]) for i in range(n)]  # the other 500: no rule sees them
    full_test = [corpus_bleu4(t) for t in test]
    print("\nepoch | val BLEU-4 (200) ± bootstrap SE | test BLEU-4 (1000) | held-out 500 | val s | train s")
    for i, e in enumerate(eps):
        ses = []
        for _ in range(300):
            idx = [rng.randrange(len(val[i])) for _ in val[i]]
            ses.append(corpus_bleu4([val[i][j] for j in idx]))
        e["se"] = statistics.stdev(ses)
        print(
            f"{e['epoch']:5d} | {e['bleu4']:.4f} ± {e['se']:.4f}{'  (kept)' if e['kept_by_training'] else ''} | "
            f"{full_test[i]:.4f} | {truth[i]:.4f} | {e['val_seconds']:.1f} | {e['train_seconds']:.1f}"
        )
    dv = [eps[i + 1]["bleu4"] - eps[i]["bleu4"] for i in range(n - 1)]
    dt = [full_test[i + 1] - full_test[i] for i in range(n - 1)]
    print(
        f"\nepoch-to-epoch change, last {n // 2} epochs: validation (200) "
        f"{' '.join(f'{d:+.3f}' for d in dv[-(n // 2) :])}; test (1000) {' '.join(f'{d:+.3f}' for d in dt[-(n // 2) :])}"
    )
    # the noise of a change between two epochs on the same 200 images: paired bootstrap
    paired = []
    for i in range(n - 1):
        diffs = []
        for _ in range(300):
            idx = [rng.randrange(len(val[i])) for _ in val[i]]
            diffs.append(corpus_bleu4([val[i + 1][j] for j in idx]) - corpus_bleu4([val[i][j] for j in idx]))
        paired.append(statistics.stdev(diffs))
    print(
        f"paired bootstrap SE of a change between neighbouring epochs on 200 images: median {statistics.median(paired):.4f}"
    )
    print(f"bootstrap SE of one epoch's value on 200 images: median {statistics.median(e['se'] for e in eps):.4f}")
    oracle = max(truth)
    print(f"\nreplicates ({replicates}): validation drawn from the 700-image pool; held-out score of the kept epoch")
    print("images | rule | mean held-out BLEU-4 | mean loss vs the best epoch | epochs kept (how often)")
    rows = {}
    for size in (200, 400):
        for window in (1, 3):
            got, picks = [], []
            r = random.Random(seed + size)
            for _ in range(replicates):
                idx = r.sample(range(len(pool[0])), size)
                k = pick([corpus_bleu4([pool[i][j] for j in idx]) for i in range(n)], window)
                picks.append(k)
                got.append(truth[k])
            mean = statistics.mean(got)
            counts = {k: picks.count(k) for k in sorted(set(picks))}
            top = ", ".join(f"{k}: {c / replicates:.0%}" for k, c in sorted(counts.items(), key=lambda x: -x[1])[:4])
            rule = "single value" if window == 1 else f"best of best {window}"
            rows[f"{size}/{window}"] = {"mean": mean, "loss": oracle - mean, "picks": counts}
            print(f"{size:6d} | {rule:12s} | {mean:.4f} | {oracle - mean:.4f} | {top}")
    return rows


def checkpoint_errors(a):
    """Bootstrap standard error of one checkpoint's greedy BLEU-4 on VAL and TEST (no training)."""
    from captioning.evaluation.evaluate import evaluate
    from captioning.evaluation.selection import bootstrap_bleu4

    for split in ("VAL", "TEST"):
        t0 = time.time()
        r = evaluate(a.checkpoint, split, beam_size=1, data_folder=a.data, progress=False, coco=False)
        refs = [[ref.split() for ref in c["references"]] for c in r["captions"]]
        hyps = [c["caption"].split() for c in r["captions"]]
        value, se = bootstrap_bleu4(refs, hyps, samples=1000)
        print(
            f"{split}: {r['n_images']} images, greedy BLEU-4 {r['bleu4']:.4f} (from the statistics {value:.4f}) "
            f"± {se:.4f} (bootstrap SE over images); decoding took {time.time() - t0:.1f} s",
            flush=True,
        )


def simulate(replicates, seed=0):
    """Each rule on simulated curves: a true BLEU-4 per epoch (train2's trend at seed 0 plus a real change of SD
    tau from epoch to epoch) seen through validation noise of SD sigma; the mean true BLEU-4 of the epoch kept."""
    from captioning.evaluation.selection import smoothed

    # train2 at seed 0 (the committed recipe), smoothed over 3 epochs: the trend the simulated curves follow
    observed = [0.3615, 0.386, 0.453, 0.4177, 0.4168, 0.5136, 0.4846, 0.5467, 0.4647, 0.5494]
    trend = smoothed(observed, 3)
    rules = {"single value": lambda v: pick(v, 1), "best of best 3": lambda v: pick(v, 3)}
    rules["centre of best 3"] = lambda v: max(range(len(v) - 1), key=smoothed(v, 3).__getitem__)
    print("\nsimulated (tau: real change between epochs; sigma: validation noise; 400 images: sigma / sqrt 2)")
    print("tau | sigma | " + " | ".join(rules) + " | single value, 400 images | best possible")
    r = random.Random(seed)
    for tau, sigma in ((0.0, 0.035), (0.02, 0.03), (0.035, 0.023), (0.05, 0.023)):
        got = {name: 0.0 for name in list(rules) + ["400", "best"]}
        for _ in range(replicates):
            truth = [t + r.gauss(0, tau) for t in trend]
            noise = [r.gauss(0, 1) for _ in truth]
            val = [t + sigma * z for t, z in zip(truth, noise)]
            for name, rule in rules.items():
                got[name] += truth[rule(val)] / replicates
            val400 = [t + sigma / math.sqrt(2) * r.gauss(0, 1) for t in truth]
            got["400"] += truth[pick(val400, 1)] / replicates
            got["best"] += max(truth) / replicates
        print(f"{tau:.3f} | {sigma:.3f} | " + " | ".join(f"{v:.4f}" for v in got.values()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="prepared shapes data of the recipe (generated when missing)")
    ap.add_argument("--decoder", default="attention", choices=("rnn", "attention"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--out", default="outputs/best_epoch_noise.json")
    ap.add_argument("--from", dest="source", help="analyse this saved run instead of training")
    ap.add_argument("--simulate", action="store_true", help="only the rules on simulated curves (seconds)")
    ap.add_argument("--checkpoint", help="only the bootstrap error of this checkpoint on VAL and TEST (greedy)")
    a = ap.parse_args()
    if a.simulate:
        simulate(a.replicates)
        return
    if a.checkpoint:
        setup(a.threads, f"bootstrap error of {a.checkpoint}")
        checkpoint_errors(a)
        print(load_note())
        return
    if a.source:
        with open(a.source) as fh:
            run = json.load(fh)
    else:
        if not a.data:
            ap.error("--data or --from is needed")
        setup(a.threads, f"best epoch noise: {a.decoder}, seed {a.seed}")
        run = train_and_decode(a)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        tmp = a.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(run, fh)
        os.replace(tmp, a.out)
        print(f"saved {a.out}")
    analyse(run, a.replicates)
    print(load_note())


if __name__ == "__main__":
    main()
