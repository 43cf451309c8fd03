"""Public checks of ``captioning/models.py`` — what ``python -m captioning check [PART]`` runs and what the pytest
files next to this one (``test_public_rnn.py``, ``test_public_attention.py``, ``test_public_attention_decoder.py``) run.

Parts: ``rnn`` (DecoderWithRNN), ``attention`` (Attention), ``attention-decoder`` (DecoderWithAttention).

Every failure message starts with the TODO to look at, then says which tensor, what was expected and what your
code gave.

Numbers are compared with ONE relative-error measure::

    rel_error(got, expected) = max |got - expected| / (max |expected| + 1e-8)      passes when <= REL_TOL = 1e-4

The expected values (``reference_values.pt``, made by ``make_reference_values.py`` from the reference solution)
were computed with fixed, seeded weights and inputs at tiny sizes (vocabulary 20, embedding 8, decoder 12,
attention 10, encoder channels 6, a 3×3 grid). The weights are stored with them as state dicts and loaded into
your modules *by layer name* — which is why the layer names in the TODO banners matter.
"""
from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path

import torch
from torch import nn

REL_TOL = 1e-4
REFERENCE_FILE = Path(__file__).with_name("reference_values.pt")
PARTS = {"rnn": "DecoderWithRNN", "attention": "Attention", "attention-decoder": "DecoderWithAttention"}

_CHECKS = []  # (part, name, function)


class CheckFailed(AssertionError):
    """A check that ran and found something to fix; the message says what."""


def rel_error(got, expected):
    """max |got - expected| / (max |expected| + 1e-8), as a float."""
    got, expected = got.detach().double(), expected.detach().double()
    return ((got - expected).abs().max() / (expected.abs().max() + 1e-8)).item()


def check(part):
    def deco(fn):
        _CHECKS.append((part, fn.__name__.removeprefix("check_"), fn))
        return fn

    return deco


def checks_of(part):
    """(name, function) of the checks of one part (for the pytest files)."""
    return [(name, fn) for p, name, fn in _CHECKS if p == part]


def run(part=None):
    """Run the checks of ``part`` (all when None). Returns [(part, name, ok, message)]."""
    out = []
    for p, name, fn in _CHECKS:
        if part is not None and p != part:
            continue
        try:
            msg = fn() or "ok"
            ok = True
        except CheckFailed as e:
            ok, msg = False, str(e)
        except Exception as e:  # noqa: BLE001 - student code: report anything it raises
            ok, msg = False, describe(e)
        out.append((p, name, ok, msg))
    return out


def describe(e):
    """One line for an exception raised by models.py: its message and where in models.py it came from."""
    where = ""
    for fs in reversed(traceback.extract_tb(e.__traceback__)):
        if os.path.basename(fs.filename) == "models.py":
            where = f" (models.py line {fs.lineno}, in {fs.name})"
            break
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, NotImplementedError) and text.startswith("TODO"):
        return f"{text} is not done yet{where}" if "layer" not in text else f"{text}{where}"
    return f"{type(e).__name__}: {text}{where}"


def fail(todo, msg):
    raise CheckFailed(f"TODO {todo}: {msg}")


# ------------------------------------------------------------------------------------------------------- setup
@functools.lru_cache(maxsize=1)
def reference():
    if not REFERENCE_FILE.is_file():
        raise CheckFailed(f"{REFERENCE_FILE} is missing: it comes with the kit (tests/public/); restore it")
    return torch.load(REFERENCE_FILE, map_location="cpu", weights_only=True)


def _models():
    import captioning.models as m

    return m


def _cfg():
    meta = reference()["meta"]
    return dict(meta["cfg"]), meta["encoder_dim"]


def _build(part, load=True):
    """The student's module of ``part`` with the reference weights loaded by layer name, in eval mode."""
    m, (cfg, enc_dim) = _models(), _cfg()
    cls = PARTS[part]
    torch.manual_seed(0)
    if part == "attention":
        mod = m.Attention(enc_dim, cfg["decoder_dim"], cfg["attention_dim"])
    else:
        mod = getattr(m, cls)(cfg, encoder_dim=enc_dim)
    if load:
        _load(mod, reference()[_key(part)]["state_dict"], f"{cls}.__init__")
    return mod.eval()


def _key(part):
    return part.replace("-", "_")


