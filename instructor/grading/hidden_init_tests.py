"""Hidden tests of the ``__init__`` regions — INSTRUCTOR-ONLY (see ``hidden_tests.py``, which imports this module
first).

Scored by what the built object DOES, never by what the student's process says about it: their process builds
their class with their ``__init__``, the grader's weights (drawn from the run's secret seed) are loaded into it by
name, strictly (``load_state_dict(strict=True)``, one top-level module at a time), and then each layer is run on
the grader's inputs and its outputs compared here with the reference layer's. A layer that is missing, misnamed,
of the wrong size or kind does not load the weights or does not compute what the reference's does. The
description their process sends (modules, settings, weight shapes, the arguments given to ``Attention``) only
words the hints: forging it earns nothing.

Per class: ``…_layer_names_shapes`` is the region's correctness test (every layer with weights loads them and
computes the reference's function); ``…_constructs`` pays for a partly right ``__init__`` (at least one such
layer); ``…_layer_types`` (the layers without weights: dropout p and not in place, the gate's sigmoid; linear
layers on 3-d inputs) pays only when ``…_layer_names_shapes`` passed; ``att_init_attention_arguments``: the
``Attention(...)`` they build, stood in for by the reference's layers made from their arguments, loads the
grader's attention weights and computes with them.
"""

from __future__ import annotations

import torch
from torch import nn

from instructor.grading.hidden_checks import dropout_mask
from instructor.grading.hidden_harness import CFG, C, Failed, close, is_tensor, test

# the reference's layers (for hints; the verdicts come from what the layers compute)
EXPECTED_TYPES = {
    "DecoderWithRNN": {
        "embedding": "Embedding",
        "decode_step": "LSTMCell",
        "init": "Linear",
        "bn": "BatchNorm1d",
        "fc": "Linear",
        "dropout": "Dropout",
    },
    "Attention": {"encoder_att": "Linear", "decoder_att": "Linear", "att": "Linear"},
    "DecoderWithAttention": {
        "attention": "Attention",
        "embedding": "Embedding",
        "decode_step": "LSTMCell",
        "init_h": "Linear",
        "init_c": "Linear",
        "f_beta": "Linear",
        "sigmoid": "Sigmoid",
        "fc": "Linear",
        "dropout": "Dropout",
    },
}
STAND_IN = "attention"  # the sub-module built by another graded class (judged by att_init_attention_arguments)
N_ROWS = 4  # rows of the layer inputs


def _todo(cls, msg):
    return Failed(f"TODO {cls}.__init__: {msg}")


def _top(built):
    return {
        m["name"]: m
        for m in built["modules"]
        if isinstance(m, dict) and isinstance(m.get("name"), str) and "." not in m["name"]
    }


def _weighted(module):
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _layer_inputs(ctx, m, path, three_d=False):
    """Inputs for the reference layer ``m`` (drawn from the run's seed, distinct per layer path)."""
    g = ctx.generator("layers")
    g.manual_seed(ctx.derive("layers") + sum(map(ord, path)) * 7919 + three_d)
    lead = (N_ROWS, 3) if three_d else (N_ROWS,)
    if isinstance(m, nn.Embedding):
        return [torch.randint(0, m.num_embeddings, (N_ROWS, 5), generator=g)]
    if isinstance(m, nn.LSTMCell):
        return [
            torch.randn(N_ROWS, m.input_size, generator=g),
            (torch.randn(N_ROWS, m.hidden_size, generator=g), torch.randn(N_ROWS, m.hidden_size, generator=g)),
        ]
    if isinstance(m, nn.Linear):
        return [torch.randn(*lead, m.in_features, generator=g)]
    if isinstance(m, nn.BatchNorm1d):
        return [torch.randn(N_ROWS, m.num_features, generator=g) * 2 + 1]
    return [torch.randn(N_ROWS, CFG["decoder_dim"], generator=g) * 3]


def _computes(ctx, oid, path, ref_layer, three_d=False):
    """None when their layer at ``path`` (with the grader's weights loaded) computes what ``ref_layer`` does on
    the grader's inputs (eval mode), else why not."""
    args = _layer_inputs(ctx, ref_layer, path, three_d)
    with torch.no_grad():
        want = ref_layer.eval()(*args)
    try:
        got = ctx.call(oid, path, args)
    except Failed as e:
        return f"self.{path}(…) failed: {e}"
    wants, gots = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    if not isinstance(gots, tuple) or len(gots) != len(wants):
        return f"self.{path}(…) does not return what nn.{type(ref_layer).__name__} returns"
    for w, x in zip(wants, gots):
        try:
            close(f"self.{path}(…)", x, w)
        except Failed as e:
            return f"{e} (it does not compute what nn.{type(ref_layer).__name__} computes with these weights)"
    return None


def _verdicts(ctx, cls):
    """{top-level layer with weights: None or why it does not compute the reference's function}, cached."""
    key = ("verdicts", cls)
    if key not in ctx._loads:
        oid, _, _ = ctx.load(cls)
        ref = ctx.reference(cls)
        ctx._loads[key] = {
            name: _computes(ctx, oid, name, m) for name, m in ref._modules.items() if name != STAND_IN and _weighted(m)
        }
    return ctx._loads[key]


def _load_hint(ctx, cls, problems, extra):
    """A hint from their process's description (names, shapes) for the modules that did not load."""
    built = ctx.build(cls)
    want = {k: list(v.shape) for k, v in ctx.state(cls).items() if not k.startswith(STAND_IN + ".")}
    have = {
        k: v[0] for k, v in built["state"].items() if isinstance(v, list) and v and not k.startswith(STAND_IN + ".")
    }
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        return f"weights missing: {', '.join(missing)} (layer names are graded; use the banner's names)"
    if unexpected or extra:
        return f"unexpected weights: {', '.join(unexpected or extra)} (define exactly the layers of the banner)"
    bad = [f"{k} {tuple(have[k])} (expected {tuple(want[k])})" for k in want if have[k] != want[k]]
    if bad:
        return "wrong layer sizes: " + "; ".join(bad)
    return "; ".join(f"self.{m}: {why}" for m, why in sorted(problems.items()))[:600]


