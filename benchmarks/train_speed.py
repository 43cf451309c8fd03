"""Training throughput of the kit's path against the straightforward course procedure, side by side.

    python benchmarks/train_speed.py [--threads N] [--parts abc] [--course-batches 4] [--kit-batches 12]
        [--rnn-course-batches 6] [--rnn-kit-batches 12] [--cached-batches 6] [--encode-batches 3]

(a) The attention decoder at the sizes of the original tutorial (encoder output 14×14×2048, vocabulary 9,490,
    embed/attention/decoder dims 512, batches of 32 captions of COCO-like lengths), one training step =
    forward + loss (cross-entropy + doubly stochastic attention term) + backward + gradient clipping + Adam:

    * kit    — ``solver.decoder_scores(..., fast=fastpath)`` on a batch grouped by image, as the kit's loader makes
               it: 32 // 5 = 6 images × 5 captions, ``encoder_out`` has one row per image;
    * course — per-caption samples (``encoder_out`` repeated for each caption), the decoder's own ``forward``
               (Attention projects the encoder output again at every step, ``fc`` runs per step), then
               ``pack_padded_sequence`` + cross-entropy, as in the tutorial's ``train``.

    Both sides start from the same weights (two copies) and see the same batches; the kit steps with its own
    optimiser (``solver.adam``, fused Adam), the course with the tutorial's ``torch.optim.Adam``. Before timing,
    one batch goes through both in eval mode: the losses must agree to 1e-4 relative and every parameter's
    gradient to 1e-2 of its scale.
(b) The same for ``DecoderWithRNN``.
(c) A full training step with a frozen encoder, data loading included:

    * kit      — cached fp16 feature maps (2048, 8, 8) read from an HDF5 file through ``ImageCaptions``,
                 ``Encoder.pool`` to 14×14, then the kit's decoder step (6 images × 5 captions);
    * re-encode — the tutorial's per-caption samples: each caption's 256×256 image read from HDF5 and encoded
                 again by a random-weights ResNet-101 (``Encoder(14, weights=None)``), batches of 8 captions,
                 then the *same* kit decoder step (one encoder row per caption);
    * course   — the same re-encoded batch followed by the course decoder step (the tutorial as a whole).

    ResNet-101 runs at a few images per second on a CPU, so this part times only ``--encode-batches`` batches;
    it also projects one COCO epoch (113,287 images × 5 = 566,435 captions) for each row.

Timed steps of the two sides are interleaved (round by round), so that load from other processes on the machine
falls on both alike. Captions/s = captions trained / seconds spent in timed steps."""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch
import torch.nn.functional as F
from _common import THREADS_HELP, Timer, load_note, setup, table
from torch.nn.utils.rnn import pack_padded_sequence

from captioning.internals.optim import adam
from captioning.models import DecoderWithAttention, DecoderWithRNN
from captioning.solver import _loss, decoder_scores
from instructor import fastpath

COCO_CAPTIONS = 113_287 * 5
MAX_LEN = 50  # prepare's default: captions are padded to max_len + 2 = 52 tokens


# ------------------------------------------------------------------------------------------------------ data
def make_batches(n, n_img, cpi, vocab, seed):
    """``n`` batches of (encoder_out (n_img, 14, 14, 2048), captions (n_img, cpi, 52), caplens (n_img, cpi)).

    Lengths incl. <start>/<end>: 10 + Poisson(3), at most 20 (mean ≈ 13, like COCO's ~10.5 words + 2).
    Word map as ``prepare`` makes it: <pad> = 0, words, <unk>, <start> = V - 2, <end> = V - 1.
    """
    g = torch.Generator().manual_seed(seed)
    start, end = vocab - 2, vocab - 1
    out = []
    for _ in range(n):
        lens = (10 + torch.poisson(torch.full((n_img, cpi), 3.0), generator=g)).clamp(max=20).long()
        caps = torch.zeros(n_img, cpi, MAX_LEN + 2, dtype=torch.long)
        words = torch.randint(1, vocab - 3, caps.shape, generator=g)
        pos = torch.arange(MAX_LEN + 2)
        inside = (pos > 0) & (pos < lens.unsqueeze(2) - 1)
        caps = torch.where(inside, words, caps)
        caps[:, :, 0] = start
        caps.scatter_(2, (lens - 1).unsqueeze(2), end)
        enc = torch.rand(n_img, 14, 14, 2048, generator=g)
        out.append((enc, caps, lens))
    return out


def per_caption(enc, caps, lens):
    """The course's per-caption samples: encoder_out repeated for each caption, captions/lengths flattened."""
    b, cpi, t = caps.shape
    return enc.repeat_interleave(cpi, dim=0), caps.reshape(b * cpi, t), lens.reshape(b * cpi, 1)


