"""Pieces the hidden tests share — INSTRUCTOR-ONLY, runs in the grader's own process (see ``hidden_tests.py``).

What the graded decoder methods take and return (``one_step_args``, ``one_step_names``, ``forward_outputs``; the
reference's ``one_step``: ``ref_one_step``), the dropout mask the reference draws from a seed (``dropout_mask``),
and the device check every graded method gets (``on_meta``: the data-less ``meta`` device stands in for a GPU).
"""

from __future__ import annotations

import torch

from instructor.grading.hidden_harness import Failed, is_tensor, unpack


def forward_outputs(kind, out):
    names = ["predictions", "encoded_captions", "decode_lengths", "sort_ind"]
    if kind == "DecoderWithAttention":
        names.insert(3, "alphas")
    return unpack(out, names)


def one_step_names(kind):
    return ["preds", "h", "c"] if kind == "DecoderWithRNN" else ["preds", "alpha", "h", "c"]


def one_step_args(kind, inp):
    if kind == "DecoderWithRNN":
        return [inp["embeddings"], inp["h"], inp["c"]]
    return [inp["embeddings"], inp["encoder_out"], inp["h"], inp["c"]]


def ref_one_step(kind, mod, inp):
    with torch.no_grad():
        return unpack(mod.one_step(*one_step_args(kind, inp)), one_step_names(kind))


def dropout_mask(shape, p, seed, dtype=torch.float32):
    """The scaled mask nn.Dropout(p) draws first after torch.manual_seed(seed) (CPU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=dtype).bernoulli_(1 - p, generator=g).div_(1 - p)


def on_meta(ctx, what, run, outputs):
    """``run(device)`` on the CPU (a failure there is not a device problem: it fails with its own error) and on the
    ``meta`` device; every tensor of ``outputs(result)`` must stay on meta."""
    run("cpu")
    try:
        got = run("meta")
    except Failed as e:
        raise Failed(
            f"{what} fails when the model and its inputs are on another device than the CPU ({e}): create "
            f"new tensors on the inputs' device (device=x.device or x.new_zeros(...))"
        ) from None
    for k, v in outputs(got).items():
        if not is_tensor(v) or v.device.type != "meta":
            raise Failed(
                f"{k} should stay on the inputs' device (meta in this test), got "
                f"{v.device if is_tensor(v) else type(v).__name__}"
            )
