"""Hidden tests — INSTRUCTOR-ONLY (left out of the student edition; copied into a grading sandbox only for the run).

Each test belongs to one TODO region (``rubric.toml`` gives its points) and is a function ``fn(ctx)`` that raises
``Failed`` with a message meant for the student (it is copied into their feedback; the source of this file never
is). ``ctx`` holds the reference module (``reference_models.py``, a copy of the solution) and the student's
``captioning.models``.

Isolation: a test of method M of class K runs the STUDENT's M on a module whose layers and weights are the
reference's (built by the reference ``__init__``, weights seeded and shared by name), whose other TODO methods are
the REFERENCE's, and whose given methods (``init_hidden_state`` …) are the student's; the student's extra
attributes (e.g. ``self.softmax = nn.Softmax(dim=1)``) are added when their ``__init__`` runs. So a bug costs the
points of the region it is in, not of every region that calls it. ``__init__`` tests build the student's module.

Numbers: rel_error(got, expected) = max|got - expected| / (max|expected| + 1e-8) <= 1e-4, as in the public checks.
"""
from __future__ import annotations

import torch
from torch import nn

if __package__:  # instructor.grading.hidden_tests
    from instructor.grading.hidden_harness import (C, CFG, LENGTHS, P, REL_TOL, TESTS, Context, Failed, close,
                                                   forward_outputs, one_step_outputs, rel_error, test, unpack)
else:  # _hidden_tests.py in a grading sandbox: build_sandbox copies the harness beside it as _hidden_harness.py
    from _hidden_harness import (C, CFG, LENGTHS, P, REL_TOL, TESTS, Context, Failed, close, forward_outputs,
                                 one_step_outputs, rel_error, test, unpack)

__all__ = ["TESTS", "Context", "Failed"]  # what the grader (child.py, the rubric check) uses


# ---------------------------------------------------------------------------------------------- __init__ tests
EXPECTED_TYPES = {
    "DecoderWithRNN": {"embedding": nn.Embedding, "decode_step": nn.LSTMCell, "init": nn.Linear,
                       "bn": nn.BatchNorm1d, "fc": nn.Linear, "dropout": nn.Dropout},
    "Attention": {"encoder_att": nn.Linear, "decoder_att": nn.Linear, "att": nn.Linear},
    "DecoderWithAttention": {"embedding": nn.Embedding, "decode_step": nn.LSTMCell, "init_h": nn.Linear,
                             "init_c": nn.Linear, "f_beta": nn.Linear, "sigmoid": nn.Sigmoid, "fc": nn.Linear,
                             "dropout": nn.Dropout},
}


def _built(ctx, cls):
    try:
        return ctx.student(cls)
    except Failed:
        raise
    except Exception as e:  # noqa: BLE001
        raise Failed(f"{cls}(...) could not be built: {type(e).__name__}: {str(e)[:300]}") from None


def _has_layers(mod, cls):
    # the student edition's __init__ stub builds an object without layers: building alone earns nothing
    if not list(mod.children()):
        raise Failed(f"TODO {cls}.__init__: the object builds but defines no layers yet")
    return mod


def _names_shapes(ctx, cls, skip_prefix=None):
    try:
        _names_shapes_(ctx, cls, skip_prefix)
    except Failed as e:
        raise Failed(str(e) if str(e).startswith("TODO") else f"TODO {cls}.__init__: {e}") from None


