"""The main job on the built-in data, end to end: the shapes recipe (``captioning/data/recipe.py``) at the demo's size.

generate shapes → prepare → pretrain the shapes_cnn encoder on the TRAIN boxes (one encoder for every decoder) →
train the decoder without attention and the attention decoder → beam-search test of both → caption test images
and one photo that is not a shape at all → figures, a report and a summary table under ``outputs/demo``.

Every recipe value can be overridden (``python -m instructor demo n_train=1000 epochs=5``; ``epochs=N`` sets every
decoder's epochs). ``encoder=resnet101`` runs the demo with a random-initialised ResNet-101 instead of the
pretrained shapes_cnn (BatchNorm recalibrated), to show why the recipe does not use it offline.
"""

from __future__ import annotations

import json
import os
import time

from captioning.config import check_cfg
from captioning.data.recipe import DEMO, decoder_cfg
from captioning.internals.errors import KitError

# what the demo adds to the recipe
EXTRA = {"decoders": "rnn,attention", "coco": True, "encoder": "shapes_cnn"}
STEPS = 7


def _log(msg):
    print(f"[demo] {msg}", flush=True)


def demo_settings(overrides):
    """DEMO + EXTRA updated with ``overrides``; a KitError for an unknown key or an impossible value, raised before
    anything is written."""
    p = {**DEMO, **EXTRA}
    unknown = set(overrides) - set(p)
    if unknown:
        raise KitError(f"unknown demo setting(s) {sorted(unknown)}; known: {', '.join(p)}")
    p.update(overrides)
    if not isinstance(p["epochs"], dict):  # epochs=N: every decoder
        p["epochs"] = {"rnn": p["epochs"], "attention": p["epochs"]}
    counts = {
        "pretrain_epochs": p["pretrain_epochs"],
        "pretrain_images": p["pretrain_images"],
        **{f"epochs[{k}]": v for k, v in p["epochs"].items()},
    }
    for key, value in counts.items():
        if not (isinstance(value, int) and value >= 1):
            raise KitError(f"demo {key}={value!r}: give a whole number, 1 or more")
    if p["encoder"] not in ("shapes_cnn", "resnet101"):
        raise KitError(
            f"demo encoder={p['encoder']!r}: choose shapes_cnn (pretrained on the shapes boxes) or "
            f"resnet101 (random weights)"
        )
    for decoder in str(p["decoders"]).split(","):  # the training settings: the same validation as `train`
        if decoder not in ("rnn", "attention", "adaptive"):
            raise KitError(f"demo decoders={p['decoders']!r}: a comma-separated list of rnn, attention, adaptive")
        check_cfg(decoder_cfg(p, decoder))
    return p


def run_demo(out="outputs/demo", progress=True, **overrides):
    """Run the whole demo; returns the summary dict (also written to ``out/summary.json``/``summary.md``)."""
    from captioning.checkpoints import history_of
    from captioning.evaluation.evaluate import caption_images, evaluate
    from captioning.evaluation.figures import caption_figure, save, training_curves
    from captioning.internals.atomic import write_json
    from captioning.solver import fit

    p = demo_settings(overrides)
    decoders = p["decoders"].split(",")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()

    raw, karpathy, data_folder, info = _make_data(out, p)
    data_name = info["data_name"]
    pretraining, encoder = _make_encoder(p, data_folder, data_name, progress)

    common = {
        "data_folder": data_folder,
        "data_name": data_name,
        "print_freq": 0,
        "device": "cpu",
        "workers": 0,
        "output_dir": os.path.join(out, "checkpoints"),
        "overwrite": True,
        **encoder,
    }  # as its data: anew
    runs = {}
    for decoder in decoders:
        cfg = dict(decoder_cfg(p, decoder), **common)
        _log(f"4/{STEPS} training the {decoder} decoder ({cfg['epochs']} epochs)")
        t0 = time.time()
        runs[decoder] = {"fit": fit(cfg, progress=progress), "minutes": (time.time() - t0) / 60}

    _log(f"5/{STEPS} testing the decoders on the TEST split (beam {p['beam_size']})")
    tests = {
        d: evaluate(
            run["fit"]["best_checkpoint"],
            "TEST",
            beam_size=p["beam_size"],
            out=os.path.join(out, f"test_{d}.json"),
            progress=progress,
            coco=p["coco"],
            length_penalty=p["length_penalty"],
        )
        for d, run in runs.items()
    }

    _log(f"6/{STEPS} captioning test images and a photo that is not in the dataset")
    examples = _caption_examples(out, raw, karpathy, runs, p, caption_images, caption_figure, save)
    save(
        training_curves([history_of(r["fit"]["checkpoint"]) for r in runs.values()], labels=list(runs)),
        os.path.join(out, "figures", "training_curves.png"),
    )

    _log(f"7/{STEPS} writing the report")
    summary = _summary(p, info, pretraining, runs, tests, examples, (time.time() - t_start) / 60)
    from instructor.report import make_report

    summary["report"] = make_report([out], os.path.join(out, "report"))
    write_json(summary, os.path.join(out, "summary.json"))
    table = summary_table(summary)
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write(table + "\n")
    print(table)
    return summary


