"""Hidden tests — INSTRUCTOR-ONLY; they run in the grader's process, never in a sandbox.

Each test belongs to one TODO region (``rubric.toml`` gives its points) and is a function ``fn(ctx)`` that raises
``Failed`` with a message for the student (copied into their feedback; this source never is). The student's code
runs in their sandboxed process (``ctx.build`` / ``ctx.hybrid`` / ``ctx.call``); every number is compared here.

Isolation: a test of method M of class K runs the STUDENT's M on an object with the reference's layers and seeded
weights, whose graded methods that M calls (forward calls one_step) and ``attention`` sub-module are the
REFERENCE's, answered by this process.
So a bug costs the points of its own region. Within a region, one cause fails one test where it can: most tests
compare the student's code with itself (batch of one vs a batch, train vs eval mode, padding changed, gate
closed), so that only the ``eval`` test compares everything with the reference.

Points only for behaviour: a test that compares the student's code with itself pays only when its region's
correctness test (``…_eval``, the outputs against the reference's) passed in the same run (``test(region,
needs=…)``): a constant output is consistent with itself. Every graded method also runs on the data-less ``meta``
device (``…_device``), where a tensor made on the CPU mixes devices.

Order: a method's reference is served to the student's process only after their own version of it has been
graded (Attention.forward before the decoders' one_step, one_step before forward), so no answer can be recorded
from an earlier test and replayed.

Numbers: rel_error(got, expected) = max|got - expected| / (max|expected| + 1e-8) <= 1e-4, as in the public checks.
"""

from __future__ import annotations

import torch

import instructor.grading.hidden_attention_tests  # noqa: F401  (registers the Attention.forward tests, after __init__'s)
from instructor.grading.hidden_checks import (
    dropout_mask,
    forward_outputs,
    on_meta,
    one_step_args,
    one_step_names,
    ref_one_step,
)
from instructor.grading.hidden_harness import (
    CFG,
    LENGTHS,
    REL_TOL,
    TESTS,
    Context,
    Failed,
    close,
    is_tensor,
    matches,
    rel_error,
    test,
    unpack,
)
from instructor.grading.hidden_init_tests import EXPECTED_TYPES  # importing it registers the __init__ tests first

__all__ = ["TESTS", "Context", "Failed", "EXPECTED_TYPES"]  # what the grader (job.py, the rubric check) uses


# ---------------------------------------------------------------------------------------------- one_step tests
def _step(ctx, cls, inp=None, train=False, seed=None, state=None, oid=None, device="cpu"):
    oid = oid if oid is not None else ctx.hybrid(cls, "one_step", state=state)
    out = ctx.call(oid, "one_step", one_step_args(cls, inp or ctx.step), train=train, seed=seed, device=device)
    return unpack(out, one_step_names(cls))


def _one_step_eval(ctx, cls):
    want = ref_one_step(cls, ctx.reference(cls), ctx.step)
    got = _step(ctx, cls)
    for k in want:
        close(
            k,
            got[k],
            want[k],
            "With the reference's layers and weights (eval mode) your one_step should give the same numbers",
        )


def _one_step_h_c(ctx, cls):
    # the LSTM's input weights zeroed: the new state depends on (h, c) alone, whatever the input (gate, attention)
    state = dict(ctx.state(cls))
    state["decode_step.weight_ih"] = torch.zeros_like(state["decode_step.weight_ih"])
    got = _step(ctx, cls, state=state)
    lstm = ctx.reference(cls, state=state).decode_step
    x = torch.zeros(ctx.step["h"].size(0), lstm.input_size)
    with torch.no_grad():
        h1, c1 = lstm(x, (ctx.step["h"], ctx.step["c"]))
        h2, c2 = lstm(x, (ctx.step["c"], ctx.step["h"]))
    for k in ("h", "c"):
        if not is_tensor(got[k]) or got[k].shape != h1.shape:
            raise Failed(f"{k} should be a tensor of shape {tuple(h1.shape)}")
    if matches(got["h"], h1) and matches(got["c"], c1):
        return
    if matches(got["h"], c1) and matches(got["c"], h1):
        raise Failed("h and c are returned swapped: nn.LSTMCell returns (h, c), in that order")
    if matches(got["h"], h2) and matches(got["c"], c2) or matches(got["h"], c2) and matches(got["c"], h2):
        raise Failed("the state goes into the LSTM as (c, h): call self.decode_step(input, (h, c))")
    raise Failed("the returned h, c are not the outputs of self.decode_step(input, (h, c)) for the given h, c")


