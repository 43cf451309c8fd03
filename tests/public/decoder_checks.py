"""The public checks of both decoders: part ``rnn`` (DecoderWithRNN) and part ``attention-decoder``
(DecoderWithAttention). Loaded by ``public_checks.py``, which hands this file its helpers as ``pc``; see that file
for PASS/FAIL/WARN and the relative-error measure.

Each check looks for one kind of mistake and, where it can, names its cause: ``one_step`` in eval mode against the
reference (h and c swapped at the LSTMCell's input or output), with a batch of one, in train mode (where dropout
goes: the mask is reproduced from the seed, so the check compares your scores with ``fc(dropout(h))`` of the very h
you return), the gate by what it does (closed, the image must not reach the LSTM); ``forward`` against one_step
run by hand, rows past a caption's end, padding, each caption alone, and on another device than the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

pc = None  # public_checks' helpers: set by public_checks.py when it loads this file

DEVICE_HINT = "create tensors on encoder_out's device (device=encoder_out.device, or encoder_out.new_zeros(...))"
RANDOM_IN_EVAL = ("in eval mode {} gives different numbers on every call: dropout must be off in eval mode (use "
                  "self.dropout(h), or F.dropout(h, self.dropout_p, self.training))")


def _todo(part, method):
    return f"{pc.PARTS[part]}.{method}"


def _ref(part):
    return pc.reference()[pc.key(part)]


def _types(part):
    common = {"embedding": nn.Embedding, "decode_step": nn.LSTMCell, "fc": nn.Linear, "dropout": nn.Dropout}
    if part == "rnn":
        return {**common, "init": nn.Linear, "bn": nn.BatchNorm1d}
    return {"attention": pc.models().Attention, **common, "init_h": nn.Linear, "init_c": nn.Linear,
            "f_beta": nn.Linear}


def _differs(a, b):
    return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and pc.rel_error(a, b) > pc.REL_TOL


def _is_todo(e):
    return isinstance(e, NotImplementedError) and str(e).startswith("TODO")


# ------------------------------------------------------------------------------------------------ running
def _one_step(part, dec, inp):
    """one_step on clones of ``inp`` (an in-place change never reaches the stored inputs) -> dict by name."""
    names = ["preds", "h", "c"] if part == "rnn" else ["preds", "alpha", "h", "c"]
    args = [inp["embeddings"], inp["h"], inp["c"]]
    if part != "rnn":
        args.insert(1, inp["encoder_out"])
    out = dec.one_step(*[a.clone() for a in args])
    return dict(zip(names, pc.unpack(_todo(part, "one_step"), out, len(names), names)))


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
    if any(_differs(b[k], a[k]) for k in a):
        pc.fail(_todo(part, "one_step"), RANDOM_IN_EVAL.format("one_step"))
    return a


def _forward(part, dec, inp):
    names = ["predictions", "encoded_captions", "decode_lengths", "sort_ind"]
    if part == "attention-decoder":
        names.insert(3, "alphas")
    out = dec(inp["encoder_out"], inp["captions"], inp["lengths"])
    return dict(zip(names, pc.unpack(_todo(part, "forward"), out, len(names), names)))


def _forward_eval(part, dec, inp):
    """forward in eval mode without gradients, twice with other seeds: eval mode must not be random."""
    with torch.no_grad():
        torch.manual_seed(1)
        a = _forward(part, dec, inp)
        torch.manual_seed(2)
        b = _forward(part, dec, inp)
    if _differs(b["predictions"], a["predictions"]):
        pc.fail(_todo(part, "forward"), RANDOM_IN_EVAL.format("forward"))
    return a


def _by_hand(part, dec, inp):
    """What forward must compute, written with the module's own init_hidden_state and one_step."""
    c_dim = pc.cfg()[1]
    b = inp["encoder_out"].size(0)
    lengths, order = inp["lengths"].reshape(-1).sort(descending=True)
    enc = inp["encoder_out"].reshape(b, -1, c_dim)[order]
    emb = dec.embedding(inp["captions"][order])
    h, c = dec.init_hidden_state(enc)
    dl = (lengths - 1).tolist()
    preds = enc.new_zeros(b, max(dl), pc.cfg()[0]["vocab_size"])
    alphas = enc.new_zeros(b, max(dl), enc.size(1))
    for t in range(max(dl)):
        n = sum(1 for x in dl if x > t)
        if part == "rnn":
            p, h, c = dec.one_step(emb[:n, t], h[:n], c[:n])
        else:
            p, a, h, c = dec.one_step(emb[:n, t], enc[:n], h[:n], c[:n])
            alphas[:n, t] = a
        preds[:n, t] = p
    return preds, alphas, dl


