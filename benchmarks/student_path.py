"""The student edition's own decoder, with and without ``internals.reuse``, side by side in one run.

The student edition has no fast path: the solver trains with the student's ``forward`` and decodes with their
``one_step`` (here the reference solution's, which is what a correct student writes). Inside
``reuse_linear_outputs`` a linear layer given the same rows again returns its remembered output, so the attention's
``encoder_att(encoder_out[:num])`` is one product per batch instead of one per word. Per row, the same batches
and the same weights go through both sides:

* train: one training step as ``solver.Trainer.train_epoch`` does it without a fast path —
  ``solver.decoder_scores`` (the decoder's own ``forward``), the loss, backward, gradient clipping, Adam;
* beam: ``decoding.beam_search`` (beam 5, ``fast=False``: the decoder's own ``one_step``).

Sizes: "course" is the tutorial's (14×14×2048 encoder output, vocabulary 9,490, dims 512, 32 captions = 6 images
× 5 per batch, COCO-like caption lengths); "recipe" is the notebooks' shapes recipe (8×8×256, vocabulary 49,
embed/attention 256, decoder 384, 64 captions = 13 images × 5, shapes caption lengths).

    python benchmarks/student_path.py [--threads N] [--batches 3] [--sizes course,recipe]

Timings are medians over ``--batches`` after one warm-up batch; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from _common import THREADS_HELP, load_note, setup, table

SIZES = {
    "course": dict(P=14, C=2048, E=512, A=512, D=512, V=9490, images=6, length=(9, 24), beam_images=8),
    "recipe": dict(P=8, C=256, E=256, A=256, D=384, V=49, images=13, length=(8, 22), beam_images=50),
}


def _no_reuse(module):
    return contextlib.nullcontext()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    ap.add_argument("--batches", type=int, default=3, help="timed batches per row (median), after one warm-up")
    ap.add_argument("--sizes", default="course,recipe")
    a = ap.parse_args()
    setup(a.threads, "student edition: the decoder's own forward/one_step, with and without reuse")

    import copy

    import torch

    import captioning.decoding as decoding
    import captioning.solver as solver
    from captioning.internals.optim import adam
    from captioning.models import DecoderWithAttention, DecoderWithRNN

    rows = []
    for size in a.sizes.split(","):
        s = SIZES[size]
        word_map = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3, **{f"w{i}": i for i in range(4, s["V"])}}
        cfg = dict(vocab_size=s["V"], embed_dim=s["E"], attention_dim=s["A"], decoder_dim=s["D"], dropout=0.5)
        for cls in (DecoderWithAttention, DecoderWithRNN):
            torch.manual_seed(0)
            base = cls(cfg, encoder_dim=s["C"])
            g = torch.Generator().manual_seed(1)
            batches = [
                (
                    torch.randn(s["images"], s["P"], s["P"], s["C"], generator=g).relu(),
                    torch.randint(4, s["V"], (s["images"], 5, s["length"][1] + 2), generator=g),
                    torch.randint(*s["length"], (s["images"], 5), generator=g) + 2,
                )
                for _ in range(a.batches + 1)
            ]
            loss_cfg = dict(decoder="attention" if base.has_attention else "rnn", alpha_c=1.0)
            times = {}
            for side in ("plain", "reuse"):
                dec = copy.deepcopy(base).train()
                opt = adam(dec.parameters(), 4e-4)
                patch = contextlib.ExitStack()
                if side == "plain":
                    for mod in (solver, decoding):
                        patch.callback(setattr, mod, "reuse_linear_outputs", mod.reuse_linear_outputs)
                        mod.reuse_linear_outputs = _no_reuse
                with patch:
                    step_times = []
                    for enc, caps, lens in batches:
                        t0 = time.perf_counter()
                        loss = solver._loss(loss_cfg, *solver.decoder_scores(dec, enc, caps, lens), dec)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_value_(dec.parameters(), 5.0)
                        opt.step()
                        step_times.append(time.perf_counter() - t0)
                    dec.eval()
                    enc = batches[0][0][:1].expand(s["beam_images"], -1, -1, -1).contiguous()
                    t0 = time.perf_counter()
                    decoding.beam_search(dec, enc, word_map, 5, 20, fast=False)
                    beam = time.perf_counter() - t0
                times[side] = (statistics.median(step_times[1:]), beam)
            name = "attention" if base.has_attention else "rnn"
            (t_plain, b_plain), (t_reuse, b_reuse) = times["plain"], times["reuse"]
            rows.append(
                [
                    f"{size}, {name}",
                    f"{t_plain:.3f}",
                    f"{t_reuse:.3f}",
                    f"{t_plain / t_reuse:.2f}×",
                    f"{b_plain:.2f}",
                    f"{b_reuse:.2f}",
                    f"{b_plain / b_reuse:.2f}×",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(table(["sizes, decoder", "train step s", "with reuse", "speed-up", "beam s", "with reuse", "speed-up"], rows))
    print("beam: beam 5, 20 steps at most, over beam_images copies of one image (8 at course sizes, 50 at recipe)")
    print(load_note())


if __name__ == "__main__":
    main()