def _one_step_dropout(ctx, cls):
    oid = ctx.hybrid(cls, "one_step")
    ev = _step(ctx, cls, oid=oid)
    tr = _step(ctx, cls, oid=oid, train=True, seed=ctx.dropout_seed)
    ref = ctx.reference(cls)
    if not is_tensor(ev["h"]) or ev["h"].shape != ctx.step["h"].shape:
        raise Failed(f"h should be a tensor of shape {tuple(ctx.step['h'].shape)}")
    # the scores in train mode, from this very h: fc(dropout(h)) with the mask nn.Dropout draws from the seed
    with torch.no_grad():
        want = ref.fc(ev["h"] * dropout_mask(ev["h"].shape, CFG["dropout"], ctx.dropout_seed, ev["h"].dtype))
    close(
        "preds (train mode)",
        tr["preds"],
        want,
        "apply self.dropout once, to h, right before self.fc (preds = self.fc(self.dropout(h))), and nowhere else",
    )


def _one_step_keeps_state(ctx, cls):
    oid = ctx.hybrid(cls, "one_step")
    ev = _step(ctx, cls, oid=oid)
    tr = _step(ctx, cls, oid=oid, train=True, seed=ctx.dropout_seed)
    for k in ("h", "c"):
        if not is_tensor(tr[k]) or not is_tensor(ev[k]) or tr[k].shape != ev[k].shape:
            raise Failed(f"{k} should be a tensor of shape {tuple(ctx.step['h'].shape)} in train and eval mode")
        if rel_error(tr[k], ev[k]) > REL_TOL:
            mask = dropout_mask(ev[k].shape, CFG["dropout"], ctx.dropout_seed, ev[k].dtype)
            if matches(tr[k], ev[k] * mask):
                raise Failed(
                    f"in train mode the returned {k} is dropped out: dropout was applied in place (to the "
                    f"state itself); use self.dropout(h) as the input of fc only, not in place"
                )
            raise Failed(
                f"in train mode the returned {k} differs from eval mode: dropout must not act on the "
                f"LSTM's input or state, only on the input of fc"
            )


def _one_step_batch_of_one(ctx, cls):
    oid = ctx.hybrid(cls, "one_step")
    full = _step(ctx, cls, oid=oid)
    one = _step(ctx, cls, oid=oid, inp={k: v[:1] for k, v in ctx.step.items()})
    for k in full:
        if not is_tensor(one[k]) or not is_tensor(full[k]):
            raise Failed(f"{k} should be a tensor")
        want_shape = (1,) + tuple(full[k].shape[1:])
        if tuple(one[k].shape) != want_shape:
            raise Failed(
                f"with a batch of one row, {k} has shape {tuple(one[k].shape)}, expected {want_shape}: "
                f"squeeze/unsqueeze a named dimension (squeeze(1)), never all of them (squeeze())"
            )
        if rel_error(one[k][0], full[k][0]) > REL_TOL:
            raise Failed(
                f"with a batch of one row, {k} differs from the same row in a batch of {ctx.step['h'].size(0)}: "
                f"the rows of a batch must not influence each other"
            )


def _one_step_device(ctx, cls):
    oid = ctx.hybrid(cls, "one_step")
    on_meta(ctx, f"{cls}.one_step", lambda device: _step(ctx, cls, oid=oid, device=device), lambda got: got)


for _cls, _p in (("DecoderWithRNN", "rnn"), ("DecoderWithAttention", "att")):
    for _suffix, _fn in (
        ("eval", _one_step_eval),
        ("h_c_order", _one_step_h_c),
        ("dropout_train", _one_step_dropout),
        ("train_keeps_state", _one_step_keeps_state),
        ("batch_of_one", _one_step_batch_of_one),
        ("device", _one_step_device),
    ):

        def _t(ctx, _fn=_fn, _cls=_cls):
            _fn(ctx, _cls)

        _t.__name__ = f"test_{_p}_one_step_{_suffix}"
        test(f"{_cls}.one_step", needs=None if _suffix == "eval" else f"{_p}_one_step_eval")(_t)