def _names_shapes_(ctx, cls, skip_prefix=None):
    mod = _built(ctx, cls)
    want = {k: tuple(v.shape) for k, v in ctx.state(cls).items()}
    have = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    if skip_prefix:
        want = {k: v for k, v in want.items() if not k.startswith(skip_prefix)}
        have = {k: v for k, v in have.items() if not k.startswith(skip_prefix)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise Failed(f"weights missing: {', '.join(missing)} (layer names are graded; use the banner's names)")
    if extra:
        raise Failed(f"unexpected weights: {', '.join(extra)} (define exactly the layers of the banner)")
    bad = [f"{k} {have[k]} (expected {want[k]})" for k in want if have[k] != want[k]]
    if bad:
        raise Failed("wrong layer sizes: " + "; ".join(bad))


def _types(ctx, cls):
    mod = _built(ctx, cls)
    for name, typ in EXPECTED_TYPES[cls].items():
        got = mod._modules.get(name)
        if not isinstance(got, typ):
            raise Failed(f"TODO {cls}.__init__: self.{name} should be an nn.{typ.__name__}, got "
                         f"{'nothing' if got is None else type(got).__name__}")
    if "dropout" in EXPECTED_TYPES[cls] and mod.dropout.p != CFG["dropout"]:
        raise Failed(f"self.dropout should use p=self.dropout_p ({CFG['dropout']}), got p={mod.dropout.p}")
    return mod


@test("DecoderWithRNN.__init__")
def test_rnn_init_constructs(ctx):
    _has_layers(_built(ctx, "DecoderWithRNN"), "DecoderWithRNN")


@test("DecoderWithRNN.__init__")
def test_rnn_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.__init__")
def test_rnn_init_layer_types(ctx):
    mod = _types(ctx, "DecoderWithRNN")
    if mod.decode_step.input_size != CFG["embed_dim"] or mod.decode_step.hidden_size != CFG["decoder_dim"]:
        raise Failed("decode_step should be nn.LSTMCell(embed_dim, decoder_dim)")


@test("Attention.__init__")
def test_attention_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "Attention")


@test("Attention.__init__")
def test_attention_init_layer_types(ctx):
    _types(ctx, "Attention")


@test("DecoderWithAttention.__init__")
def test_att_init_constructs(ctx):
    _has_layers(_built(ctx, "DecoderWithAttention"), "DecoderWithAttention")


@test("DecoderWithAttention.__init__")
def test_att_init_layer_names_shapes(ctx):
    # the attention's own weights are Attention.__init__'s business
    _names_shapes(ctx, "DecoderWithAttention", skip_prefix="attention.")


@test("DecoderWithAttention.__init__")
def test_att_init_layer_types(ctx):
    mod = _types(ctx, "DecoderWithAttention")
    att = mod._modules.get("attention")
    if att is None or type(att).__name__ != "Attention":
        raise Failed("self.attention should be Attention(encoder_dim, decoder_dim, attention_dim)")
    if mod.decode_step.input_size != CFG["embed_dim"] + C:
        raise Failed(f"decode_step's input is [embedding ; gated context]: embed_dim + encoder_dim = "
                     f"{CFG['embed_dim'] + C}, got {mod.decode_step.input_size}")


# ---------------------------------------------------------------------------------------------- one_step tests
def _one_step_eval(ctx, cls):
    with torch.no_grad():
        want = one_step_outputs(cls, ctx.reference(cls), ctx.step)
        got = one_step_outputs(cls, ctx.hybrid(cls, "one_step"), ctx.step)
    for k in want:
        close(k, got[k], want[k], "With the reference's layers and weights (eval mode) your one_step should give "
                                  "the same numbers")


def _one_step_h_c(ctx, cls):
    with torch.no_grad():
        want = one_step_outputs(cls, ctx.reference(cls), ctx.step)
        got = one_step_outputs(cls, ctx.hybrid(cls, "one_step"), ctx.step)
    for k in ("h", "c"):
        if not torch.is_tensor(got[k]) or got[k].shape != want[k].shape:
            raise Failed(f"{k} should be a tensor of shape {tuple(want[k].shape)}")
    if rel_error(got["h"], want["c"]) <= REL_TOL and rel_error(got["c"], want["h"]) <= REL_TOL:
        raise Failed("h and c are swapped: nn.LSTMCell returns (h, c), in that order")
    if rel_error(got["h"], want["h"]) > REL_TOL or rel_error(got["c"], want["c"]) > REL_TOL:
        raise Failed("the new (h, c) differ from the reference: call self.decode_step(input, (h, c)) with the "
                     "state in the order (h, c) and keep both outputs")


