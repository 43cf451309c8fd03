"""Hidden tests of the ``__init__`` regions — INSTRUCTOR-ONLY (see ``hidden_tests.py``, which imports this module
first). The student's process builds their classes and describes them (modules, settings, weight shapes, the
arguments given to ``Attention``); the checks are made here.
"""
from __future__ import annotations

import inspect

from instructor.grading.hidden_harness import C, CFG, Failed, test

# ---------------------------------------------------------------------------------------------- __init__ tests
EXPECTED_TYPES = {
    "DecoderWithRNN": {"embedding": "Embedding", "decode_step": "LSTMCell", "init": "Linear", "bn": "BatchNorm1d",
                       "fc": "Linear", "dropout": "Dropout"},
    "Attention": {"encoder_att": "Linear", "decoder_att": "Linear", "att": "Linear"},
    "DecoderWithAttention": {"attention": "Attention", "embedding": "Embedding", "decode_step": "LSTMCell",
                             "init_h": "Linear", "init_c": "Linear", "f_beta": "Linear", "sigmoid": "Sigmoid",
                             "fc": "Linear", "dropout": "Dropout"},
}


def _todo(cls, msg):
    return Failed(f"TODO {cls}.__init__: {msg}")


def _top(built):
    return {m["name"]: m for m in built["modules"] if "." not in m["name"]}


def _constructs(ctx, cls):
    if not _top(ctx.build(cls)):  # the student edition's stub builds an object without layers
        raise _todo(cls, "the object builds but defines no layers yet")


def _names_shapes(ctx, cls, skip_prefix=None):
    built = ctx.build(cls)
    want = {k: list(v.shape) for k, v in ctx.state(cls).items()}
    have = {k: v[0] for k, v in built["state"].items()}
    if skip_prefix:
        want = {k: v for k, v in want.items() if not k.startswith(skip_prefix)}
        have = {k: v for k, v in have.items() if not k.startswith(skip_prefix)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise _todo(cls, f"weights missing: {', '.join(missing)} (layer names are graded; use the banner's names)")
    if extra:
        raise _todo(cls, f"unexpected weights: {', '.join(extra)} (define exactly the layers of the banner)")
    bad = [f"{k} {tuple(have[k])} (expected {tuple(want[k])})" for k in want if have[k] != want[k]]
    if bad:
        raise _todo(cls, "wrong layer sizes: " + "; ".join(bad))


def _types(ctx, cls):
    top = _top(ctx.build(cls))
    for name, typ in EXPECTED_TYPES[cls].items():
        got = top.get(name)
        ok = got is not None and (typ in got["torch"] or (typ == "Attention" and got["type"] == "Attention"))
        if not ok:
            raise _todo(cls, f"self.{name} should be {'an nn.' if typ != 'Attention' else 'an '}{typ}, got "
                             f"{'nothing' if got is None else got['type']}")
    if "dropout" in top:
        s = top["dropout"]["settings"]
        if s.get("p") != CFG["dropout"]:
            raise _todo(cls, f"self.dropout should use p=self.dropout_p (cfg dropout {CFG['dropout']}), got "
                             f"p={s.get('p')}")
        if s.get("inplace"):
            raise _todo(cls, "self.dropout must not be in place (inplace=True would also change the h returned "
                             "to the next step)")
    return top


@test("DecoderWithRNN.__init__")
def test_rnn_init_constructs(ctx):
    _constructs(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.__init__")
def test_rnn_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "DecoderWithRNN")


@test("DecoderWithRNN.__init__")
def test_rnn_init_layer_types(ctx):
    s = _types(ctx, "DecoderWithRNN")["decode_step"]["settings"]
    if (s.get("input_size"), s.get("hidden_size")) != (CFG["embed_dim"], CFG["decoder_dim"]):
        raise _todo("DecoderWithRNN", "decode_step should be nn.LSTMCell(embed_dim, decoder_dim)")


@test("Attention.__init__")
def test_attention_init_layer_names_shapes(ctx):
    _names_shapes(ctx, "Attention")


@test("Attention.__init__")
def test_attention_init_layer_types(ctx):
    _types(ctx, "Attention")


@test("DecoderWithAttention.__init__")
def test_att_init_constructs(ctx):
    _constructs(ctx, "DecoderWithAttention")


@test("DecoderWithAttention.__init__")
def test_att_init_layer_names_shapes(ctx):
    # the attention's own weights are Attention.__init__'s business (its arguments: the next test)
    _names_shapes(ctx, "DecoderWithAttention", skip_prefix="attention.")


@test("DecoderWithAttention.__init__")
def test_att_init_layer_types(ctx):
    s = _types(ctx, "DecoderWithAttention")["decode_step"]["settings"]
    if s.get("input_size") != CFG["embed_dim"] + C:
        raise _todo("DecoderWithAttention", f"decode_step's input is [embedding ; gated context]: embed_dim + "
                                            f"encoder_dim = {CFG['embed_dim'] + C}, got {s.get('input_size')}")


@test("DecoderWithAttention.__init__")
def test_att_init_attention_arguments(ctx):
    calls = [c for c in ctx.build("DecoderWithAttention")["recorded"] if c.get("cls") == "Attention"]
    if len(calls) != 1:
        raise _todo("DecoderWithAttention", f"Attention(...) should be built once, was built {len(calls)} times")
    sig = inspect.signature(ctx.ref.Attention.__init__)
    try:
        bound = sig.bind(None, *calls[0]["args"], **calls[0]["kwargs"]).arguments
    except TypeError as e:
        raise _todo("DecoderWithAttention", f"Attention(...) arguments do not fit (encoder_dim, decoder_dim, "
                                            f"attention_dim): {e}") from None
    want = {"encoder_dim": C, "decoder_dim": CFG["decoder_dim"], "attention_dim": CFG["attention_dim"]}
    got = {k: bound.get(k) for k in want}
    if got != want:
        raise _todo("DecoderWithAttention", "self.attention should be Attention(encoder_dim, decoder_dim, "
                                            f"attention_dim) = Attention({C}, {CFG['decoder_dim']}, "
                                            f"{CFG['attention_dim']}), got Attention("
                                            + ", ".join(f"{k}={v}" for k, v in got.items()) + ")")
