"""Public checks of ``captioning/models.py`` — what ``python -m captioning check [PART]`` runs and what the pytest
files next to this one (``test_public_rnn.py``, ``test_public_attention.py``, ``test_public_attention_decoder.py``) run.

Parts: ``rnn`` (DecoderWithRNN), ``attention`` (Attention), ``attention-decoder`` (DecoderWithAttention). This file
holds the shared helpers and the ``attention`` checks; ``decoder_checks.py`` (``__init__``, ``one_step``) and
``forward_checks.py`` (``forward``) hold those of both decoders; ``first_cause.py`` says what a FAIL blames (an
exception is one line naming the method and the line of models.py) and groups the FAILs of one cause.

Each check ends in PASS, FAIL or WARN (passed, but something looks wrong: read the message; under pytest a WARN is a
warning, not a failure). Every FAIL/WARN message starts with the TODO to look at, then says what is wrong and why.

Numbers are compared with ONE relative-error measure::

    rel_error(got, expected) = max |got - expected| / (max |expected| + 1e-8)      passes when <= REL_TOL = 1e-4

The expected values (``reference_values.pt``, made by ``make_reference_values.py`` from the reference solution)
were computed with fixed, seeded weights and inputs at tiny sizes (vocabulary 23, embedding 8, decoder 12,
attention 10, encoder channels 6, a 3×3 grid; dropout 0.3). The weights are stored with them as state dicts and
loaded into your modules *by layer name* — which is why the layer names in the TODO banners matter.
"""

from __future__ import annotations

import functools
import importlib.util
import types
import warnings
from pathlib import Path

import torch
from torch import nn

REL_TOL = 1e-4
REFERENCE_FILE = Path(__file__).with_name("reference_values.pt")
PARTS = {"rnn": "DecoderWithRNN", "attention": "Attention", "attention-decoder": "DecoderWithAttention"}
SQUEEZE_HINT = " (a squeeze() without a dim also removes the batch dimension when N=1: name the dim, e.g. squeeze(1))"
RANDOM_IN_EVAL = (
    "in eval mode {} gives different numbers on every call: dropout must be off in eval mode (use "
    "self.dropout(h), or F.dropout(h, self.dropout_p, self.training))"
)

_CHECKS = []  # (part, name, function)


def _load_sibling(name, helpers):
    """Import ``name``.py from this folder under a name of its own (this file may be loaded by path, from any kit)
    and hand it these helpers."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_public_checks_{name}_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.pc = helpers
    return mod


cause = _load_sibling("first_cause", None)  # what a FAIL blames, which FAIL to fix first
describe, crash, group, fix_first = cause.describe, cause.crash, cause.group, cause.fix_first
blame_earlier = functools.partial(cause.blame_earlier, _CHECKS)  # blame_earlier(part, *names)


class CheckFailed(AssertionError):
    """A check that ran and found something to fix; the message says what."""


class Warn(str):
    """The message of a check that passed with a warning (``status`` reports it as WARN)."""


class PublicCheckWarning(UserWarning):
    """What a WARN becomes under pytest: a warning in the summary, not a failure."""


def rel_error(got, expected):
    """max |got - expected| / (max |expected| + 1e-8), as a float."""
    got, expected = got.detach().double(), expected.detach().double()
    return ((got - expected).abs().max() / (expected.abs().max() + 1e-8)).item()


def close(got, expected):
    """Same shape and rel_error <= REL_TOL."""
    return torch.is_tensor(got) and got.shape == expected.shape and rel_error(got, expected) <= REL_TOL


def differs(a, b):
    """Two tensors of the same shape whose rel_error is over REL_TOL (anything else is some other check's job)."""
    return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and rel_error(a, b) > REL_TOL


def is_todo(e):
    """An exception that says a TODO is not done yet (the stubs of the student edition raise these)."""
    return isinstance(e, NotImplementedError) and str(e).startswith("TODO")


def check(part):
    def deco(fn):
        _CHECKS.append((part, fn.__name__.removeprefix("check_"), fn))
        return fn

    return deco


def checks_of(part):
    """(name, function) of the checks of one part (for the pytest files)."""
    return [(name, fn) for p, name, fn in _CHECKS if p == part]


def status(ok, msg):
    """PASS, FAIL or WARN for one result of ``run``."""
    return "FAIL" if not ok else "WARN" if isinstance(msg, Warn) else "PASS"


def run(part=None):
    """Run the checks of ``part`` (all when None). Returns [(part, name, ok, message)]; ``status(ok, message)``
    says PASS, FAIL or WARN."""
    out = []
    for p, name, fn in _CHECKS:
        if part is not None and p != part:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PublicCheckWarning)
                msg = fn() or "ok"
            ok = True
        except CheckFailed as e:
            ok, msg = False, cause.failure(str(e))
        except Exception as e:  # noqa: BLE001 - student code: report anything it raises, in one line
            ok, msg = False, cause.crash(e)
        out.append((p, name, ok, msg))
    return out