# ------------------------------------------------------------------------------------------------ __init__
def layers(part):
    init = _todo(part, "__init__")
    dec = pc.build(part, load=False)
    pc.load_weights(dec, _ref(part)["state_dict"], init)
    pc.layer_types(dec, _types(part), init)
    p = pc.cfg()[0]["dropout"]
    if dec.dropout.p != p:
        pc.fail(init, f"self.dropout has p={dec.dropout.p}, expected self.dropout_p (here {p}): pass "
                      f"p=self.dropout_p" + (" (nn.Dropout() alone uses PyTorch's default, 0.5)"
                                             if dec.dropout.p == 0.5 else ""))
    if dec.dropout.inplace:
        pc.fail(init, "self.dropout has inplace=True: in train mode it would overwrite (in place) the h that "
                      "one_step returns; leave inplace out")
    return "layer names, types and shapes match the banner; dropout p = self.dropout_p"


# ------------------------------------------------------------------------------------------------ one_step
def one_step_shapes(part):
    step, dec, inp = _todo(part, "one_step"), pc.build(part), _ref(part)["one_step_in"]
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
    step, dec, ref = _todo(part, "one_step"), pc.build(part), _ref(part)
    inp, want = ref["one_step_in"], ref["one_step_out"]
    out = _eval_step(part, dec, inp)
    for k in want:
        pc.shape(step, k, out[k], want[k].shape)
    if not all(pc.close(out[k], want[k]) for k in want):
        if pc.close(out["h"], want["c"]) and pc.close(out["c"], want["h"]):
            pc.fail(step, "h and c are swapped at the LSTMCell's output: nn.LSTMCell returns (h, c), in that order")
        swapped = _with_hx_swapped(part, dec, inp)
        if swapped is not None and all(pc.close(swapped[k], want[k]) for k in want):
            pc.fail(step, "h and c are swapped at the LSTMCell's input: nn.LSTMCell takes (input, (h, c)), in that "
                          "order")
        if part == "attention-decoder" and not pc.close(out["alpha"], want["alpha"]):
            pc.fail(step, "alpha differs from the reference: take z, alpha from self.attention(encoder_out, h) with "
                          "the h one_step was given (and check `attention` first)")
    errs = [pc.compare(step, k, out[k], want[k], "With the same weights and inputs (eval mode) your one_step "
                                                  "should give the reference's numbers") for k in want]
    return f"matches the reference (max relative error {max(errs):.1e})"


def one_step_batch_of_one(part):
    step, dec, inp = _todo(part, "one_step"), pc.build(part), _ref(part)["one_step_in"]
    full = _eval_step(part, dec, inp)
    one = pc.batch_of_one(step, lambda: _seeded_step(part, dec, {k: v[:1] for k, v in inp.items()}, 1))
    for k, v in full.items():
        pc.shape(step, k, one[k], (1, *v.shape[1:]), n1=True)
        if _differs(one[k], v[:1]):
            pc.fail(step, f"with a batch of one (N=1) {k} differs from row 0 of the same inputs run as a batch of "
                          f"{v.size(0)}: rows must not depend on each other or on N")
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
        other = [(dec.fc(h), "no dropout in train mode: preds = fc(dropout(h)), with self.dropout"),
                 (_masks(seed, p, preds.shape)[0] * dec.fc(h), "dropout is applied to the scores (after fc), not "
                                                               "to h: preds = fc(dropout(h))"),
                 (dec.fc(h * m1 * m2), "dropout is applied twice: apply it once, to h, right before fc"),
                 (dec.fc(h * _masks(seed, 0.5, h.shape)[0]), f"dropout uses p=0.5, not self.dropout_p (here {p})")]
    for want, msg in other:
        if pc.close(preds, want):
            return msg
    return ("in train mode preds are not fc(dropout(h)) of the h one_step returns: apply dropout with "
            "p=self.dropout_p once, to h, right before fc")


