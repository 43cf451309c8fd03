"""The public checks of ``forward`` in both decoders: part ``rnn`` (DecoderWithRNN) and part ``attention-decoder``
(DecoderWithAttention). Loaded by ``public_checks.py``, which hands this file its helpers as ``pc``.

``forward`` is checked in eval mode (and twice, with other seeds: eval mode must not be random) against one_step run
by hand from init_hidden_state, for rows past a caption's end, padding, each caption decoded alone (a batch of one),
and with the module and encoder_out on another device than the CPU (PyTorch's data-less ``meta`` device: a tensor
created on the CPU then meets one on ``meta``).
"""

from __future__ import annotations

import os
import re
import traceback

import torch

pc = None  # public_checks' helpers: set by public_checks.py when it loads this file

DEVICE_HINT = "create tensors on encoder_out's device (device=encoder_out.device, or encoder_out.new_zeros(...))"


def _forward(part, dec, inp):
    names = ["predictions", "encoded_captions", "decode_lengths", "sort_ind"]
    if part == "attention-decoder":
        names.insert(3, "alphas")
    out = dec(inp["encoder_out"], inp["captions"], inp["lengths"])
    return dict(zip(names, pc.unpack(pc.todo(part, "forward"), out, len(names), names)))


def _forward_eval(part, dec, inp):
    """forward in eval mode without gradients, twice with other seeds: eval mode must not be random."""
    with torch.no_grad():
        torch.manual_seed(1)
        a = _forward(part, dec, inp)
        torch.manual_seed(2)
        b = _forward(part, dec, inp)
    if pc.differs(b["predictions"], a["predictions"]):
        pc.fail(pc.todo(part, "forward"), pc.RANDOM_IN_EVAL.format("forward"))
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


def _first_bad_step(got, want, lengths):
    """(row, step) of the first step (smallest t, then row) where ``got`` and ``want`` (B, T, ...) differ among the
    real steps (t < lengths[row]), or None."""
    for t in range(max(lengths, default=0)):
        for i, d in enumerate(lengths):
            if t < d and pc.differs(got[i, t], want[i, t]):
                return i, t
    return None


def _at(name, i, t):
    return f"{name}[{i}, {t}] (row {i}, step {t})"


def _never_stored(got, i, t):
    """Why a step differs when it holds only zeros: forward never wrote it."""
    if got[i, t].abs().max().item() != 0:
        return ""
    return (
        f" — it is all zeros: step {t} was never stored; the loop must run over every t in range(max(decode_lengths))"
    )


