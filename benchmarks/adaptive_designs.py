"""Which design of the adaptive-attention decoder knows when to look: each of ``captioning.adaptive.DESIGNS`` (and
the attention decoder, ``attention``, as the BLEU-4 reference) trained on the shapes recipe's data and encoder, at
one or more seeds, and scored on one split.

Per design and seed: BLEU-4 (beam search, the recipe's beam and length penalty), the pointing game (the peak of the
region columns on each generated shape or colour word, chance in brackets), and β — the sentinel's share — averaged
with teacher forcing over the split's reference words in three classes:

* shape/colour — the shape and colour words (the issue's "visual words": β ≤ 0.3 wanted);
* function — a, an, the, of, to, with, and, is, are, there, on (β ≥ 0.7 wanted);
* other — every other word but ``<end>``: sizes, counts, relations, the background's tone, "picture"/"image".

Screen on VAL (the test split chooses nothing), then run the chosen design on TEST at three seeds:

    python benchmarks/adaptive_designs.py --designs look,look_word --seeds 0 --epochs 4 --split VAL
    python benchmarks/adaptive_designs.py --designs attention,look --seeds 0,1,2 --split TEST

Where β goes word by word (``--words`` a checkpoint of the runs): β per word and per pair (word before → word):

    python benchmarks/adaptive_designs.py --words OUT/sat_cost_anneal_seed0_ep2/BEST_checkpoint_….pth.tar

Each result is also appended to ``--out``/results.jsonl and not trained again for the same design, seed, epochs and
split (``--again`` retrains), so an interrupted run continues where it stopped. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _common import THREADS_HELP, load_note, recipe_epoch_cfg, setup, table


def teacher_forced(checkpoint, split, max_images=None):
    """The ``split`` references decoded with teacher forcing by an adaptive checkpoint: per caption, its words (the
    special tokens left out), the word before each and the (len(words), P + 1) attention of each."""
    import torch

    from captioning.checkpoints import load_checkpoint
    from captioning.data.features import build_feature_cache
    from captioning.datasets import ImageCaptions
    from captioning.solver import models_from_checkpoint

    encoder, decoder, word_map, cfg = models_from_checkpoint(load_checkpoint(checkpoint))
    rev = {i: w for w, i in word_map.items()}
    special = {"<pad>", "<unk>", "<start>", "<end>"}
    feats = build_feature_cache(encoder, cfg["data_folder"], cfg["data_name"], split, progress=False)
    data = ImageCaptions(cfg["data_folder"], cfg["data_name"], split, features=feats)
    words, before, maps = [], [], []
    with torch.no_grad():
        for i in range(min(len(data), max_images or len(data))):
            x, caps, lens = data[i]
            enc = encoder.pool(x.float()[None]).expand(caps.size(0), -1, -1, -1)
            _, caps_sorted, dec_lens, alphas, _ = decoder(enc, caps, lens)
            for row, n in enumerate(dec_lens):
                keep = [t for t in range(n) if rev[int(caps_sorted[row, t + 1])] not in special]
                words.append([rev[int(caps_sorted[row, t + 1])] for t in keep])
                before.append([rev[int(caps_sorted[row, t])] for t in keep])
                maps.append(alphas[row, keep])
    return words, before, maps


def mean_beta(checkpoint, split):
    """β averaged over the ``split`` references' words of each class of ``captioning.evaluation.metrics.word_class``
    (teacher forcing; the special tokens left out): {class: mean β or None}."""
    from captioning.evaluation.metrics import beta_by_class

    words, _, maps = teacher_forced(checkpoint, split)
    return {k: v["beta"] for k, v in beta_by_class(words, maps).items()}


def print_words(checkpoint, split, top=30):
    """β per word and per (word before → word) pair, the ``top`` most frequent of each, on ``split``."""
    from collections import defaultdict

    words, before, maps = teacher_forced(checkpoint, split)
    by_word, by_pair = defaultdict(list), defaultdict(list)
    for ws, bs, al in zip(words, before, maps):
        for w, b, beta in zip(ws, bs, al[:, -1].tolist()):
            by_word[w].append(beta)
            by_pair[f"{b} → {w}"].append(beta)
    for title, d in (("word", by_word), ("word before → word", by_pair)):
        rows = sorted(d.items(), key=lambda kv: -len(kv[1]))[:top]
        print(table([title, "n", "mean β"], [[k, str(len(v)), f"{sum(v) / len(v):.2f}"] for k, v in rows]))
        print()


def run_one(design, seed, epochs, split, out, price=None):
    """Train ``design`` at ``seed`` (the recipe's attention-decoder settings, on the data and encoder under
    ``out``/data) and score it on ``split``."""
    from captioning.data.recipe import RECIPE
    from captioning.evaluation.evaluate import evaluate
    from captioning.solver import fit

    kind = "attention" if design == "attention" else "adaptive"
    run = f"{design}_seed{seed}_ep{epochs}" + ("" if price is None else f"_price{price}")
    cfg = recipe_epoch_cfg(out, kind, os.path.join(out, run), seed=seed, epochs=epochs)
    if kind == "adaptive":
        cfg["adaptive_design"] = design
    start = time.time()
    best = fit(cfg)["best_checkpoint"]
    minutes = (time.time() - start) / 60
    r = evaluate(
        best, split, beam_size=RECIPE["beam_size"], length_penalty=RECIPE["length_penalty"], coco=False, progress=False
    )
    g = r["grounding"] or {}
    beta = mean_beta(best, split) if kind == "adaptive" else {}
    return {
        "design": design,
        "seed": seed,
        "epochs": epochs,
        "split": split,
        "bleu4": r["bleu4"],
        "pointing": g.get("all"),
        "chance": g.get("chance"),
        "pointing_shape": g.get("shape"),
        "pointing_colour": g.get("color"),
        "beta_visual": beta.get("shape/colour"),
        "beta_function": beta.get("function"),
        "beta_other": beta.get("other"),
        "train_minutes": minutes,
    }


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    from captioning.adaptive import DESIGNS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--designs", default=",".join(DESIGNS), help=f"comma-separated, of: attention, {', '.join(DESIGNS)}")
    p.add_argument(
        "--seeds", default="0", help="comma-separated training seeds (the data and encoder stay the recipe's, seed 0)"
    )
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's attention-decoder epochs")
    p.add_argument("--split", default="VAL", choices=("VAL", "TEST"))
    p.add_argument("--out", default="outputs/bench_adaptive_designs")
    p.add_argument("--again", action="store_true", help="retrain results already in --out/results.jsonl")
    p.add_argument(
        "--price",
        type=float,
        default=None,
        help="screen another price on looking: LOG_COST for the _logcost designs, LOOK_COST for the other cost "
        "designs (default: the module's); kept apart in results.jsonl and the run folders",
    )
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--words", metavar="CHECKPOINT", help="print β per word of this adaptive checkpoint on --split")
    a = p.parse_args()
    if a.words:
        return print_words(a.words, a.split)
    designs = [d for d in a.designs.split(",") if d]
    for d in designs:
        if d != "attention" and d not in DESIGNS:
            p.error(f"--designs: unknown design {d!r}; choose from attention, {', '.join(DESIGNS)}")
    seeds = [int(s) for s in a.seeds.split(",") if s]
    setup(a.threads, "adaptive attention: which design knows when to look")

    from captioning.data.recipe import RECIPE, decoder_cfg

    epochs = a.epochs or decoder_cfg(RECIPE, "attention")["epochs"]
    log = os.path.join(a.out, "results.jsonl")
    done = {}
    if os.path.isfile(log) and not a.again:
        with open(log) as fh:
            for line in fh:
                r = json.loads(line)
                done[(r["design"], r["seed"], r["epochs"], r["split"], r.get("price"))] = r
    rows = []
    if a.price is not None:
        import captioning.adaptive as adaptive

        adaptive.LOOK_COST = adaptive.LOG_COST = a.price  # read when the loss is formed, in this process
    for design in designs:
        for seed in seeds:
            key = (design, seed, epochs, a.split, a.price)
            if key in done:
                r = done[key]
            else:
                r = dict(run_one(design, seed, epochs, a.split, a.out, a.price), price=a.price)
                with open(log, "a") as fh:  # appended line by line: a crash loses at most the run in progress
                    fh.write(json.dumps(r) + "\n")
            rows.append(
                [
                    design,
                    str(seed),
                    fmt(r["bleu4"], ".3f"),
                    f"{fmt(r['pointing'], '.2f')} ({fmt(r['chance'], '.2f')})",
                    fmt(r["beta_visual"], ".2f"),
                    fmt(r["beta_function"], ".2f"),
                    fmt(r["beta_other"], ".2f"),
                    f"{r['train_minutes']:.1f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(f"{a.split} split, {epochs} epochs; β by the references' words (teacher forcing)")
    print(
        table(
            ["design", "seed", "BLEU-4", "pointing (chance)", "β shape/colour", "β function", "β other", "train min"],
            rows,
        )
    )
    print(load_note())


if __name__ == "__main__":
    main()