def _one_step_dropout(ctx, cls):
    ref, mine = ctx.reference(cls, train=True), ctx.hybrid(cls, "one_step", train=True)
    with torch.no_grad():
        torch.manual_seed(77)
        want = one_step_outputs(cls, ref, ctx.step)
        torch.manual_seed(77)
        got = one_step_outputs(cls, mine, ctx.step)
    for k in want:
        close(k, got[k], want[k], "In train mode (dropout active, same random seed) your one_step differs from "
                                  "the reference: apply self.dropout once, to h, right before self.fc "
                                  "(preds = fc(dropout(h)))")


@test("DecoderWithRNN.one_step")
def test_rnn_one_step_eval(ctx):
    _one_step_eval(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.one_step")
def test_rnn_one_step_h_c_order(ctx):
    _one_step_h_c(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.one_step")
def test_rnn_one_step_dropout_train(ctx):
    _one_step_dropout(ctx, "DecoderWithRNN")


@test("DecoderWithAttention.one_step")
def test_att_one_step_eval(ctx):
    _one_step_eval(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.one_step")
def test_att_one_step_gate(ctx):
    cls = "DecoderWithAttention"
    state = dict(ctx.state(cls))
    state["f_beta.weight"] = torch.zeros_like(state["f_beta.weight"])
    state["f_beta.bias"] = torch.full_like(state["f_beta.bias"], -30.0)  # gate closed: sigmoid(-30) ~ 1e-13
    ref = ctx.reference(cls)
    ref.load_state_dict(state)
    with torch.no_grad():
        want = one_step_outputs(cls, ref, ctx.step)
        got = one_step_outputs(cls, ctx.hybrid(cls, "one_step", state=state), ctx.step)
    for k in ("preds", "h", "c"):
        close(k, got[k], want[k], "With the gate closed (sigmoid(f_beta(h)) ~ 0) the context must not reach the "
                                  "LSTM: z = self.sigmoid(self.f_beta(h)) * z before concatenating it")


@test("DecoderWithAttention.one_step")
def test_att_one_step_h_c_order(ctx):
    _one_step_h_c(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.one_step")
def test_att_one_step_dropout_train(ctx):
    _one_step_dropout(ctx, "DecoderWithAttention")


# ----------------------------------------------------------------------------------------------- forward tests
def _fwd(ctx, cls, inp=None):
    with torch.no_grad():
        return forward_outputs(cls, ctx.hybrid(cls, "forward"), inp or ctx.fwd)


def _forward_eval(ctx, cls):
    with torch.no_grad():
        want = forward_outputs(cls, ctx.reference(cls), ctx.fwd)
    got = _fwd(ctx, cls)
    if list(got["decode_lengths"]) != list(want["decode_lengths"]):
        raise Failed(f"decode_lengths {list(got['decode_lengths'])} should be {list(want['decode_lengths'])}")
    if not torch.equal(torch.as_tensor(got["sort_ind"]), want["sort_ind"]):
        raise Failed("sort_ind differs: keep the given sort by decreasing length")
    if not torch.equal(got["encoded_captions"], want["encoded_captions"]):
        raise Failed("encoded_captions should be returned sorted by decreasing length")
    for k in ("predictions", "alphas"):
        if k in want:
            close(k, got[k], want[k], "forward should loop t over range(max(decode_lengths)) on the shrinking "
                                      "batch, calling self.one_step and storing its outputs at [:num, t]")


def _rows_past_end(ctx, cls):
    got = _fwd(ctx, cls)
    for k in ("predictions", "alphas"):
        if k not in got:
            continue
        for i, d in enumerate(got["decode_lengths"]):
            tail = got[k][i, d:]
            if tail.numel() and tail.abs().max().item() != 0:
                raise Failed(f"{k}[{i}, {d}:] should stay 0: caption {i} has decode length {d}, so steps t >= {d} "
                             f"must not run for it (num = captions with decode length > t)")


def _alone(ctx, cls):
    full = _fwd(ctx, cls)
    order = torch.as_tensor(full["sort_ind"]).tolist()
    for row, i in enumerate(order):
        one = _fwd(ctx, cls, {k: v[i:i + 1] for k, v in ctx.fwd.items()})
        d = full["decode_lengths"][row]
        for k in ("predictions", "alphas"):
            if k in full and rel_error(full[k][row, :d], one[k][0, :d]) > REL_TOL:
                raise Failed(f"the {k} of caption {i} (length {LENGTHS[i]}) differ when it is decoded alone: other "
                             f"captions of the batch must not influence it")


def _padding(ctx, cls):
    caps = ctx.fwd["captions"].clone()
    g = torch.Generator().manual_seed(5)
    for i, n in enumerate(LENGTHS):
        caps[i, n:] = torch.randint(1, CFG["vocab_size"], (caps.size(1) - n,), generator=g)
    a = _fwd(ctx, cls)
    b = _fwd(ctx, cls, dict(ctx.fwd, captions=caps))
    for k in ("predictions", "alphas"):
        if k in a and (a[k].shape != b[k].shape or rel_error(b[k], a[k]) > REL_TOL):
            raise Failed(f"{k} depend on the padding: replacing the <pad> words after each caption's end changed "
                         f"them; only captions longer than t may run at step t")


def _first_step(ctx, cls):
    with torch.no_grad():
        want = forward_outputs(cls, ctx.reference(cls), ctx.fwd)
    got = _fwd(ctx, cls)
    for k in ("predictions", "alphas"):
        if k in want:
            if not torch.is_tensor(got[k]) or got[k].dim() != 3 or got[k].shape[:1] != want[k].shape[:1]:
                raise Failed(f"{k} should have shape {tuple(want[k].shape)}")
            close(f"{k}[:, 0]", got[k][:, 0], want[k][:, 0],
                  "the first step already differs: start from (h, c) = self.init_hidden_state(encoder_out) (the "
                  "given line above the TODO) and do not reset or swap them")


for _cls, _p in (("DecoderWithRNN", "rnn"), ("DecoderWithAttention", "att")):
    for _suffix, _fn in (("eval", _forward_eval), ("rows_past_end_zero", _rows_past_end),
                         ("short_caption_alone", _alone), ("padding_independent", _padding),
                         ("starts_from_initial_state", _first_step)):
        def _t(ctx, _fn=_fn, _cls=_cls):
            _fn(ctx, _cls)

        _t.__name__ = f"test_{_p}_forward_{_suffix}"
        test(f"{_cls}.forward")(_t)


# --------------------------------------------------------------------------------------------- attention tests
@test("Attention.forward")
def test_attention_forward_eval(ctx):
    with torch.no_grad():
        want = unpack(ctx.reference("Attention")(ctx.att_in["encoder_out"], ctx.att_in["h"]), ["z", "alpha"])
        got = unpack(ctx.hybrid("Attention", "forward")(ctx.att_in["encoder_out"], ctx.att_in["h"]),
                     ["z", "alpha"])
    close("alpha", got["alpha"], want["alpha"],
          "alpha = softmax over regions of att(relu(encoder_att(encoder_out) + decoder_att(h).unsqueeze(1)))")
    close("z", got["z"], want["z"], "z = sum over regions of encoder_out * alpha")


@test("Attention.forward")
def test_attention_softmax_over_regions(ctx):
    with torch.no_grad():
        got = unpack(ctx.hybrid("Attention", "forward")(ctx.att_in["encoder_out"], ctx.att_in["h"]),
                     ["z", "alpha"])
    alpha = got["alpha"]
    n = ctx.att_in["h"].size(0)
    if not torch.is_tensor(alpha) or tuple(alpha.shape) != (n, P):
        raise Failed(f"alpha should have shape (N, P) = {(n, P)}, got "
                     f"{tuple(alpha.shape) if torch.is_tensor(alpha) else type(alpha).__name__}")
    s = alpha.sum(dim=1)
    if (alpha < 0).any() or (s - 1).abs().max().item() > 1e-4:
        raise Failed("alpha does not sum to 1 over the regions for each row: take the softmax over dim=1 (the P "
                     "regions), not over the batch")