def one_step_dropout_train(part):
    step, dec, ref = _todo(part, "one_step"), pc.build(part), _ref(part)
    inp, seed, p = ref["one_step_in"], pc.reference()["meta"]["train_seed"], pc.cfg()[0]["dropout"]
    ev = _eval_step(part, dec, inp)
    tr = _seeded_step(part, dec, inp, seed, train=True)
    (mask,) = _masks(seed, p, inp["h"].shape)
    for k in ("h", "c"):
        pc.shape(step, f"{k} (train mode)", tr[k], ev[k].shape)
        if _differs(tr[k], ev[k]):
            if pc.close(tr[k], ev[k] * mask):
                pc.fail(step, f"in train mode dropout changes the {k} that one_step returns, in place: return the "
                              f"LSTM's {k} untouched (no inplace=True in nn.Dropout or F.dropout)")
            pc.fail(step, f"in train mode the {k} that one_step returns differs from eval mode: dropout goes on h "
                          f"only, right before fc — not on the embeddings, the context or the LSTM's input")
    pc.shape(step, "preds (train mode)", tr["preds"], ev["preds"].shape)
    verdict = _dropout_verdict(dec, tr["preds"], tr["h"], seed, p)
    if verdict:
        pc.fail(step, verdict)
    if all(pc.close(ev[k], v) for k, v in ref["one_step_out"].items()):
        err = pc.compare(step, "preds (train mode)", tr["preds"], ref["one_step_train_out"]["preds"])
        return f"train mode: dropout on h right before fc; matches the reference (relative error {err:.1e})"
    return "train mode: dropout on h right before fc (the eval-mode values are one_step_values' business)"


def gate_closes_context(part):
    step, dec, inp = _todo(part, "one_step"), pc.build(part), _ref(part)["one_step_in"]
    g = torch.Generator().manual_seed(7)
    other = dict(inp, encoder_out=torch.randn(inp["encoder_out"].shape, generator=g) * 2)
    names = ("preds", "h", "c")
    with torch.no_grad():
        dec.f_beta.weight.zero_()
        dec.f_beta.bias.fill_(-30.0)  # sigmoid(-30) ~ 1e-13: a closed gate
    a, b = _eval_step(part, dec, inp), _eval_step(part, dec, other)
    if any(_differs(b[k], a[k]) for k in names):
        pc.fail(step, "with the gate closed (sigmoid(f_beta(h)) ~ 0) the image still changes preds, h, c: the gate "
                      "is missing — multiply the context z by gate = sigmoid(f_beta(h)) before the LSTM")
    with torch.no_grad():
        dec.f_beta.bias.fill_(30.0)  # an open gate
    a, b = _eval_step(part, dec, inp), _eval_step(part, dec, other)
    if not any(_differs(b[k], a[k]) for k in ("h", "c")):
        pc.fail(step, "with the gate open (sigmoid(f_beta(h)) ~ 1) the image does not reach h: the LSTM's input is "
                      "[embeddings ; gate * z]")
    return "the gate sigmoid(f_beta(h)) scales the context that reaches the LSTM"


