"""Hidden tests of the ``Attention.forward`` region — INSTRUCTOR-ONLY (see ``hidden_tests.py``, which imports this
module before its own tests: Attention.forward is graded before the decoders' one_step, whose ``attention``
sub-module is then answered with the reference).

``attention_forward_eval`` compares z and alpha with the reference's; the others (softmax over the regions, a batch
of one row, the ``meta`` device) pay only when it passed.
"""

from __future__ import annotations

import torch

import instructor.grading.hidden_init_tests  # noqa: F401  (importing it registers the __init__ tests first)
from instructor.grading.hidden_checks import on_meta
from instructor.grading.hidden_harness import REL_TOL, C, Failed, P, close, is_tensor, rel_error, test, unpack


# --------------------------------------------------------------------------------------------- attention tests
def _attend(ctx, inp, oid=None):
    oid = oid if oid is not None else ctx.hybrid("Attention", "forward")
    return unpack(ctx.call(oid, "forward", [inp["encoder_out"], inp["h"]]), ["z", "alpha"])


@test("Attention.forward")
def test_attention_forward_eval(ctx):
    with torch.no_grad():
        want = unpack(ctx.reference("Attention")(ctx.att_in["encoder_out"], ctx.att_in["h"]), ["z", "alpha"])
    got = _attend(ctx, ctx.att_in)
    close(
        "alpha",
        got["alpha"],
        want["alpha"],
        "alpha = softmax over regions of att(relu(encoder_att(encoder_out) + decoder_att(h).unsqueeze(1)))",
    )
    close("z", got["z"], want["z"], "z = sum over regions of encoder_out * alpha")


@test("Attention.forward", needs="attention_forward_eval")
def test_attention_softmax_over_regions(ctx):
    alpha = _attend(ctx, ctx.att_in)["alpha"]
    n = ctx.att_in["h"].size(0)
    if not is_tensor(alpha) or tuple(alpha.shape) != (n, P):
        raise Failed(
            f"alpha should have shape (N, P) = {(n, P)}, got "
            f"{tuple(alpha.shape) if is_tensor(alpha) else type(alpha).__name__}"
        )
    s = alpha.sum(dim=1)
    if (alpha < 0).any() or (s - 1).abs().max().item() > 1e-4:
        raise Failed(
            "alpha does not sum to 1 over the regions for each row: take the softmax over dim=1 (the P "
            "regions), not over the batch"
        )


@test("Attention.forward", needs="attention_forward_eval")
def test_attention_batch_of_one(ctx):
    oid = ctx.hybrid("Attention", "forward")
    full = _attend(ctx, ctx.att_in, oid)
    one = _attend(ctx, {k: v[:1] for k, v in ctx.att_in.items()}, oid)
    for k, shape in (("z", (1, C)), ("alpha", (1, P))):
        if not is_tensor(one[k]) or tuple(one[k].shape) != shape:
            raise Failed(
                f"with a batch of one row, {k} should have shape {shape}, got "
                f"{tuple(one[k].shape) if is_tensor(one[k]) else type(one[k]).__name__}: squeeze a named "
                f"dimension (squeeze(2)), never all of them (squeeze())"
            )
        if is_tensor(full[k]) and full[k].dim() == 2 and rel_error(one[k][0], full[k][0]) > REL_TOL:
            raise Failed(
                f"with a batch of one row, {k} differs from the same row in a batch of "
                f"{ctx.att_in['h'].size(0)}: the rows of a batch must not influence each other (an "
                f"operation over dim 0 mixes them)"
            )


@test("Attention.forward", needs="attention_forward_eval")
def test_attention_forward_device(ctx):
    # no GPU when grading: the meta device (no data) stands in for it; a tensor made on the CPU mixes devices
    oid = ctx.hybrid("Attention", "forward")
    on_meta(
        ctx,
        "Attention.forward",
        lambda device: unpack(
            ctx.call(oid, "forward", [ctx.att_in["encoder_out"], ctx.att_in["h"]], device=device), ["z", "alpha"]
        ),
        lambda got: got,
    )
