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
    for i, d in enumerate(out["decode_lengths"]):
        for name in ("predictions", "alphas"):
            if name in out and out[name][i, d:].numel() and out[name][i, d:].abs().max().item() != 0:
                pc.fail(
                    fwd,
                    f"{name}[{i}, {d}:] should stay 0 (caption {i} has decode length {d}): rows past a "
                    f"caption's end are not zero — store only the captions still longer than t at step t",
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
    for t in range(preds.size(1)):
        n = sum(1 for d in dl if d > t)
        for name, want in wanted.items():
            if pc.differs(out[name][:n, t], want[:n, t]):
                if t == 0:
                    pc.fail(
                        fwd,
                        f"{name} at step 0 differ from one_step run by hand: start from h, c = "
                        f"self.init_hidden_state(encoder_out) (given above the TODO) and embeddings[:, 0]",
                    )
                pc.fail(
                    fwd,
                    f"{name} at step {t} differ from one_step run by hand (the steps before agree): feed "
                    f"embeddings[:num, t, :] and the h, c that the previous one_step returned",
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
            pc.fail(
                fwd,
                f"{name} depend on padding: changing the words after a caption's <end> changed them; "
                f"stop each caption at its decode length (shrinking batch)",
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
            pc.fail(
                fwd,
                f"caption {i} decoded alone (a batch of one) gives other predictions than in the batch: "
                f"the other captions of the batch must not influence it",
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
    for i, d in enumerate(out["decode_lengths"]):
        s = out["alphas"][i, :d].sum(dim=-1)
        if (s - 1).abs().max().item() > 1e-4:
            pc.fail(fwd, f"alphas[{i}, :{d}] do not sum to 1 over the regions (sums {s.tolist()[:4]}…)")
    return "alphas sum to 1 over regions at every real step"


def forward_values(part):
    fwd, dec, ref = pc.todo(part, "forward"), pc.build(part), pc.ref(part)
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