def _make_data(out, p):
    """Steps 1-2: the shapes dataset under ``out/shapes`` and its input files under ``out/data``; (raw folder, its
    Karpathy-style split file, data folder, ``create_input_files``'s info)."""
    from captioning.data.prepare import create_input_files
    from captioning.data.shapes import generate_shapes

    _log(
        f"1/{STEPS} generating the shapes dataset ({p['n_train']}/{p['n_val']}/{p['n_test']} images, "
        f"{p['image_size']} px)"
    )
    raw = os.path.join(out, "shapes")
    karpathy = generate_shapes(
        raw, n_train=p["n_train"], n_val=p["n_val"], n_test=p["n_test"], image_size=p["image_size"], seed=p["seed"]
    )
    _log(f"2/{STEPS} preparing HDF5/JSON input files")
    data_folder = os.path.join(out, "data")
    info = create_input_files(
        "shapes",
        karpathy,
        raw,
        captions_per_image=5,
        min_word_freq=5,
        output_folder=data_folder,
        max_len=50,
        image_size=p["image_size"],
        seed=p["seed"],
    )
    return raw, karpathy, data_folder, info


def _make_encoder(p, data_folder, data_name, progress):
    """Step 3: the encoder every decoder shares; (the shapes_cnn pretraining's record or None, the encoder's
    settings for the training configs)."""
    pretraining = None
    if p["encoder"] == "shapes_cnn":
        from captioning.data.pretrain import STRIDE, ensure_encoder

        _log(
            f"3/{STEPS} pretraining the shapes_cnn encoder on the boxes of {p['pretrain_images']} TRAIN images "
            f"({p['pretrain_epochs']} epochs)"
        )
        pretraining = ensure_encoder(
            data_folder, data_name, p["pretrain_epochs"], seed=p["seed"], images=p["pretrain_images"], progress=progress
        )
        encoder = {
            "encoder": "shapes_cnn",
            "encoder_weights": pretraining["path"],
            "encoded_image_size": p["image_size"] // STRIDE,
        }
    else:
        _log(f"3/{STEPS} random-initialised ResNet-101 (BatchNorm recalibrated when training starts)")
        encoder = {"encoder": "resnet101", "encoder_weights": None, "encoded_image_size": p["image_size"] // 32}
    return pretraining, encoder


def _summary(p, info, pretraining, runs, tests, examples, total_minutes):
    """The demo's summary dict (without its report): settings, data, and per decoder its training and TEST scores."""
    summary = {
        "settings": p,
        "data_name": info["data_name"],
        "encoder_pretraining": pretraining,
        "vocab_size": info.get("vocab_size"),
        "total_minutes": total_minutes,
        "decoders": {},
        "examples": examples,
    }
    for decoder, run in runs.items():
        t = tests[decoder]
        summary["decoders"][decoder] = {
            "epochs": len(run["fit"]["history"]),
            "train_minutes": run["minutes"],
            "best_val_bleu4": run["fit"]["best_bleu4"],
            **{k: t[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")},
            "grounding": t["grounding"],
            "beta_by_class": t.get("beta_by_class"),  # the adaptive decoder: when it looked
            "checkpoint": run["fit"]["best_checkpoint"],
        }
    return summary


def _caption_examples(out, raw, karpathy, runs, p, caption_images, caption_figure, save):
    """Caption three test images and the skimage astronaut with every decoder; one PNG each in out/figures."""
    from PIL import Image
    from skimage import data as skdata

    fig_dir = os.path.join(out, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    photo = os.path.join(out, "astronaut.png")
    Image.fromarray(skdata.astronaut()).save(photo)
    with open(karpathy) as fh:
        test_imgs = [
            os.path.join(raw, r["filepath"], r["filename"]) for r in json.load(fh)["images"] if r["split"] == "test"
        ][:3]
    examples = []
    for decoder, run in runs.items():
        for res in caption_images(
            run["fit"]["best_checkpoint"],
            test_imgs + [photo],
            beam_size=p["beam_size"],
            length_penalty=p["length_penalty"],
        ):
            name = f"{decoder}_{os.path.splitext(os.path.basename(res['path']))[0]}.png"
            save(caption_figure(res), os.path.join(fig_dir, name))
            if res["decoder"] == "adaptive":  # β per word beside the maps (Lu et al. 2017, Fig. 1 style)
                from captioning.evaluation.beta_figure import caption_beta_figure

                save(caption_beta_figure(res), os.path.join(fig_dir, f"beta_{name}"))
            examples.append(
                {
                    "decoder": decoder,
                    "image": res["path"],
                    "caption": " ".join(res["words"]),
                    "figure": os.path.join("figures", name),
                }
            )
    return examples


def summary_table(summary):
    s, pre = summary["settings"], summary["encoder_pretraining"]
    enc = (
        f"encoder shapes_cnn pretrained on the TRAIN boxes for {pre['epochs']} epochs in {pre['seconds'] / 60:.1f} "
        f"min (VAL cells: shape {pre['val_accuracy']['shape']:.2f}, colour {pre['val_accuracy']['color']:.2f})"
        if pre
        else f"encoder {s['encoder']} with random weights"
    )
    lines = [
        f"Test split ({s['n_test']} images), beam {s['beam_size']} (length penalty {s['length_penalty']}), "
        f"{s['n_train']} training images of {s['image_size']} px, {enc}, total {summary['total_minutes']:.1f} "
        f"min",
        "",
        "| decoder | epochs | train min | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | pointing game (chance) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in summary["decoders"].items():
        g = d["grounding"]
        gs = f"{g['all']:.2f} ({g['chance']:.2f})" if g and g["all"] is not None else "—"
        lines.append(
            f"| {name} | {d['epochs']} | {d['train_minutes']:.1f} | {d['bleu1']:.3f} | {d['bleu2']:.3f} | "
            f"{d['bleu3']:.3f} | {d['bleu4']:.3f} | {gs} |"
        )
    return "\n".join(lines)