# ------------------------------------------------------------------------------------------------------ steps
def make_cfg(kind):
    return {"decoder": kind, "alpha_c": 1.0, "grad_clip": 5.0}


def course_scores(decoder, enc_c, caps_c, lens_c):
    """The tutorial's train(): decoder forward, then pack_padded_sequence of scores and targets."""
    out = decoder(enc_c, caps_c, lens_c)
    if decoder.has_attention:
        predictions, caps_sorted, decode_lengths, alphas, _ = out
    else:
        (predictions, caps_sorted, decode_lengths, _), alphas = out, None
    targets = caps_sorted[:, 1:]
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    return scores, targets, alphas


def course_criterion(cfg, scores, targets, alphas):
    """Cross-entropy, plus the doubly stochastic attention term when there are alphas (the tutorial's loss)."""
    loss = F.cross_entropy(scores, targets)
    if alphas is not None:
        loss = loss + cfg["alpha_c"] * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
    return loss


def course_loss(decoder, cfg, enc_c, caps_c, lens_c):
    return course_criterion(cfg, *course_scores(decoder, enc_c, caps_c, lens_c))


def kit_loss(decoder, cfg, enc, caps, lens):
    scores, targets, alphas = decoder_scores(decoder, enc, caps, lens, fast=fastpath)
    return _loss(cfg, scores, targets, alphas, decoder)


def update(decoder, opt, loss, cfg):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_value_(decoder.parameters(), cfg["grad_clip"])
    opt.step()


def check_same_loss(kit_dec, course_dec, cfg, batch, what):
    """Same loss and same gradients on one batch (eval mode: no dropout), before any timing."""
    enc, caps, lens = batch
    kit_dec.eval()
    course_dec.eval()
    k_scores, k_targets, k_alphas = decoder_scores(kit_dec, enc, caps, lens, fast=fastpath)
    c_scores, c_targets, c_alphas = course_scores(course_dec, *per_caption(enc, caps, lens))
    k_loss = _loss(cfg, k_scores, k_targets, k_alphas, kit_dec)
    c_loss = course_criterion(cfg, c_scores, c_targets, c_alphas)
    kit_dec.zero_grad(set_to_none=True)
    course_dec.zero_grad(set_to_none=True)
    k_loss.backward()
    c_loss.backward()
    a, b = k_loss.item(), c_loss.item()
    kit_dec.train()
    course_dec.train()
    rel = abs(a - b) / abs(b)
    # gradients: each parameter's largest difference, relative to its largest entry (+ 1e-4 of the largest entry
    # of all gradients, for a gradient that is mathematically zero: att.bias, as softmax ignores a shift)
    scale = max(q.grad.abs().max().item() for q in course_dec.parameters())
    grad_rel = {
        name: ((p.grad - q.grad).abs().max() / (q.grad.abs().max() + 1e-4 * scale)).item()
        for (name, p), q in zip(kit_dec.named_parameters(), course_dec.parameters())
    }
    worst = max(grad_rel, key=grad_rel.get)
    kit_dec.zero_grad(set_to_none=True)
    course_dec.zero_grad(set_to_none=True)
    print(
        f"{what}: check in eval mode, same weights, same batch: loss kit {a:.9g}, course {b:.9g}, relative "
        f"difference {rel:.1e}; targets equal: {torch.equal(k_targets, c_targets)}; largest score difference "
        f"{(k_scores - c_scores).abs().max().item():.1e} (scores up to {c_scores.abs().max().item():.2f}); "
        f"gradients: largest relative difference {grad_rel[worst]:.1e} ({worst})"
    )
    assert torch.equal(k_targets, c_targets), f"{what}: the two paths pack different targets"
    assert rel < 1e-4, f"{what}: the two paths disagree ({a} vs {b})"
    assert grad_rel[worst] < 1e-2, f"{what}: the gradients of {worst} differ ({grad_rel[worst]:.2g})"


def decoder_sizes(args):
    """The decoders' constructor cfg at the benchmark's sizes (course: 512 everywhere, dropout 0.5)."""
    return {
        "vocab_size": args.vocab,
        "embed_dim": args.dim,
        "attention_dim": args.dim,
        "decoder_dim": args.dim,
        "dropout": 0.5,
    }