def fail(todo, msg):
    raise CheckFailed(f"{cause.label(todo)}: {msg}")


def warn(todo, msg):
    """A check that passes with a warning: return what this returns."""
    text = f"TODO {todo}: {msg}"
    warnings.warn(text, PublicCheckWarning, stacklevel=2)
    return Warn(text)


def batch_of_one(todo, fn):
    """Run ``fn`` (on a batch of one); whatever it raises becomes a failure that says so."""
    try:
        return fn()
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - student code
        if is_todo(e):
            raise
        fail(todo, f"with a batch of one (N=1) it fails: {describe(e)}{SQUEEZE_HINT}")


# ------------------------------------------------------------------------------------------------------- setup
@functools.lru_cache(maxsize=1)
def reference():
    if not REFERENCE_FILE.is_file():
        raise CheckFailed(f"{REFERENCE_FILE} is missing: it comes with the kit (tests/public/); restore it")
    return torch.load(REFERENCE_FILE, map_location="cpu", weights_only=True)


def models():
    import captioning.models as m

    return m


def cfg():
    """(cfg dict, encoder_dim) of the reference values."""
    meta = reference()["meta"]
    return dict(meta["cfg"]), meta["encoder_dim"]


def key(part):
    return part.replace("-", "_")


def ref(part):
    """The reference values of ``part``."""
    return reference()[key(part)]


def todo(part, method):
    """The TODO name of ``method`` of the class of ``part``, e.g. "DecoderWithRNN.one_step"."""
    return f"{PARTS[part]}.{method}"


def build(part, load=True):
    """The student's module of ``part`` with the reference weights loaded by layer name, in eval mode."""
    m, (c, enc_dim) = models(), cfg()
    cls = PARTS[part]
    torch.manual_seed(0)
    if part == "attention":
        mod = m.Attention(enc_dim, c["decoder_dim"], c["attention_dim"])
    else:
        # an exception inside one_step then says whether forward gave it rows that disagree
        mod = cause.watch(getattr(m, cls)(c, encoder_dim=enc_dim))
    if load:
        load_weights(mod, reference()[key(part)]["state_dict"], f"{cls}.__init__")
    return mod.eval()


def load_weights(mod, state, todo):
    have = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        fail(
            todo,
            f"layer weights missing: {', '.join(missing)} (define the layers with exactly the names in the "
            f"TODO banner)",
        )
    if extra:
        fail(todo, f"unexpected weights {', '.join(extra)}: only the layers in the banner, with those names")
    for k in want:
        if have[k] != want[k]:
            hint = (
                attention_order_hint()
                if k.startswith("attention.")
                else f"check the sizes you pass to the layer '{k.split('.')[0]}'"
            )
            fail(todo, f"{k} has shape {have[k]}, expected {want[k]}: {hint}")
    mod.load_state_dict(state)


def attention_order_hint():
    """Why self.attention has the wrong sizes: the order of the arguments, or the student's Attention itself."""
    c, enc_dim = cfg()
    try:
        att = models().Attention(enc_dim, c["decoder_dim"], c["attention_dim"])
        want = {
            k[len("attention.") :]: tuple(v.shape)
            for k, v in reference()["attention_decoder"]["state_dict"].items()
            if k.startswith("attention.")
        }
        right = {k: tuple(v.shape) for k, v in att.state_dict().items()} == want
    except Exception:  # noqa: BLE001 - student code
        right = False
    if right:
        return (
            "the arguments of Attention(...) are in the wrong order: it takes (encoder_dim, decoder_dim, "
            "attention_dim), in that order (or pass them by keyword)"
        )
    return "your Attention.__init__ gives these sizes: run `python -m captioning check attention` first"


def layer_types(mod, types_, todo):
    """Each named layer is an instance of the banner's type."""
    for name, cls in types_.items():
        layer = getattr(mod, name)
        if not isinstance(layer, cls):
            fail(
                todo,
                f"self.{name} is a {type(layer).__name__}, expected nn.{cls.__name__}"
                if cls.__module__.startswith("torch")
                else f"self.{name} should be your {cls.__name__}",
            )


