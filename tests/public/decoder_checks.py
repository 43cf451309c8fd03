"""The public checks of ``__init__`` and ``one_step`` in both decoders: part ``rnn`` (DecoderWithRNN) and part
``attention-decoder`` (DecoderWithAttention); ``forward_checks.py`` has those of ``forward``. Loaded by
``public_checks.py``, which hands this file its helpers as ``pc``; see that file for PASS/FAIL/WARN and the
relative-error measure.

Each check looks for one kind of mistake and, where it can, names its cause: the layers (names, shapes, types,
dropout p), ``init_hidden_state`` on its own (from the module's own layers), ``one_step`` in eval mode against the reference (h and c swapped at the LSTMCell's input or output), with
a batch of one, in train mode (where dropout goes: the mask is reproduced from the seed, so the check compares your
scores with ``fc(dropout(h))`` of the very h you return), and the gate by what it does (closed, the image must not
reach the LSTM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

pc = None  # public_checks' helpers: set by public_checks.py when it loads this file


def _types(part):
    common = {"embedding": nn.Embedding, "decode_step": nn.LSTMCell, "fc": nn.Linear, "dropout": nn.Dropout}
    if part == "rnn":
        return {**common, "init": nn.Linear, "bn": nn.BatchNorm1d}
    return {"attention": pc.models().Attention, **common, "init_h": nn.Linear, "init_c": nn.Linear, "f_beta": nn.Linear}


# ------------------------------------------------------------------------------------------------ running
def _one_step(part, dec, inp):
    """one_step on clones of ``inp`` (an in-place change never reaches the stored inputs) -> dict by name."""
    names = ["preds", "h", "c"] if part == "rnn" else ["preds", "alpha", "h", "c"]
    args = [inp["embeddings"], inp["h"], inp["c"]]
    if part != "rnn":
        args.insert(1, inp["encoder_out"])
    out = dec.one_step(*[a.clone() for a in args])
    return dict(zip(names, pc.unpack(pc.todo(part, "one_step"), out, len(names), names)))


def _seeded_step(part, dec, inp, seed, train=False):
    """one_step without gradients right after torch.manual_seed(seed), in train or eval mode."""
    dec.train(train)
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            return _one_step(part, dec, inp)
    finally:
        dec.eval()


def _eval_step(part, dec, inp):
    """one_step in eval mode, twice with other seeds: eval mode must not be random."""
    a, b = _seeded_step(part, dec, inp, 1), _seeded_step(part, dec, inp, 2)
    if any(pc.differs(b[k], a[k]) for k in a):
        pc.fail(pc.todo(part, "one_step"), pc.RANDOM_IN_EVAL.format("one_step"))
    return a


# ------------------------------------------------------------------------------------------------ __init__
def layers(part):
    init = pc.todo(part, "__init__")
    dec = pc.build(part, load=False)
    pc.load_weights(dec, pc.ref(part)["state_dict"], init)
    pc.layer_types(dec, _types(part), init)
    p = pc.cfg()[0]["dropout"]
    if dec.dropout.p != p:
        pc.fail(
            init,
            f"self.dropout has p={dec.dropout.p}, expected self.dropout_p (here {p}): pass "
            f"p=self.dropout_p" + (" (nn.Dropout() alone uses PyTorch's default, 0.5)" if dec.dropout.p == 0.5 else ""),
        )
    if dec.dropout.inplace:
        pc.fail(
            init,
            "self.dropout has inplace=True: in train mode it would overwrite (in place) the h that "
            "one_step returns; leave inplace out",
        )
    return "layer names, types and shapes match the banner; dropout p = self.dropout_p"


# ------------------------------------------------------------------------------------------------ init_hidden_state
def _init_state_from_own_layers(part, dec, feature):
    """(h, c) that init_hidden_state must give for ``feature`` (B, C), with the module's own layers."""
    if part == "rnn":
        zeros = feature.new_zeros(feature.size(0), dec.decoder_dim)
        return dec.decode_step(dec.bn(dec.init(feature)), (zeros, zeros))
    if getattr(dec, "init_state", "mean") == "learned":
        feature = torch.zeros_like(feature)
    return dec.init_h(feature), dec.init_c(feature)