def forward_shapes(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    b = inp["captions"].size(0)
    dl = sorted((inp["lengths"] - 1).tolist(), reverse=True)
    pc.shape(fwd, "predictions", out["predictions"], (b, max(dl), pc.cfg()[0]["vocab_size"]))
    if "alphas" in out:
        p = inp["encoder_out"].reshape(b, -1, pc.cfg()[1]).size(1)
        pc.shape(fwd, "alphas", out["alphas"], (b, max(dl), p))
    if list(out["decode_lengths"]) != dl:
        pc.fail(
            fwd,
            f"decode_lengths should be {dl} (caption lengths - 1, longest first), got {list(out['decode_lengths'])}",
        )
    return "shapes of predictions" + (", alphas" if "alphas" in out else "") + " and decode_lengths"


def forward_rows_past_end_are_zero(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    for name in ("predictions", "alphas"):
        if name not in out:
            continue
        # the first step past some caption's end that holds values
        bad = [(t, i) for i, d in enumerate(out["decode_lengths"]) for t in range(d, out[name].size(1))]
        bad = sorted((t, i) for t, i in bad if out[name][i, t].abs().max().item() != 0)
        if bad:
            t, i = bad[0]
            pc.fail(
                fwd,
                f"rows past a caption's end are not zero: {_at(name, i, t)} holds values (max |x| "
                f"{out[name][i, t].abs().max().item():.3g}), but row {i} has decode length "
                f"{out['decode_lengths'][i]} — store only the captions still longer than t at step t",
            )
    return "rows past each caption's end stay 0"


def forward_equals_one_step_by_hand(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    with torch.no_grad():
        preds, alphas, dl = _by_hand(part, dec, inp)
    wanted = {"predictions": preds, "alphas": alphas} if "alphas" in out else {"predictions": preds}
    for name, want in wanted.items():
        pc.shape(fwd, name, out[name], want.shape)
    bad = {name: _first_bad_step(out[name], want, dl) for name, want in wanted.items()}
    bad = {name: at for name, at in bad.items() if at is not None}
    if bad:
        name, (i, t) = min(bad.items(), key=lambda kv: kv[1][::-1])
        got, want = out[name][i, t], wanted[name][i, t]
        what = (
            f"{name} at step {t} differ from one_step run by hand, first in row {i} ({name}[{i}, {t}]: relative "
            f"error {pc.rel_error(got, want):.2e}" + ("" if t == 0 else f"; steps 0 to {t - 1} agree") + ")"
        )
        if t == 0 and got.abs().max().item() != 0:
            pc.fail(
                fwd,
                f"{what}: start from h, c = self.init_hidden_state(encoder_out) (given above the TODO) and "
                f"embeddings[:, 0]",
            )
        pc.fail(
            fwd,
            what
            + (
                _never_stored(out[name], i, t)
                or ": feed embeddings[:num, t, :] and the h, c that the previous one_step returned"
            ),
        )
    return "forward equals running one_step by hand from init_hidden_state"


def padding_does_not_matter(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    caps = inp["captions"].clone()
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate(inp["lengths"].tolist()):
        caps[i, n:] = torch.randint(1, pc.cfg()[0]["vocab_size"], (caps.size(1) - n,), generator=g)
    a = _forward_eval(part, dec, inp)
    b = _forward_eval(part, dec, dict(inp, captions=caps))
    for name in ("predictions", "alphas"):
        if name in a and pc.differs(b[name], a[name]):
            at = _first_bad_step(b[name], a[name], [b[name].size(1)] * b[name].size(0))
            pc.fail(
                fwd,
                f"{name} depend on padding: changing the words after a caption's <end> changed them, first "
                f"{_at(name, *at)}; stop each caption at its decode length (shrinking batch)",
            )
    return "padding never influences the predictions"


def _forward_shrinking_to_one(part, dec, inp):
    """forward on the reference batch, which shrinks to one caption; a failure that a batch never shrinking to one
    does not have is reported as a batch-of-one failure."""
    try:
        return _forward_eval(part, dec, inp)
    except pc.CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - student code
        if pc.is_todo(e):
            raise
        t = inp["captions"].size(1)
        try:
            _forward_eval(part, dec, dict(inp, lengths=torch.tensor([t, t, t - 2, t - 2])))
        except Exception:  # noqa: BLE001 - it fails anyway: report the first failure as it is
            raise e from None
        pc.fail(
            pc.todo(part, "forward"),
            f"fails once one caption is left in the batch (num=1, a batch of one): {pc.describe(e)}{pc.SQUEEZE_HINT}",
        )


def forward_batch_of_one(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    full = _forward_shrinking_to_one(part, dec, inp)
    for row, i in enumerate(torch.as_tensor(full["sort_ind"]).tolist()):
        alone = {k: v[i : i + 1] for k, v in inp.items()}
        one = pc.batch_of_one(fwd, lambda: _forward_eval(part, dec, alone))
        d = full["decode_lengths"][row]
        pc.shape(fwd, "predictions", one["predictions"], (1, d, pc.cfg()[0]["vocab_size"]), n1=True)
        if pc.differs(full["predictions"][row, :d], one["predictions"][0, :d]):
            pc.blame_earlier(part, "init_hidden_state", "one_step_batch_of_one", "forward_equals_one_step_by_hand")
            _, t = _first_bad_step(full["predictions"][row : row + 1], one["predictions"], [d])
            pc.fail(
                fwd,
                f"caption {i} decoded alone (a batch of one) gives other predictions than in the batch (row "
                f"{row}), first at step {t} (relative error "
                f"{pc.rel_error(one['predictions'][0, t], full['predictions'][row, t]):.2e}): the other captions "
                f"of the batch must not influence it",
            )
    return "each caption decoded alone (a batch of one) gives its predictions in the batch"


def _reads_data(e):
    """The line of models.py that raised reads a tensor's values on purpose (.cpu(), .tolist(), …): fine on a GPU."""
    frames = [fs for fs in traceback.extract_tb(e.__traceback__) if os.path.basename(fs.filename) == "models.py"]
    return bool(frames) and re.search(r"\.(cpu|tolist|item|numpy)\(", frames[-1].line or "") is not None


def forward_on_input_device(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    meta = {
        "encoder_out": inp["encoder_out"].to("meta"),
        "captions": inp["captions"].to("meta"),
        "lengths": inp["lengths"],
    }  # the given code calls .tolist() on the lengths
    try:
        with torch.no_grad():
            out = _forward(part, dec.to("meta"), meta)
    except pc.CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - student code
        if pc.is_todo(e):
            raise
        text = str(e)
        if any(s in text for s in ("expected device", "same device", "two devices")):
            pc.fail(
                fwd,
                f"with encoder_out on another device than the CPU it mixes devices ({pc.describe(e)}): {DEVICE_HINT}",
            )
        if "copy out of meta" in text and not _reads_data(e):
            return pc.warn(
                fwd,
                f"with encoder_out on another device than the CPU it copies into a CPU tensor "
                f"({pc.describe(e)}): {DEVICE_HINT}",
            )
        _forward_eval(part, pc.build(part), inp)  # fails on the CPU too: report that failure as it is
        return f"not checked: forward does not run on PyTorch's data-less 'meta' device ({pc.describe(e)})"
    for name in ("predictions", "alphas"):
        if name in out and torch.is_tensor(out[name]) and out[name].device.type != "meta":
            pc.fail(fwd, f"{name} is on the {out[name].device.type} device, not on encoder_out's: {DEVICE_HINT}")
    return "runs with the module and encoder_out on another device (PyTorch's data-less 'meta' device)"


def alphas_sum_to_one(part):
    fwd, dec, inp = pc.todo(part, "forward"), pc.build(part), pc.ref(part)["forward_in"]
    out = _forward_eval(part, dec, inp)
    sums = out["alphas"].sum(dim=-1)  # (B, T)
    dl = out["decode_lengths"]
    bad = sorted((t, i) for i, d in enumerate(dl) for t in range(d) if abs(sums[i, t].item() - 1) > 1e-4)
    if bad:
        pc.blame_earlier(part, "attention/alpha_sums_to_one", "forward_equals_one_step_by_hand")
        t, i = bad[0]
        pc.fail(
            fwd,
            f"{_at('alphas', i, t)} sums to {sums[i, t].item():.4g} over the regions, not 1"
            + ("" if t == 0 else f" (steps 0 to {t - 1} sum to 1)")
            + _never_stored(out["alphas"], i, t),
        )
    return "alphas sum to 1 over regions at every real step"


def forward_values(part):
    fwd, dec, ref = pc.todo(part, "forward"), pc.build(part), pc.ref(part)
    out = _forward_eval(part, dec, ref["forward_in"])
    want = ref["forward_out"]
    if not torch.equal(torch.as_tensor(out["sort_ind"]).long(), want["sort_ind"]):
        pc.fail(fwd, f"sort_ind {torch.as_tensor(out['sort_ind']).tolist()} should be {want['sort_ind'].tolist()}")
    if not torch.equal(out["encoded_captions"], want["encoded_captions"]):
        pc.fail(fwd, "encoded_captions should be returned sorted by decreasing caption length")
    errs = []
    for name in [n for n in ("predictions", "alphas") if n in want]:
        pc.shape(fwd, name, out[name], want[name].shape)
        if pc.differs(out[name], want[name]):
            pc.blame_earlier(part, "init_hidden_state", "one_step_values", "forward_equals_one_step_by_hand")
            at = _first_bad_step(out[name], want[name], out["decode_lengths"])
            pc.fail(
                fwd,
                f"{name} differs from the reference (relative error {pc.rel_error(out[name], want[name]):.2e} > "
                f"{pc.REL_TOL:g})"
                + (
                    f", first at {_at(name, *at)} (relative error "
                    f"{pc.rel_error(out[name][at], want[name][at]):.2e} there)"
                    if at
                    else " past the captions' ends only"
                ),
            )
        errs.append(pc.rel_error(out[name], want[name]))
    return f"matches the reference (max relative error {max(errs):.1e})"


def checks(part):
    """(name, function of part) of the forward checks of a decoder part, in the order students meet them."""
    fns = [
        forward_shapes,
        forward_rows_past_end_are_zero,
        forward_equals_one_step_by_hand,
        padding_does_not_matter,
        forward_batch_of_one,
        forward_on_input_device,
    ]
    if part == "attention-decoder":
        fns.append(alphas_sum_to_one)
    fns.append(forward_values)
    return [(fn.__name__, fn) for fn in fns]