def _names_shapes(ctx, cls):
    _, problems, extra = ctx.load(cls)
    problems = {m: why for m, why in problems.items() if m != STAND_IN}
    extra = [m for m in extra if m != STAND_IN]
    if problems or extra:
        raise _todo(
            cls, "the grader's weights do not load into your layers by name: " + _load_hint(ctx, cls, problems, extra)
        )
    wrong = {name: why for name, why in _verdicts(ctx, cls).items() if why}
    if wrong:
        name, why = sorted(wrong.items())[0]
        raise _todo(cls, f"with the grader's weights loaded, {why}")


def _constructs(ctx, cls):
    verdicts = _verdicts(ctx, cls)
    if not any(why is None for why in verdicts.values()):
        raise _todo(cls, "the object builds, but none of its layers computes what the banner's layers do yet")


def _types(ctx, cls):
    """The layers without weights, and the linear layers on 3-d inputs, by what they compute."""
    oid, _, _ = ctx.load(cls)
    top = _top(ctx.build(cls))
    ref = ctx.reference(cls)
    for name, m in ref._modules.items():
        if name == STAND_IN:
            continue
        typ = type(m).__name__
        if name not in top:
            raise _todo(cls, f"self.{name} should be an nn.{typ}, got nothing")
        if isinstance(m, nn.Dropout):
            _dropout(ctx, cls, oid, name, top[name])
        elif isinstance(m, nn.Linear):
            why = _computes(ctx, oid, name, m, three_d=True)
            if why:
                raise _todo(cls, f"self.{name} should be an nn.Linear acting on the last dimension: {why}")
        elif not _weighted(m):
            why = _computes(ctx, oid, name, m)
            if why:
                raise _todo(cls, f"self.{name} should be an nn.{typ}, got {top[name].get('type')}: {why}")


def _dropout(ctx, cls, oid, name, described):
    x = torch.randn(N_ROWS, CFG["decoder_dim"], generator=ctx.generator("layers")) + 3
    try:
        got, after = ctx.call(oid, name, [x], train=True, seed=ctx.dropout_seed, return_args=True)
        ev = ctx.call(oid, name, [x])
    except (Failed, TypeError, ValueError) as e:
        raise _todo(cls, f"self.{name}(x) failed: {e}") from None
    want = x * dropout_mask(x.shape, CFG["dropout"], ctx.dropout_seed)
    if not is_tensor(got) or tuple(got.shape) != tuple(x.shape) or (got - want).abs().max().item() > 1e-5:
        p = (described.get("settings") or {}).get("p")
        raise _todo(
            cls,
            f"self.{name} should be nn.Dropout(p=self.dropout_p) (cfg dropout {CFG['dropout']}): in "
            f"train mode it does not drop what that layer drops" + (f" (its p is {p})" if p else ""),
        )
    if not isinstance(after, tuple) or not after or not is_tensor(after[0]) or not torch.equal(after[0], x):
        raise _todo(
            cls, f"self.{name} must not be in place (inplace=True would also change the h returned to the next step)"
        )
    if not is_tensor(ev) or not torch.equal(ev, x):
        raise _todo(cls, f"self.{name} should be nn.Dropout: in eval mode it must return its input unchanged")


@test("DecoderWithRNN.__init__")
def test_rnn_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.__init__")
def test_rnn_init_constructs(ctx):
    _constructs(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.__init__", needs="rnn_init_layer_names_shapes")
def test_rnn_init_layer_types(ctx):
    _types(ctx, "DecoderWithRNN")


@test("Attention.__init__")
def test_attention_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "Attention")


@test("Attention.__init__", needs="attention_init_layer_names_shapes")
def test_attention_init_layer_types(ctx):
    _types(ctx, "Attention")


@test("DecoderWithAttention.__init__")
def test_att_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.__init__")
def test_att_init_constructs(ctx):
    _constructs(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.__init__", needs="att_init_layer_names_shapes")
def test_att_init_layer_types(ctx):
    _types(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.__init__")
def test_att_init_attention_arguments(ctx):
    cls = "DecoderWithAttention"
    oid, problems, _ = ctx.load(cls)
    ref_att = ctx.reference(cls).attention
    wrong = [
        why
        for name, m in ref_att._modules.items()
        if _weighted(m)
        for why in [None if STAND_IN in problems else _computes(ctx, oid, f"{STAND_IN}.{name}", m)]
        if why
    ]
    if STAND_IN not in problems and not wrong:
        return
    calls = [c for c in ctx.build(cls)["recorded"] if isinstance(c, dict) and c.get("cls") == "Attention"]
    want = f"Attention({C}, {CFG['decoder_dim']}, {CFG['attention_dim']})"
    if len(calls) != 1:
        raise _todo(
            cls,
            f"self.attention should be Attention(encoder_dim, decoder_dim, attention_dim) = {want}, "
            f"built once; it was built {len(calls)} times",
        )
    args = [repr(a) for a in calls[0].get("args", ())] if isinstance(calls[0].get("args"), (list, tuple)) else []
    kwargs = calls[0].get("kwargs") if isinstance(calls[0].get("kwargs"), dict) else {}
    got = ", ".join(args + [f"{k}={v!r}" for k, v in kwargs.items()])
    raise _todo(
        cls,
        f"self.attention should be Attention(encoder_dim, decoder_dim, attention_dim) = {want}, got Attention({got})",
    )