def init_hidden_state(part):
    """init_hidden_state on its own: (h, c) from the mean over the P regions, through the module's own layers, for
    encoder_out given as (B, S, S, C) and as (B, P, C), so that a wrong mean is blamed here and not on forward."""
    name, dec = pc.todo(part, "init_hidden_state"), pc.build(part)
    enc = pc.ref(part)["forward_in"]["encoder_out"]  # (B, S, S, C)
    b, d = enc.size(0), pc.cfg()[0]["decoder_dim"]
    flat = enc.reshape(b, -1, enc.size(-1))  # (B, P, C)
    with torch.no_grad():
        runs = [(pc.unpack(name, dec.init_hidden_state(x.clone()), 2, ["h", "c"]), x) for x in (enc, flat)]
        try:
            want = _init_state_from_own_layers(part, dec, flat.mean(dim=1))
        except Exception:  # noqa: BLE001 - the layers do not run as the banner says: that FAIL comes first
            pc.blame_earlier(part, "layers")
            raise
        for got, given in runs:
            what = f"({', '.join('BSSC' if given.dim() == 4 else 'BPC')})"
            for k, g, w in zip("hc", got, want):
                if torch.is_tensor(g) and g.dim() == 2 and g.size(0) == flat.size(1) != b:
                    pc.fail(
                        name,
                        f"with encoder_out {what} of {b} images, {k} has shape {tuple(g.shape)}: one row per region, "
                        f"not per image — the mean is over the P regions (dim 1 of the (B, P, C) view), not over the "
                        f"batch (dim 0)",
                    )
                pc.shape(name, k, g, (b, d))
                if pc.differs(g, w):
                    pc.fail(
                        name,
                        f"with encoder_out {what}, {k} differs from what your own layers give for the mean over "
                        f"the P regions (relative error {pc.rel_error(g, w):.2e}): h, c come from the mean of "
                        f"encoder_out over its regions, (B, P, C) -> (B, C)",
                    )
    return "h, c come from the mean over the regions, for encoder_out (B, S, S, C) and (B, P, C)"


# ------------------------------------------------------------------------------------------------ one_step
def one_step_shapes(part):
    step, dec, inp = pc.todo(part, "one_step"), pc.build(part), pc.ref(part)["one_step_in"]
    with torch.no_grad():
        out = _one_step(part, dec, inp)
    n, c = inp["h"].size(0), pc.cfg()[0]
    pc.shape(step, "preds", out["preds"], (n, c["vocab_size"]))
    pc.shape(step, "h", out["h"], (n, c["decoder_dim"]))
    pc.shape(step, "c", out["c"], (n, c["decoder_dim"]))
    if "alpha" in out:
        pc.shape(step, "alpha", out["alpha"], (n, inp["encoder_out"].size(1)))
    return "shapes of " + ", ".join(out)


def _swap_hx(module, args, kwargs):
    """Forward pre-hook of an LSTMCell that swaps the (h, c) it is given."""
    if "hx" in kwargs and isinstance(kwargs["hx"], (tuple, list)) and len(kwargs["hx"]) == 2:
        return args, dict(kwargs, hx=(kwargs["hx"][1], kwargs["hx"][0]))
    if len(args) >= 2 and isinstance(args[1], (tuple, list)) and len(args[1]) == 2:
        return (args[0], (args[1][1], args[1][0]), *args[2:]), kwargs
    return None


def _with_hx_swapped(part, dec, inp):
    """one_step with (h, c) swapped at the LSTMCell's input; None when that cannot run."""
    if not isinstance(dec._modules.get("decode_step"), nn.Module):
        return None
    handle = dec.decode_step.register_forward_pre_hook(_swap_hx, with_kwargs=True)
    try:
        with torch.no_grad():
            return _one_step(part, dec, inp)
    except Exception:  # noqa: BLE001 - student code; only a diagnosis
        return None
    finally:
        handle.remove()


def one_step_values(part):
    step, dec, ref = pc.todo(part, "one_step"), pc.build(part), pc.ref(part)
    inp, want = ref["one_step_in"], ref["one_step_out"]
    out = _eval_step(part, dec, inp)
    for k in want:
        pc.shape(step, k, out[k], want[k].shape)
    if not all(pc.close(out[k], want[k]) for k in want):
        if pc.close(out["h"], want["c"]) and pc.close(out["c"], want["h"]):
            pc.fail(step, "h and c are swapped at the LSTMCell's output: nn.LSTMCell returns (h, c), in that order")
        swapped = _with_hx_swapped(part, dec, inp)
        if swapped is not None and all(pc.close(swapped[k], want[k]) for k in want):
            pc.fail(
                step, "h and c are swapped at the LSTMCell's input: nn.LSTMCell takes (input, (h, c)), in that order"
            )
        if part == "attention-decoder" and not pc.close(out["alpha"], want["alpha"]):
            pc.fail(
                step,
                "alpha differs from the reference: take z, alpha from self.attention(encoder_out, h) with "
                "the h one_step was given (and check `attention` first)",
            )
    hint = "With the same weights and inputs (eval mode) your one_step should give the reference's numbers" + (
        "; alpha matches, so look after the attention: the gate (see gate_closes_context), the LSTM's input "
        "[embeddings ; gate * z], fc"
        if part == "attention-decoder"
        else ""
    )
    errs = [pc.compare(step, k, out[k], want[k], hint) for k in want]
    return f"matches the reference (max relative error {max(errs):.1e})"


def one_step_batch_of_one(part):
    step, dec, inp = pc.todo(part, "one_step"), pc.build(part), pc.ref(part)["one_step_in"]
    full = _eval_step(part, dec, inp)
    one = pc.batch_of_one(step, lambda: _seeded_step(part, dec, {k: v[:1] for k, v in inp.items()}, 1))
    for k, v in full.items():
        pc.shape(step, k, one[k], (1, *v.shape[1:]), n1=True)
        if pc.differs(one[k], v[:1]):
            pc.fail(
                step,
                f"with a batch of one (N=1) {k} differs from row 0 of the same inputs run as a batch of "
                f"{v.size(0)}: rows must not depend on each other or on N",
            )
    return "a batch of one (N=1) gives row 0 of the batch"