@test("DecoderWithAttention.one_step", needs="att_one_step_eval")
def test_att_one_step_gate(ctx):
    cls = "DecoderWithAttention"
    state = dict(ctx.state(cls))
    state["f_beta.weight"] = torch.zeros_like(state["f_beta.weight"])
    state["f_beta.bias"] = torch.full_like(state["f_beta.bias"], -30.0)  # gate closed: sigmoid(-30) ~ 1e-13
    oid = ctx.hybrid(cls, "one_step", state=state)
    a = _step(ctx, cls, oid=oid)
    b = _step(ctx, cls, oid=oid, inp=dict(ctx.step, encoder_out=ctx.step["encoder_out"].flip(0) * 3))
    for k in ("preds", "h", "c"):
        if not is_tensor(a[k]) or not is_tensor(b[k]) or a[k].shape != b[k].shape:
            raise Failed(f"{k} should be a tensor of shape {tuple(ctx.step['h'].shape[:1])} + (…)")
        if rel_error(b[k], a[k]) > REL_TOL:
            raise Failed(
                "with the gate closed (sigmoid(f_beta(h)) ~ 0) the image still reaches the LSTM: multiply "
                "the context by the gate, z = self.sigmoid(self.f_beta(h)) * z, before concatenating it"
            )


# ----------------------------------------------------------------------------------------------- forward tests
def _fwd(ctx, cls, inp=None, oid=None, device="cpu"):
    inp = inp or ctx.fwd
    oid = oid if oid is not None else ctx.hybrid(cls, "forward")
    out = ctx.call(oid, "forward", [inp["encoder_out"], inp["captions"], inp["lengths"]], device=device, cpu_args=(2,))
    return forward_outputs(cls, out)


def _forward_eval(ctx, cls):
    with torch.no_grad():
        ref = ctx.reference(cls)
        want = forward_outputs(cls, ref(ctx.fwd["encoder_out"], ctx.fwd["captions"], ctx.fwd["lengths"]))
    got = _fwd(ctx, cls)
    if list(got["decode_lengths"]) != list(want["decode_lengths"]):
        raise Failed(f"decode_lengths {list(got['decode_lengths'])} should be {list(want['decode_lengths'])}")
    if not is_tensor(got["sort_ind"]) or not torch.equal(got["sort_ind"], want["sort_ind"]):
        raise Failed("sort_ind differs: keep the given sort by decreasing length")
    if not is_tensor(got["encoded_captions"]) or not torch.equal(got["encoded_captions"], want["encoded_captions"]):
        raise Failed("encoded_captions should be returned sorted by decreasing length")
    for k in ("predictions", "alphas"):
        if k in want:
            close(
                k,
                got[k],
                want[k],
                "forward should loop t over range(max(decode_lengths)) on the shrinking "
                "batch, calling self.one_step and storing its outputs at [:num, t]",
            )


def _rows_past_end(ctx, cls):
    got = _fwd(ctx, cls)
    for k in ("predictions", "alphas"):
        if k not in got:
            continue
        if not is_tensor(got[k]) or got[k].dim() != 3:
            raise Failed(f"{k} should be a 3-d tensor")
        for i, d in enumerate(got["decode_lengths"]):
            tail = got[k][i, d:]
            if tail.numel() and tail.abs().max().item() != 0:
                raise Failed(
                    f"{k}[{i}, {d}:] should stay 0: caption {i} has decode length {d}, so steps t >= {d} "
                    f"must not run for it (num = captions with decode length > t)"
                )


