"""The harness of the hidden tests (``hidden_tests.py``) — INSTRUCTOR-ONLY, copied into a grading sandbox as
``_hidden_harness.py`` only for the run: the registry ``TESTS`` (filled by the ``@test(region)`` decorator),
``Failed``, the comparisons (``close``, ``rel_error``, ``unpack``) and ``Context``, which builds the reference, the
student's and the hybrid modules the tests compare (see ``hidden_tests.py`` for the isolation it provides).
"""
from __future__ import annotations

import torch

REL_TOL = 1e-4
CFG = dict(vocab_size=23, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.5)
C, S = 7, 3  # encoder channels, grid side (P = 9 regions)
P = S * S
GRADED = {"DecoderWithRNN": ("forward", "one_step"), "Attention": ("forward",),
          "DecoderWithAttention": ("forward", "one_step")}
LENGTHS = (6, 9, 3, 7, 4)  # caption lengths incl. <start>/<end>, deliberately unsorted; T = 9
SEEDS = {"DecoderWithRNN": 11, "Attention": 13, "DecoderWithAttention": 17}
N_STEP = 5  # rows of the one_step inputs (differs from P, C, D so a wrong dimension shows)

TESTS = {}  # name -> (region, function)


class Failed(AssertionError):
    """A hidden test found a problem; the message goes to the student."""


def test(region):
    def deco(fn):
        name = fn.__name__.removeprefix("test_")
        if name in TESTS:
            raise ValueError(f"duplicate hidden test {name}")
        TESTS[name] = (region, fn)
        return fn

    return deco


def rel_error(got, expected):
    got, expected = got.detach().double(), expected.detach().double()
    return ((got - expected).abs().max() / (expected.abs().max() + 1e-8)).item()


def close(name, got, want, hint=""):
    if not torch.is_tensor(got):
        raise Failed(f"{name} should be a tensor of shape {tuple(want.shape)}, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise Failed(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}" +
                     (f". {hint}" if hint else ""))
    err = rel_error(got, want)
    if not err <= REL_TOL:
        raise Failed(f"{name} differs from the reference: relative error {err:.2e} > {REL_TOL:g}" +
                     (f". {hint}" if hint else ""))


def unpack(out, names):
    if not isinstance(out, tuple) or len(out) != len(names):
        got = f"{len(out)} values" if isinstance(out, tuple) else type(out).__name__
        raise Failed(f"should return {len(names)} values ({', '.join(names)}), returned {got}")
    return dict(zip(names, out))


# ---------------------------------------------------------------------------------------------------- context
class Context:
    def __init__(self, ref, stu):
        self.ref, self.stu = ref, stu
        self._states, self._theirs = {}, {}
        g = torch.Generator().manual_seed(2024)
        caps = torch.randint(1, CFG["vocab_size"], (len(LENGTHS), max(LENGTHS)), generator=g)
        for i, n in enumerate(LENGTHS):
            caps[i, n:] = 0
        self.fwd = {"encoder_out": torch.randn(len(LENGTHS), S, S, C, generator=g), "captions": caps,
                    "lengths": torch.tensor(LENGTHS)}
        self.step = {"embeddings": torch.randn(N_STEP, CFG["embed_dim"], generator=g),
                     "h": torch.randn(N_STEP, CFG["decoder_dim"], generator=g),
                     "c": torch.randn(N_STEP, CFG["decoder_dim"], generator=g),
                     "encoder_out": torch.randn(N_STEP, P, C, generator=g)}
        self.att_in = {"encoder_out": torch.randn(6, P, C, generator=g),
                       "h": torch.randn(6, CFG["decoder_dim"], generator=g)}

    @staticmethod
    def _build(module, cls):
        klass = getattr(module, cls, None)
        if klass is None:
            raise Failed(f"models.py has no class {cls}")
        torch.manual_seed(0)
        if cls == "Attention":
            return klass(C, CFG["decoder_dim"], CFG["attention_dim"])
        return klass(dict(CFG), encoder_dim=C)

    def state(self, cls):
        """Seeded weights of the reference ``cls`` (every parameter and BatchNorm statistic random)."""
        if cls not in self._states:
            mod = self._build(self.ref, cls)
            g = torch.Generator().manual_seed(SEEDS[cls])
            with torch.no_grad():
                for name, t in sorted(mod.state_dict().items()):
                    if t.is_floating_point():
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                                else torch.randn(t.shape, generator=g) * 0.4)
            self._states[cls] = {k: v.clone() for k, v in mod.state_dict().items()}
        return self._states[cls]

    def reference(self, cls, train=False):
        mod = self._build(self.ref, cls)
        mod.load_state_dict(self.state(cls))
        return mod.train(train)

    def student(self, cls):
        """The student's own module, built by their __init__ (raises what it raises)."""
        return self._build(self.stu, cls)

    def hybrid(self, cls, method, train=False, state=None):
        """Reference layers and weights; the student's ``method``; the reference's other TODO methods."""
        ref_cls, stu_cls = getattr(self.ref, cls), getattr(self.stu, cls, None)
        if not isinstance(stu_cls, type):
            raise Failed(f"models.py has no class {cls}")
        obj = self._build(self.ref, cls)
        obj.load_state_dict(state or self.state(cls))
        if cls not in self._theirs:  # built once; if their __init__ hangs, only the first test pays for it
            self._theirs[cls] = None
            try:
                self._theirs[cls] = self.student(cls)
            except Exception:  # noqa: BLE001 - their __init__ is graded elsewhere
                pass
        theirs = self._theirs[cls]
        if theirs is not None:
            for name, m in getattr(theirs, "_modules", {}).items():
                if name not in obj._modules:
                    obj._modules[name] = m
            for k, v in vars(theirs).items():
                if not k.startswith("_") and k not in vars(obj) and k != "training":
                    obj.__dict__[k] = v
        overrides = {m: ref_cls.__dict__[m] for m in GRADED[cls] if m != method}
        try:
            obj.__class__ = type(cls, (stu_cls,), overrides)
        except TypeError as e:
            raise Failed(f"{cls} must stay an nn.Module subclass ({e})") from None
        return obj.train(train)


def forward_outputs(kind, mod, inp):
    names = ["predictions", "encoded_captions", "decode_lengths", "sort_ind"]
    if kind == "DecoderWithAttention":
        names.insert(3, "alphas")
    return unpack(mod(inp["encoder_out"], inp["captions"], inp["lengths"]), names)


def one_step_outputs(kind, mod, inp):
    if kind == "DecoderWithRNN":
        return unpack(mod.one_step(inp["embeddings"], inp["h"], inp["c"]), ["preds", "h", "c"])
    return unpack(mod.one_step(inp["embeddings"], inp["encoder_out"], inp["h"], inp["c"]),
                  ["preds", "alpha", "h", "c"])
