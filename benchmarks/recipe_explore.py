"""How the shapes recipe was chosen: one run of data → encoder pretraining → both decoders → test, with any
setting changed, and two encoder variants that are not part of the kit.

    python benchmarks/recipe_explore.py OUT [key=value …]

Keys (defaults in brackets): image_size [128], n_train [1000], n_val [100], n_test [200], seed [0], threads [1],
pretrain_epochs [8] or encoder_weights=PATH (skip pretraining), decoders [rnn,attention], <decoder>_epochs
[14], <decoder>_dropout [0.3], embed_dim [256], decoder_dim [384], attention_dim [256], batch_size [64],
decoder_lr [4e-3], lr_decay_every [2], lr_decay_factor [0.5], alpha_c [0], init_state [learned], lp [1.0]
(length penalty of the beam-5 test), and variant:

* ``none`` — every per-cell head of the pretraining also has a "none" class, trained on the cells without an
  object, so that a cell next to an object is taught not to code it;
* ``rf47`` — the last conv layer of ``shapes_cnn`` is 1×1: each cell sees 47 px instead of 79.

Prints (and writes to OUT/result.json) the times of each step, the encoder's VAL accuracy and per decoder the test
BLEU-4, the pointing game with its chance level, the best validation BLEU-4 and the validation curve. The runs in
docs/results.md ran two at a time with one thread each.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def patch_variant(variant):
    import captioning.data.pretrain as pt
    import captioning.encoder as M

    if variant == "rf47":

        def init(self, weights=None):
            nn.Module.__init__(self)
            widths = [
                (3, 32, 2, 3),
                (32, 64, 2, 3),
                (64, 128, 2, 3),
                (128, 128, 1, 3),
                (128, 256, 2, 3),
                (256, 256, 1, 1),
            ]
            self.features = nn.Sequential(
                *[
                    nn.Sequential(
                        nn.Conv2d(ci, co, k, s, k // 2, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)
                    )
                    for ci, co, s, k in widths
                ]
            )

        M.ShapesCNN.__init__ = init
    elif variant == "none":

        class Probe(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = M.ShapesCNN()
                self.cells = nn.Conv2d(256, 1 + sum(len(v) + 1 for v in pt.HEADS.values()) + pt.N_PAIRS + 1, 1)
                self.tone = nn.Linear(256, 2)

            def forward(self, x):
                f = self.net(x)
                return self.cells(f), self.tone(f.mean(dim=(2, 3)))

        def losses(logits, tone_logits, targets, weights, dark):  # the variant weights cells equally
            on = targets[:, 0] != pt.NONE
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], on.float())
            hits = {"object": (int(((logits[:, 0] > 0) == on).sum()), int(on.numel()))}
            start = 1
            for h, (key, names) in enumerate(pt.HEADS.items()):
                part = logits[:, start : start + len(names) + 1]
                start += len(names) + 1
                t = torch.where(on, targets[:, h], torch.full_like(targets[:, h], len(names)))
                loss = loss + F.cross_entropy(part, t)
                hits[key] = (int((part.argmax(1) == t)[on].sum()), int(on.sum()))
            pair = torch.where(
                on, targets[:, 0] * len(pt.COLORS) + targets[:, 1], torch.full_like(targets[:, 0], pt.N_PAIRS)
            )
            part = logits[:, start : start + pt.N_PAIRS + 1]
            loss = loss + F.cross_entropy(part, pair)
            hits["shape_color"] = (int((part.argmax(1) == pair)[on].sum()), int(on.sum()))
            loss = loss + F.cross_entropy(tone_logits, dark)
            hits["background"] = (int((tone_logits.argmax(1) == dark).sum()), int(dark.numel()))
            return loss, hits

        pt._Probe, pt._losses_and_hits = Probe, losses
        pt._loss = lambda *args: losses(*args)[0]  # what train_step uses
    elif variant:
        sys.exit(f"unknown variant {variant!r}: none or rf47")


def main():
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    out = sys.argv[1]
    kv = dict(a.split("=", 1) for a in sys.argv[2:])

    def g(k, d):
        return type(d)(kv.get(k, d))

    torch.set_num_threads(g("threads", 1))
    patch_variant(kv.get("variant"))
    from captioning.data.prepare import create_input_files
    from captioning.data.pretrain import STRIDE, pretrain_encoder
    from captioning.data.shapes import generate_shapes
    from captioning.evaluation.evaluate import evaluate
    from captioning.solver import fit

    size, seed, times = g("image_size", 128), g("seed", 0), {}
    t = time.time()
    raw = os.path.join(out, "shapes")
    kj = generate_shapes(
        raw, n_train=g("n_train", 1000), n_val=g("n_val", 100), n_test=g("n_test", 200), image_size=size, seed=seed
    )
    info = create_input_files(
        "shapes",
        kj,
        raw,
        captions_per_image=5,
        min_word_freq=5,
        output_folder=os.path.join(out, "data"),
        max_len=50,
        image_size=size,
        seed=seed,
        workers=1,
    )
    times["data"] = time.time() - t
    enc, pre_acc = kv.get("encoder_weights"), None
    if not enc:
        t = time.time()
        pre = pretrain_encoder(
            os.path.join(out, "data"),
            info["data_name"],
            os.path.join(out, "enc.pth"),
            epochs=g("pretrain_epochs", 8),
            seed=seed,
            progress=False,
        )
        times["pretrain"], pre_acc, enc = time.time() - t, pre["val_accuracy"], pre["path"]
    res = {}
    for dec in kv.get("decoders", "rnn,attention").split(","):
        cfg = dict(
            data_folder=os.path.join(out, "data"),
            data_name=info["data_name"],
            encoder="shapes_cnn",
            encoder_weights=enc,
            encoded_image_size=size // STRIDE,
            batch_size=g("batch_size", 64),
            embed_dim=g("embed_dim", 256),
            decoder_dim=g("decoder_dim", 384),
            attention_dim=g("attention_dim", 256),
            dropout=g(dec + "_dropout", 0.3),
            alpha_c=g("alpha_c", 0.0),
            init_state=kv.get("init_state", "learned"),
            decoder_lr=g("decoder_lr", 4e-3),
            lr_decay_every=g("lr_decay_every", 2),
            lr_decay_factor=g("lr_decay_factor", 0.5),
            seed=seed,
            print_freq=0,
            output_dir=os.path.join(out, "ckpt"),
            overwrite=True,
            device="cpu",
            workers=0,
            epochs=g(dec + "_epochs", 14),
            progress=False,
            decoder=dec,
        )
        t = time.time()
        r = fit(cfg, progress=False)
        times["fit_" + dec] = time.time() - t
        e = evaluate(r["best_checkpoint"], "TEST", beam_size=5, progress=False, coco=False, length_penalty=g("lp", 1.0))
        gr = e.get("grounding") or {}
        res[dec] = {
            "bleu4": e["bleu4"],
            "pointing": gr.get("all"),
            "chance": gr.get("chance"),
            "best_val_bleu4": r["best_bleu4"],
            "val_curve": [round(h["bleu4"], 3) for h in r["history"]],
        }
    result = {"args": kv, "seconds": times, "encoder_val_accuracy": pre_acc, "decoders": res}
    print(json.dumps(result, indent=1))
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