# ------------------------------------------------------------------------------------------------ forward
def forward_shapes(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    b = inp["captions"].size(0)
    dl = sorted((inp["lengths"] - 1).tolist(), reverse=True)
    pc.shape(fwd, "predictions", out["predictions"], (b, max(dl), pc.cfg()[0]["vocab_size"]))
    if "alphas" in out:
        p = inp["encoder_out"].reshape(b, -1, pc.cfg()[1]).size(1)
        pc.shape(fwd, "alphas", out["alphas"], (b, max(dl), p))
    if list(out["decode_lengths"]) != dl:
        pc.fail(fwd, f"decode_lengths should be {dl} (caption lengths - 1, longest first), got "
                     f"{list(out['decode_lengths'])}")
    return "shapes of predictions" + (", alphas" if "alphas" in out else "") + " and decode_lengths"


def forward_rows_past_end_are_zero(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    for i, d in enumerate(out["decode_lengths"]):
        for name in ("predictions", "alphas"):
            if name in out and out[name][i, d:].numel() and out[name][i, d:].abs().max().item() != 0:
                pc.fail(fwd, f"{name}[{i}, {d}:] should stay 0 (caption {i} has decode length {d}): rows past a "
                             f"caption's end are not zero — store only the captions still longer than t at step t")
    return "rows past each caption's end stay 0"


def forward_equals_one_step_by_hand(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    with torch.no_grad():
        preds, alphas, dl = _by_hand(part, dec, inp)
    wanted = {"predictions": preds, "alphas": alphas} if "alphas" in out else {"predictions": preds}
    for name, want in wanted.items():
        pc.shape(fwd, name, out[name], want.shape)
    for t in range(preds.size(1)):
        n = sum(1 for d in dl if d > t)
        for name, want in wanted.items():
            if _differs(out[name][:n, t], want[:n, t]):
                if t == 0:
                    pc.fail(fwd, f"{name} at step 0 differ from one_step run by hand: start from h, c = "
                                 f"self.init_hidden_state(encoder_out) (given above the TODO) and embeddings[:, 0]")
                pc.fail(fwd, f"{name} at step {t} differ from one_step run by hand (the steps before agree): feed "
                             f"embeddings[:num, t, :] and the h, c that the previous one_step returned")
    return "forward equals running one_step by hand from init_hidden_state"


def padding_does_not_matter(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    caps = inp["captions"].clone()
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate(inp["lengths"].tolist()):
        caps[i, n:] = torch.randint(1, pc.cfg()[0]["vocab_size"], (caps.size(1) - n,), generator=g)
    a = _forward_eval(part, dec, inp)
    b = _forward_eval(part, dec, dict(inp, captions=caps))
    for name in ("predictions", "alphas"):
        if name in a and _differs(b[name], a[name]):
            pc.fail(fwd, f"{name} depend on padding: changing the words after a caption's <end> changed them; "
                         f"stop each caption at its decode length (shrinking batch)")
    return "padding never influences the predictions"


def _forward_shrinking_to_one(part, dec, inp):
    """forward on the reference batch, which shrinks to one caption; a failure that a batch never shrinking to one
    does not have is reported as a batch-of-one failure."""
    try:
        return _forward_eval(part, dec, inp)
    except pc.CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - student code
        if _is_todo(e):
            raise
        t = inp["captions"].size(1)
        try:
            _forward_eval(part, dec, dict(inp, lengths=torch.tensor([t, t, t - 2, t - 2])))
        except Exception:  # noqa: BLE001 - it fails anyway: report the first failure as it is
            raise e from None
        pc.fail(_todo(part, "forward"), f"fails once one caption is left in the batch (num=1, a batch of one): "
                                        f"{pc.describe(e)}{pc.SQUEEZE_HINT}")


def forward_batch_of_one(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    full = _forward_shrinking_to_one(part, dec, inp)
    for row, i in enumerate(torch.as_tensor(full["sort_ind"]).tolist()):
        alone = {k: v[i:i + 1] for k, v in inp.items()}
        one = pc.batch_of_one(fwd, lambda: _forward_eval(part, dec, alone))
        d = full["decode_lengths"][row]
        pc.shape(fwd, "predictions", one["predictions"], (1, d, pc.cfg()[0]["vocab_size"]), n1=True)
        if _differs(full["predictions"][row, :d], one["predictions"][0, :d]):
            pc.fail(fwd, f"caption {i} decoded alone (a batch of one) gives other predictions than in the batch: "
                         f"the other captions of the batch must not influence it")
    return "each caption decoded alone (a batch of one) gives its predictions in the batch"


def forward_on_input_device(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    meta = {"encoder_out": inp["encoder_out"].to("meta"), "captions": inp["captions"].to("meta"),
            "lengths": inp["lengths"]}  # the given code calls .tolist() on the lengths
    try:
        with torch.no_grad():
            out = _forward(part, dec.to("meta"), meta)
    except pc.CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - student code
        if _is_todo(e):
            raise
        text = str(e)
        if any(s in text for s in ("expected device", "same device", "two devices")):
            pc.fail(fwd, f"with encoder_out on another device than the CPU it mixes devices ({pc.describe(e)}): "
                         f"{DEVICE_HINT}")
        if "copy out of meta" in text:
            return pc.warn(fwd, f"with encoder_out on another device than the CPU it copies into a CPU tensor "
                                f"({pc.describe(e)}): {DEVICE_HINT}")
        _forward_eval(part, pc.build(part), inp)  # fails on the CPU too: report that failure as it is
        return f"not checked: forward does not run on PyTorch's data-less 'meta' device ({pc.describe(e)})"
    for name in ("predictions", "alphas"):
        if name in out and torch.is_tensor(out[name]) and out[name].device.type != "meta":
            pc.fail(fwd, f"{name} is on the {out[name].device.type} device, not on encoder_out's: {DEVICE_HINT}")
    return "runs with the module and encoder_out on another device (PyTorch's data-less 'meta' device)"


def alphas_sum_to_one(part):
    fwd, dec, inp = _todo(part, "forward"), pc.build(part), _ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    for i, d in enumerate(out["decode_lengths"]):
        s = out["alphas"][i, :d].sum(dim=-1)
        if (s - 1).abs().max().item() > 1e-4:
            pc.fail(fwd, f"alphas[{i}, :{d}] do not sum to 1 over the regions (sums {s.tolist()[:4]}…)")
    return "alphas sum to 1 over regions at every real step"


def forward_values(part):
    fwd, dec, ref = _todo(part, "forward"), pc.build(part), _ref(part)
    out = _forward_eval(part, dec, ref["forward_in"])
    want = ref["forward_out"]
    if not torch.equal(torch.as_tensor(out["sort_ind"]).long(), want["sort_ind"]):
        pc.fail(fwd, f"sort_ind {torch.as_tensor(out['sort_ind']).tolist()} should be {want['sort_ind'].tolist()}")
    if not torch.equal(out["encoded_captions"], want["encoded_captions"]):
        pc.fail(fwd, "encoded_captions should be returned sorted by decreasing caption length")
    errs = [pc.compare(fwd, "predictions", out["predictions"], want["predictions"])]
    if "alphas" in want:
        errs.append(pc.compare(fwd, "alphas", out["alphas"], want["alphas"]))
    return f"matches the reference (max relative error {max(errs):.1e})"


def checks(part):
    """(name, function of part) of the checks of a decoder part, in the order students meet them."""
    fns = [layers, one_step_shapes, one_step_values, one_step_batch_of_one, one_step_dropout_train]
    if part == "attention-decoder":
        fns.append(gate_closes_context)
    fns += [forward_shapes, forward_rows_past_end_are_zero, forward_equals_one_step_by_hand, padding_does_not_matter,
            forward_batch_of_one, forward_on_input_device]
    if part == "attention-decoder":
        fns.append(alphas_sum_to_one)
    fns.append(forward_values)
    return [(fn.__name__, fn) for fn in fns]