def _masks(seed, p, shape, count=1):
    """The dropout masks (scaled by 1/(1-p)) that ``count`` dropouts on ``shape`` draw right after manual_seed."""
    torch.manual_seed(seed)
    return [F.dropout(torch.ones(shape), p, True) for _ in range(count)]


def _dropout_verdict(dec, preds, h, seed, p):
    """None when preds == fc(dropout(h)) with the seed's mask; else what the dropout does instead."""
    with torch.no_grad():
        m1, m2 = _masks(seed, p, h.shape, 2)
        if pc.close(preds, dec.fc(h * m1)):
            return None
        other = [
            (dec.fc(h), "no dropout in train mode: preds = fc(dropout(h)), with self.dropout"),
            (
                _masks(seed, p, preds.shape)[0] * dec.fc(h),
                "dropout is applied to the scores (after fc), not to h: preds = fc(dropout(h))",
            ),
            (dec.fc(h * m1 * m2), "dropout is applied twice: apply it once, to h, right before fc"),
            (dec.fc(h * _masks(seed, 0.5, h.shape)[0]), f"dropout uses p=0.5, not self.dropout_p (here {p})"),
        ]
    for want, msg in other:
        if pc.close(preds, want):
            return msg
    return (
        "in train mode preds are not fc(dropout(h)) of the h one_step returns: apply dropout with "
        "p=self.dropout_p once, to h, right before fc"
    )


def one_step_dropout_train(part):
    step, dec, ref = pc.todo(part, "one_step"), pc.build(part), pc.ref(part)
    inp, seed, p = ref["one_step_in"], pc.reference()["meta"]["train_seed"], pc.cfg()[0]["dropout"]
    ev = _eval_step(part, dec, inp)
    tr = _seeded_step(part, dec, inp, seed, train=True)
    (mask,) = _masks(seed, p, inp["h"].shape)
    for k in ("h", "c"):
        pc.shape(step, f"{k} (train mode)", tr[k], ev[k].shape)
        if pc.differs(tr[k], ev[k]):
            if pc.close(tr[k], ev[k] * mask):
                pc.fail(
                    step,
                    f"in train mode the {k} that one_step returns has dropout applied ({k} = dropout({k}), "
                    f"or inplace=True): return the LSTM's {k} untouched and give dropout(h) to fc only",
                )
            pc.fail(
                step,
                f"in train mode the {k} that one_step returns differs from eval mode: dropout goes on h "
                f"only, right before fc — not on the embeddings, the context or the LSTM's input",
            )
    pc.shape(step, "preds (train mode)", tr["preds"], ev["preds"].shape)
    verdict = _dropout_verdict(dec, tr["preds"], tr["h"], seed, p)
    if verdict:
        pc.fail(step, verdict)
    if all(pc.close(ev[k], v) for k, v in ref["one_step_out"].items()):
        err = pc.compare(step, "preds (train mode)", tr["preds"], ref["one_step_train_out"]["preds"])
        return f"train mode: dropout on h right before fc; matches the reference (relative error {err:.1e})"
    return "train mode: dropout on h right before fc (the eval-mode values are one_step_values' business)"


def gate_closes_context(part):
    step, dec, inp = pc.todo(part, "one_step"), pc.build(part), pc.ref(part)["one_step_in"]
    g = torch.Generator().manual_seed(7)
    other = dict(inp, encoder_out=torch.randn(inp["encoder_out"].shape, generator=g) * 2)
    names = ("preds", "h", "c")
    with torch.no_grad():
        dec.f_beta.weight.zero_()
        dec.f_beta.bias.fill_(-30.0)  # sigmoid(-30) ~ 1e-13: a closed gate
    a, b = _eval_step(part, dec, inp), _eval_step(part, dec, other)
    if any(pc.differs(b[k], a[k]) for k in names):
        pc.fail(
            step,
            "with the gate closed (sigmoid(f_beta(h)) ~ 0) the image still changes preds, h, c: the gate "
            "is missing — multiply the context z by gate = sigmoid(f_beta(h)) before the LSTM",
        )
    with torch.no_grad():
        dec.f_beta.bias.fill_(30.0)  # an open gate
    a, b = _eval_step(part, dec, inp), _eval_step(part, dec, other)
    if not any(pc.differs(b[k], a[k]) for k in ("h", "c")):
        pc.fail(
            step,
            "with the gate open (sigmoid(f_beta(h)) ~ 1) the image does not reach h: the LSTM's input is "
            "[embeddings ; gate * z]",
        )
    return "the gate sigmoid(f_beta(h)) scales the context that reaches the LSTM"


def checks(part):
    """(name, function of part) of the __init__ and one_step checks of a decoder part, in the order students meet
    them."""
    fns = [layers, init_hidden_state, one_step_shapes, one_step_values, one_step_batch_of_one, one_step_dropout_train]
    if part == "attention-decoder":
        fns.append(gate_closes_context)
    return [(fn.__name__, fn) for fn in fns]