def shape(todo, name, t, want, n1=False):
    """``t`` is a tensor of shape ``want``; with ``n1`` (a batch of one) a lost dimension of size 1 says why."""
    if not torch.is_tensor(t):
        fail(todo, f"{name} should be a tensor of shape {tuple(want)}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(want):
        lost = n1 and tuple(t.shape) == tuple(d for d in want if d != 1)
        fail(
            todo,
            ("with a batch of one (N=1) " if n1 else "") + f"{name} has shape {tuple(t.shape)}, expected "
            f"{tuple(want)}" + (SQUEEZE_HINT if lost else ""),
        )


def compare(todo, name, got, want, hint=""):
    shape(todo, name, got, want.shape)
    err = rel_error(got, want)
    if not err <= REL_TOL:
        fail(
            todo,
            f"{name} differs from the reference: relative error {err:.2e} > {REL_TOL:g}"
            + (f". {hint}" if hint else ""),
        )
    return err


def unpack(todo, out, n, names):
    if not isinstance(out, tuple) or len(out) != n:
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        fail(todo, f"should return {n} values ({', '.join(names)}), returned {got}")
    return out


# ------------------------------------------------------------------------------------------------- attention
ATT = "Attention.forward"


def _attend(att, inp, n1=False):
    def go():
        return unpack(ATT, att(inp["encoder_out"], inp["h"]), 2, ["z", "alpha"])

    if not n1:
        return go()
    return batch_of_one(ATT, go)


def _first(inp):
    return {k: v[:1] for k, v in inp.items()}


@check("attention")
def check_layers():
    att = build("attention", load=False)
    load_weights(att, reference()["attention"]["state_dict"], "Attention.__init__")
    layer_types(att, dict.fromkeys(("encoder_att", "decoder_att", "att"), nn.Linear), "Attention.__init__")
    return "layer names, types and shapes match the banner"


@check("attention")
def check_shapes():
    att, inp = build("attention"), reference()["attention"]["in"]
    n, p, c = inp["encoder_out"].shape
    z, alpha = _attend(att, inp)
    shape(ATT, "z", z, (n, c))
    shape(ATT, "alpha", alpha, (n, p))
    z, alpha = _attend(att, _first(inp), n1=True)
    shape(ATT, "z", z, (1, c), n1=True)
    shape(ATT, "alpha", alpha, (1, p), n1=True)
    return "z (N, C) and alpha (N, P), also with a batch of one"


@check("attention")
def check_alpha_sums_to_one():
    att, inp = build("attention"), reference()["attention"]["in"]
    with torch.no_grad():
        _, alpha = _attend(att, inp)
        _, alpha1 = _attend(att, _first(inp), n1=True)
    if (alpha < 0).any():
        fail(ATT, "alpha has negative weights: take a softmax")
    s = alpha.sum(dim=1)
    if (s - 1).abs().max().item() > 1e-4:
        over_batch = alpha.dim() == 2 and (alpha.sum(dim=0) - 1).abs().max().item() <= 1e-4
        fail(
            ATT,
            f"alpha does not sum to 1 over regions (sums over dim 1: {[round(x, 3) for x in s.tolist()]})"
            + ("; it sums to 1 over dim 0, the batch: the softmax is over the wrong dim" if over_batch else "")
            + "; take the softmax over the P regions, dim=1",
        )
    s1 = alpha1.sum(dim=1)
    if (s1 - 1).abs().max().item() > 1e-4:
        fail(
            ATT,
            f"with a batch of one (N=1) alpha sums to {round(s1.max().item(), 3)} over the regions, not 1: "
            f"take the softmax over the P regions (dim=1), not over the batch (dim 0)",
        )
    return "alpha sums to 1 over the regions, also with a batch of one"


@check("attention")
def check_values():
    att, ref = build("attention"), reference()["attention"]
    with torch.no_grad():
        z, alpha = _attend(att, ref["in"])
        z1, alpha1 = _attend(att, _first(ref["in"]), n1=True)
    e1 = compare(
        ATT,
        "alpha",
        alpha,
        ref["out"]["alpha"],
        "alpha = softmax over the P regions of att(relu(encoder_att(encoder_out) + decoder_att(h)))",
    )
    e2 = compare(ATT, "z", z, ref["out"]["z"], "z = the sum over the P regions of encoder_out weighted by alpha")
    for name, got, want in (("alpha", alpha1, ref["out"]["alpha"][:1]), ("z", z1, ref["out"]["z"][:1])):
        shape(ATT, name, got, want.shape, n1=True)
        if rel_error(got, want) > REL_TOL:
            fail(
                ATT,
                f"with a batch of one (N=1) {name} differs from row 0 of the batch of 4 (relative error "
                f"{rel_error(got, want):.2e})",
            )
    return f"matches the reference (max relative error {max(e1, e2):.1e}), also with a batch of one"


# ------------------------------------------------------------------------------------------------- decoders
def _register_decoders():
    helpers = types.SimpleNamespace(**{k: v for k, v in globals().items() if not k.startswith("__")})
    files = [_load_sibling("decoder_checks", helpers), _load_sibling("forward_checks", helpers)]
    for part in ("rnn", "attention-decoder"):
        for name, fn in [c for f in files for c in f.checks(part)]:
            check_fn = functools.partial(fn, part)
            check_fn.__name__ = check_fn.__qualname__ = name
            _CHECKS.append((part, name, check_fn))
    # order the checks by part as students meet them
    _CHECKS.sort(key=lambda c: list(PARTS).index(c[0]))


_register_decoders()