def decoder_throughput(kind, args):
    vocab = args.vocab
    n_img, cpi = args.batch_size // 5, 5
    cfg = make_cfg(kind)
    dcfg = decoder_sizes(args)
    torch.manual_seed(0)
    kit_dec = (DecoderWithAttention if kind == "attention" else DecoderWithRNN)(dcfg, encoder_dim=2048)
    course_dec = copy.deepcopy(kit_dec)
    kit_opt = adam(kit_dec.parameters(), lr=4e-4)  # the kit's Trainer: fused Adam
    course_opt = torch.optim.Adam(course_dec.parameters(), lr=4e-4)  # the tutorial's
    n_kit = args.kit_batches if kind == "attention" else args.rnn_kit_batches
    n_course = args.course_batches if kind == "attention" else args.rnn_course_batches
    batches = make_batches(max(n_kit, n_course) + 1, n_img, cpi, vocab, seed=1)
    title = "(a) DecoderWithAttention" if kind == "attention" else "(b) DecoderWithRNN"
    print(
        f"{title}: batches of {n_img} images x {cpi} captions = {n_img * cpi} captions (the kit's loader "
        f"turns batch_size {args.batch_size} into {args.batch_size} // {cpi} = {n_img} images), vocabulary "
        f"{vocab}, dims {args.dim}, encoder output 14x14x2048, caption lengths 10-20 incl. <start>/<end> "
        f"(mean {np.mean([b[2].float().mean().item() for b in batches]):.1f}), dropout 0.5, Adam, "
        f"grad clip {cfg['grad_clip']}"
    )
    check_same_loss(kit_dec, course_dec, cfg, batches[0], title)

    # warm-up (not timed): one step each on batch 0
    update(kit_dec, kit_opt, kit_loss(kit_dec, cfg, *batches[0]), cfg)
    update(course_dec, course_opt, course_loss(course_dec, cfg, *per_caption(*batches[0])), cfg)

    t_kit, t_course = Timer(), Timer()
    caps_kit = caps_course = 0
    rounds = n_course
    per_round = -(-n_kit // rounds)
    k = 1
    for r in range(rounds):
        enc, caps, lens = batches[1 + r]
        c = per_caption(enc, caps, lens)
        with t_course:
            update(course_dec, course_opt, course_loss(course_dec, cfg, *c), cfg)
        caps_course += caps.numel() // caps.size(-1)
        for _ in range(per_round):
            if t_kit.count >= n_kit:
                break
            enc, caps, lens = batches[k % len(batches)]
            k += 1
            with t_kit:
                update(kit_dec, kit_opt, kit_loss(kit_dec, cfg, enc, caps, lens), cfg)
            caps_kit += caps.numel() // caps.size(-1)
    kit_cps = caps_kit / t_kit.seconds
    course_cps = caps_course / t_course.seconds
    rows = [
        [
            "kit: decoder_scores(fast=fastpath), grouped by image",
            t_kit.count,
            f"{t_kit.seconds / t_kit.count:.3f}",
            f"{kit_cps:.1f}",
            f"{kit_cps / course_cps:.2f}x",
        ],
        [
            "course: per-caption forward + pack + CE",
            t_course.count,
            f"{t_course.seconds / t_course.count:.3f}",
            f"{course_cps:.1f}",
            "1.00x",
        ],
    ]
    print(table(["path", "timed batches", "s/batch", "captions/s", "speed-up"], rows))
    target = 5.0
    if kind == "attention":
        print(
            f"ratio kit/course = {kit_cps / course_cps:.2f}x (target >= {target:.0f}x: "
            f"{'met' if kit_cps / course_cps >= target else 'NOT met'})"
        )
    else:
        print(f"ratio kit/course = {kit_cps / course_cps:.2f}x")
    print(flush=True)
    return kit_cps, course_cps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    p.add_argument("--batch-size", type=int, default=32, help="captions per batch (kit: // 5 images)")
    p.add_argument("--vocab", type=int, default=9490)
    p.add_argument("--dim", type=int, default=512, help="embed, attention and decoder dims")
    p.add_argument("--course-batches", type=int, default=4, help="timed batches of the course path in (a)")
    p.add_argument("--kit-batches", type=int, default=12, help="timed batches of the kit path in (a)")
    p.add_argument("--rnn-course-batches", type=int, default=6, help="timed batches of the course path in (b)")
    p.add_argument("--rnn-kit-batches", type=int, default=12, help="timed batches of the kit path in (b)")
    p.add_argument("--cached-batches", type=int, default=6, help="timed batches of the kit (cached) row in (c)")
    p.add_argument("--encode-batches", type=int, default=3, help="timed re-encoding batches in (c)")
    p.add_argument("--encode-batch-size", type=int, default=8, help="captions per re-encoding batch in (c)")
    args = p.parse_args(argv)
    setup(args.threads, "training throughput: kit vs straightforward course procedure")
    if "a" in args.parts:
        decoder_throughput("attention", args)
    if "b" in args.parts:
        decoder_throughput("rnn", args)
    if "c" in args.parts:
        from train_speed_full import full_step  # here: it imports this module

        full_step(args)
    print(load_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