def _load(mod, state, todo):
    have = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        fail(todo, f"layer weights missing: {', '.join(missing)} (define the layers with exactly the names in the "
                   f"TODO banner)")
    if extra:
        fail(todo, f"unexpected weights {', '.join(extra)}: only the layers in the banner, with those names")
    for k in want:
        if have[k] != want[k]:
            fail(todo, f"{k} has shape {have[k]}, expected {want[k]}: check the sizes you pass to the layer "
                       f"'{k.split('.')[0]}'")
    mod.load_state_dict(state)


def _shape(todo, name, t, want):
    if not torch.is_tensor(t):
        fail(todo, f"{name} should be a tensor of shape {tuple(want)}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(want):
        fail(todo, f"{name} has shape {tuple(t.shape)}, expected {tuple(want)}")


def _close(todo, name, got, want, hint=""):
    _shape(todo, name, got, want.shape)
    err = rel_error(got, want)
    if not err <= REL_TOL:
        fail(todo, f"{name} differs from the reference: relative error {err:.2e} > {REL_TOL:g}" +
             (f". {hint}" if hint else ""))
    return err


def _unpack(todo, out, n, names):
    if not isinstance(out, tuple) or len(out) != n:
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        fail(todo, f"should return {n} values ({', '.join(names)}), returned {got}")
    return out


def _forward(part, dec, inp, todo):
    names = ["predictions", "encoded_captions", "decode_lengths", "sort_ind"]
    if part == "attention-decoder":
        names.insert(3, "alphas")
    out = _unpack(todo, dec(inp["encoder_out"], inp["captions"], inp["lengths"]), len(names), names)
    return dict(zip(names, out))


def _one_step(part, dec, inp, todo):
    if part == "rnn":
        names = ["preds", "h", "c"]
        out = dec.one_step(inp["embeddings"], inp["h"], inp["c"])
    else:
        names = ["preds", "alpha", "h", "c"]
        out = dec.one_step(inp["embeddings"], inp["encoder_out"], inp["h"], inp["c"])
    return dict(zip(names, _unpack(todo, out, len(names), names)))


def _by_hand(part, dec, enc, caps, lens):
    """What forward must compute, written with the module's own init_hidden_state and one_step."""
    cfg, c_dim = _cfg()
    b = enc.size(0)
    lengths, order = lens.reshape(-1).sort(descending=True)
    enc = enc.reshape(b, -1, c_dim)[order]
    emb = dec.embedding(caps[order])
    h, c = dec.init_hidden_state(enc)
    dl = (lengths - 1).tolist()
    preds = enc.new_zeros(b, max(dl), cfg["vocab_size"])
    alphas = enc.new_zeros(b, max(dl), enc.size(1))
    for t in range(max(dl)):
        n = sum(1 for x in dl if x > t)
        if part == "rnn":
            p, h, c = dec.one_step(emb[:n, t], h[:n], c[:n])
        else:
            p, a, h, c = dec.one_step(emb[:n, t], enc[:n], h[:n], c[:n])
            alphas[:n, t] = a
        preds[:n, t] = p
    return preds, alphas


# ------------------------------------------------------------------------------------------ checks per decoder
def _decoder_checks(part):
    cls = PARTS[part]
    init, fwd, step = f"{cls}.__init__", f"{cls}.forward", f"{cls}.one_step"
    key = _key(part)

    def layers():
        dec = _build(part, load=False)
        _load(dec, reference()[key]["state_dict"], init)
        drop = getattr(dec, "dropout", None)
        if not isinstance(drop, nn.Dropout) or drop.p != _cfg()[0]["dropout"]:
            fail(init, f"self.dropout should be nn.Dropout(p=self.dropout_p), got {drop!r}")
        return "layer names and shapes match the banner"

    def one_step_shapes():
        dec, inp = _build(part), reference()[key]["one_step_in"]
        out = _one_step(part, dec, inp, step)
        n, cfg = inp["h"].size(0), _cfg()[0]
        _shape(step, "preds", out["preds"], (n, cfg["vocab_size"]))
        _shape(step, "h", out["h"], (n, cfg["decoder_dim"]))
        _shape(step, "c", out["c"], (n, cfg["decoder_dim"]))
        if "alpha" in out:
            _shape(step, "alpha", out["alpha"], (n, inp["encoder_out"].size(1)))
        return "shapes of " + ", ".join(out)

    def one_step_values():
        dec, ref = _build(part), reference()[key]
        with torch.no_grad():
            out = _one_step(part, dec, ref["one_step_in"], step)
        want = ref["one_step_out"]
        if rel_error(out["h"], want["c"]) <= REL_TOL and rel_error(out["c"], want["h"]) <= REL_TOL:
            fail(step, "h and c are swapped: nn.LSTMCell takes (h, c) and returns (h, c), in that order")
        errs = [_close(step, k, out[k], want[k], "With the same weights and inputs (eval mode) your one_step "
                                                 "should give the reference's numbers") for k in want]
        return f"matches the reference (max relative error {max(errs):.1e})"

    def forward_shapes():
        dec, inp = _build(part), reference()[key]["forward_in"]
        out = _forward(part, dec, inp, fwd)
        b, t = inp["captions"].shape
        dl = sorted((inp["lengths"] - 1).tolist(), reverse=True)
        cfg = _cfg()[0]
        _shape(fwd, "predictions", out["predictions"], (b, max(dl), cfg["vocab_size"]))
        if "alphas" in out:
            p = inp["encoder_out"].reshape(b, -1, _cfg()[1]).size(1)
            _shape(fwd, "alphas", out["alphas"], (b, max(dl), p))
        if list(out["decode_lengths"]) != dl:
            fail(fwd, f"decode_lengths should be {dl} (caption lengths - 1, longest first), got "
                      f"{list(out['decode_lengths'])}")
        return "shapes of predictions" + (", alphas" if "alphas" in out else "") + " and decode_lengths"

    def forward_rows_past_end_are_zero():
        dec, inp = _build(part), reference()[key]["forward_in"]
        with torch.no_grad():
            out = _forward(part, dec, inp, fwd)
        for i, d in enumerate(out["decode_lengths"]):
            for name in ("predictions", "alphas"):
                if name in out and out[name][i, d:].numel() and out[name][i, d:].abs().max().item() != 0:
                    fail(fwd, f"{name}[{i}, {d}:] should stay 0 (caption {i} has decode length {d}); run only the "
                              f"captions still longer than t at step t (the shrinking batch)")
        return "rows past each caption's end stay 0"

    def forward_equals_one_step_by_hand():
        dec, inp = _build(part), reference()[key]["forward_in"]
        with torch.no_grad():
            out = _forward(part, dec, inp, fwd)
            preds, alphas = _by_hand(part, dec, inp["encoder_out"], inp["captions"], inp["lengths"])
        _close(fwd, "predictions", out["predictions"], preds,
               "forward should run one_step over the sorted, shrinking batch, starting from init_hidden_state")
        if "alphas" in out:
            _close(fwd, "alphas", out["alphas"], alphas, "store each step's alpha in alphas[:num, t, :]")
        return "forward equals running one_step by hand"

    def padding_does_not_matter():
        dec, inp = _build(part), reference()[key]["forward_in"]
        caps = inp["captions"].clone()
        g = torch.Generator().manual_seed(1)
        for i, n in enumerate(inp["lengths"].tolist()):
            caps[i, n:] = torch.randint(1, _cfg()[0]["vocab_size"], (caps.size(1) - n,), generator=g)
        with torch.no_grad():
            a = _forward(part, dec, inp, fwd)
            b = _forward(part, dec, dict(inp, captions=caps), fwd)
        for name in ("predictions", "alphas"):
            if name in a and rel_error(b[name], a[name]) > REL_TOL:
                fail(fwd, f"{name} depend on padding: changing the words after a caption's <end> changed them; "
                          f"stop each caption at its decode length (shrinking batch)")
        return "padding never influences the predictions"

    def short_caption_alone():
        dec, inp = _build(part), reference()[key]["forward_in"]
        with torch.no_grad():
            full = _forward(part, dec, inp, fwd)
            sort_ind = full["sort_ind"].tolist()
            for row, i in enumerate(sort_ind):
                one = _forward(part, dec, {k: v[i:i + 1] for k, v in inp.items()}, fwd)
                d = full["decode_lengths"][row]
                if rel_error(full["predictions"][row, :d], one["predictions"][0, :d]) > REL_TOL:
                    fail(fwd, f"predictions for caption {i} (length {inp['lengths'][i].item()}) differ when it is "
                              f"decoded alone: the other captions of the batch must not influence it")
        return "each caption's predictions equal those of decoding it alone"

    def forward_values():
        dec, ref = _build(part), reference()[key]
        with torch.no_grad():
            out = _forward(part, dec, ref["forward_in"], fwd)
        want = ref["forward_out"]
        if not torch.equal(torch.as_tensor(out["sort_ind"]).long(), want["sort_ind"]):
            fail(fwd, f"sort_ind {out['sort_ind'].tolist()} should be {want['sort_ind'].tolist()}")
        if not torch.equal(out["encoded_captions"], want["encoded_captions"]):
            fail(fwd, "encoded_captions should be returned sorted by decreasing caption length")
        errs = [_close(fwd, "predictions", out["predictions"], want["predictions"])]
        if "alphas" in want:
            errs.append(_close(fwd, "alphas", out["alphas"], want["alphas"]))
        return f"matches the reference (max relative error {max(errs):.1e})"

    extra = []
    if part == "attention-decoder":
        def gate_in_unit_interval():
            dec, inp = _build(part), reference()[key]["one_step_in"]
            seen = []
            handle = dec.sigmoid.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
            try:
                with torch.no_grad():
                    _one_step(part, dec, inp, step)
            finally:
                handle.remove()
            if not seen:
                fail(step, "the gate was never computed: gate = self.sigmoid(self.f_beta(h)), then z = gate * z")
            n, c_dim = inp["h"].size(0), _cfg()[1]
            _shape(step, "gate (output of self.sigmoid)", seen[0], (n, c_dim))
            if not ((seen[0] > 0) & (seen[0] < 1)).all():
                fail(step, "gate values must lie in (0, 1)")
            return "gate sigmoid(f_beta(h)) computed, (N, C), values in (0, 1)"

        def alphas_sum_to_one():
            dec, inp = _build(part), reference()[key]["forward_in"]
            with torch.no_grad():
                out = _forward(part, dec, inp, fwd)
            for i, d in enumerate(out["decode_lengths"]):
                s = out["alphas"][i, :d].sum(dim=-1)
                if (s - 1).abs().max().item() > 1e-4:
                    fail(fwd, f"alphas[{i}, :{d}] do not sum to 1 over the regions (sums {s.tolist()[:4]}…)")
            return "alphas sum to 1 over regions at every real step"

        extra = [gate_in_unit_interval, alphas_sum_to_one]

    fns = [layers, one_step_shapes, one_step_values, *extra[:1], forward_shapes, forward_rows_past_end_are_zero,
           forward_equals_one_step_by_hand, padding_does_not_matter, short_caption_alone, *extra[1:],
           forward_values]
    for fn in fns:
        fn.__name__ = fn.__qualname__ = fn.__name__
        _CHECKS.append((part, fn.__name__, fn))


_decoder_checks("rnn")


# ------------------------------------------------------------------------------------------------- attention
@check("attention")
def check_layers():
    att = _build("attention", load=False)
    _load(att, reference()["attention"]["state_dict"], "Attention.__init__")
    return "layer names and shapes match the banner"


@check("attention")
def check_shapes():
    att, inp = _build("attention"), reference()["attention"]["in"]
    z, alpha = _unpack("Attention.forward", att(inp["encoder_out"], inp["h"]), 2, ["z", "alpha"])
    n, p, c = inp["encoder_out"].shape
    _shape("Attention.forward", "z", z, (n, c))
    _shape("Attention.forward", "alpha", alpha, (n, p))
    return "z (N, C) and alpha (N, P)"


@check("attention")
def check_alpha_sums_to_one():
    att, inp = _build("attention"), reference()["attention"]["in"]
    with torch.no_grad():
        _, alpha = att(inp["encoder_out"], inp["h"])
    if (alpha < 0).any():
        fail("Attention.forward", "alpha has negative weights: take a softmax")
    s = alpha.sum(dim=1)
    if (s - 1).abs().max().item() > 1e-4:
        fail("Attention.forward", f"alpha does not sum to 1 over regions (sums over dim 1: "
                                  f"{[round(x, 3) for x in s.tolist()]}); take the softmax over the P regions, dim=1")
    return "alpha sums to 1 over the regions"


@check("attention")
def check_values():
    att, ref = _build("attention"), reference()["attention"]
    with torch.no_grad():
        z, alpha = att(ref["in"]["encoder_out"], ref["in"]["h"])
    e1 = _close("Attention.forward", "alpha", alpha, ref["out"]["alpha"],
                "alpha = softmax(att(relu(encoder_att(encoder_out) + decoder_att(h).unsqueeze(1))).squeeze(2))")
    e2 = _close("Attention.forward", "z", z, ref["out"]["z"], "z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)")
    return f"matches the reference (max relative error {max(e1, e2):.1e})"


_decoder_checks("attention-decoder")
# order the checks by part as students meet them
_CHECKS.sort(key=lambda c: list(PARTS).index(c[0]))