def _alone(ctx, cls):
    oid = ctx.hybrid(cls, "forward")
    full = _fwd(ctx, cls, oid=oid)
    order = full["sort_ind"].tolist() if is_tensor(full["sort_ind"]) else []
    for row, i in enumerate(order):
        one = _fwd(ctx, cls, {k: v[i : i + 1] for k, v in ctx.fwd.items()}, oid=oid)
        d = full["decode_lengths"][row]
        for k in ("predictions", "alphas"):
            if k not in full:
                continue
            if not is_tensor(one[k]) or one[k].dim() != 3 or one[k].size(0) != 1:
                raise Failed(
                    f"with a batch of one caption, {k} should have shape (1, {d}, …), got "
                    f"{tuple(one[k].shape) if is_tensor(one[k]) else type(one[k]).__name__}: keep the "
                    f"batch dimension (squeeze a named dimension, never all of them)"
                )
            if rel_error(full[k][row, :d], one[k][0, :d]) > REL_TOL:
                raise Failed(
                    f"the {k} of caption {i} (length {LENGTHS[i]}) differ when it is decoded alone: other "
                    f"captions of the batch must not influence it"
                )


def _padding(ctx, cls):
    caps = ctx.fwd["captions"].clone()
    g = ctx.generator("padding")
    for i, n in enumerate(LENGTHS):
        caps[i, n:] = torch.randint(1, CFG["vocab_size"], (caps.size(1) - n,), generator=g)
    oid = ctx.hybrid(cls, "forward")
    a = _fwd(ctx, cls, oid=oid)
    b = _fwd(ctx, cls, dict(ctx.fwd, captions=caps), oid=oid)
    for k in ("predictions", "alphas"):
        if k in a and (
            not is_tensor(a[k]) or not is_tensor(b[k]) or a[k].shape != b[k].shape or rel_error(b[k], a[k]) > REL_TOL
        ):
            raise Failed(
                f"{k} depend on the padding: replacing the <pad> words after each caption's end changed "
                f"them; only captions longer than t may run at step t"
            )


def _first_step(ctx, cls):
    with torch.no_grad():
        want = forward_outputs(cls, ctx.reference(cls)(ctx.fwd["encoder_out"], ctx.fwd["captions"], ctx.fwd["lengths"]))
    got = _fwd(ctx, cls)
    for k in ("predictions", "alphas"):
        if k in want:
            if not is_tensor(got[k]) or got[k].dim() != 3 or got[k].shape[:1] != want[k].shape[:1]:
                raise Failed(f"{k} should have shape {tuple(want[k].shape)}")
            close(
                f"{k}[:, 0]",
                got[k][:, 0],
                want[k][:, 0],
                "the first step already differs: start from (h, c) = self.init_hidden_state(encoder_out) (the "
                "given line above the TODO) and do not reset or swap them",
            )


def _device(ctx, cls):
    # no GPU when grading: the meta device (no data) stands in for it; a tensor made on the CPU mixes devices
    _fwd(ctx, cls)  # fails with its own error when forward fails on the CPU too (not a device problem)
    try:
        got = _fwd(ctx, cls, device="meta")
    except Failed as e:
        raise Failed(
            f"forward fails when the model and encoder_out are on another device than the CPU ({e}): "
            f"create new tensors on encoder_out's device (device=encoder_out.device or "
            f"encoder_out.new_zeros(...))"
        ) from None
    for k in ("predictions", "alphas"):
        if k in got and (not is_tensor(got[k]) or got[k].device.type != "meta"):
            raise Failed(
                f"{k} should stay on encoder_out's device (meta in this test), got "
                f"{got[k].device if is_tensor(got[k]) else type(got[k]).__name__}"
            )


for _cls, _p in (("DecoderWithRNN", "rnn"), ("DecoderWithAttention", "att")):
    for _suffix, _fn in (
        ("eval", _forward_eval),
        ("rows_past_end_zero", _rows_past_end),
        ("short_caption_alone", _alone),
        ("padding_independent", _padding),
        ("starts_from_initial_state", _first_step),
        ("device", _device),
    ):

        def _t(ctx, _fn=_fn, _cls=_cls):
            _fn(ctx, _cls)

        _t.__name__ = f"test_{_p}_forward_{_suffix}"
        test(f"{_cls}.forward", needs=None if _suffix == "eval" else f"{_p}_forward_eval")(_t)
