"""The harness of the hidden tests (``hidden_tests.py``) — INSTRUCTOR-ONLY, runs in the grader's own process.

``Context`` is what a test sees: the reference modules (the kit's own ``captioning.models``, with seeded weights),
the inputs (drawn from the run's secret seed, ``Context(seed=…)``), and the student's code behind ``remote``
(their sandboxed process, ``remote.py``): ``build`` runs their ``__init__`` (its description words hints only),
``load`` puts the grader's weights into it by name, strictly, and ``call`` runs its layers; ``hybrid`` + ``call``
run one of their methods on the reference's layers and weights, the graded methods it calls answered by the
reference over the pipe (``serve_refcall``). The child only returns raw outputs; every comparison is made here.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time

import torch
from torch import nn

from instructor.grading import wire

REL_TOL = 1e-4
# dropout 0.3, not PyTorch's default 0.5: a layer that ignores the cfg must show
CFG = dict(vocab_size=23, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.3)
C, S = 7, 3  # encoder channels, grid side (P = 9 regions)
P = S * S
GRADED = {
    "DecoderWithRNN": ("forward", "one_step"),
    "Attention": ("forward",),
    "DecoderWithAttention": ("forward", "one_step"),
}
REMOTE_MODULES = {"DecoderWithAttention": ("attention",)}
# the graded methods each graded method may call: only these are answered with the reference
CALLS = {"forward": ("one_step",), "one_step": ()}
LENGTHS = (6, 9, 3, 7, 4)  # caption lengths incl. <start>/<end>, deliberately unsorted; T = 9
# Without a run seed (unit tests, the public checks' comparisons) the inputs and weights come from these fixed
# seeds; a grading run passes its secret seed (``Context(seed=…)``), from which every one of them is derived.
SEEDS = {
    "inputs": 2024,
    "padding": 5,
    "dropout": 77,
    "layers": 31,
    "weights:DecoderWithRNN": 11,
    "weights:Attention": 13,
    "weights:DecoderWithAttention": 17,
}
N_STEP = 5  # rows of the one_step inputs (differs from P, C, D so a wrong dimension shows)
DROPOUT_SEED = SEEDS["dropout"]

TESTS = {}  # name -> (region, function)


class Failed(AssertionError):
    """A hidden test found a problem; the message goes to the student."""


class ChildProblem(Exception):
    """The student's process stopped answering (ended, hung past the alarm, broke the protocol)."""


def test(region, needs=None):
    """Register ``fn(ctx)`` as a hidden test of ``region``. ``needs``: the region's correctness test (registered
    before it) — this test then pays only when that one passed in this run, so a test that compares the student's
    code with itself (batch of one, train vs eval, padding …) earns nothing for code that computes nothing (a
    constant output is consistent with itself). Its own check still runs first, so its own hint shows."""

    def deco(fn):
        name = fn.__name__.removeprefix("test_")
        if name in TESTS:
            raise ValueError(f"duplicate hidden test {name}")
        if needs is not None and needs not in TESTS:
            raise ValueError(f"hidden test {name} needs {needs}, which must be registered before it")

        def run(ctx):
            ctx.passed[name] = False
            fn(ctx)
            if needs is not None and not ctx.passed.get(needs):
                raise Failed(
                    f"this check passed, but it earns its points only when {needs} passes too (your "
                    f"outputs must first match the reference's)"
                )
            ctx.passed[name] = True

        run.__name__, run.__doc__, run.needs = fn.__name__, fn.__doc__, needs
        TESTS[name] = (region, run)
        return fn

    return deco


def is_tensor(x):
    return isinstance(x, torch.Tensor)


def rel_error(got, expected):
    got, expected = got.detach().double(), expected.detach().double()
    return ((got - expected).abs().max() / (expected.abs().max() + 1e-8)).item()


def matches(got, want):
    return (
        is_tensor(got)
        and tuple(got.shape) == tuple(want.shape)
        and got.device == want.device
        and (got.numel() == 0 or rel_error(got, want) <= REL_TOL)
    )


def close(name, got, want, hint=""):
    if not is_tensor(got):
        raise Failed(f"{name} should be a tensor of shape {tuple(want.shape)}, got {_kind(got)}")
    if tuple(got.shape) != tuple(want.shape):
        raise Failed(
            f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}" + (f". {hint}" if hint else "")
        )
    err = rel_error(got, want)
    if not err <= REL_TOL:
        raise Failed(
            f"{name} differs from the reference: relative error {err:.2e} > {REL_TOL:g}" + (f". {hint}" if hint else "")
        )


def _kind(x):
    return repr(x) if isinstance(x, wire.Unencodable) else type(x).__name__


def unpack(out, names):
    if not isinstance(out, tuple) or len(out) != len(names):
        got = f"{len(out)} values" if isinstance(out, (tuple, list)) else _kind(out)
        raise Failed(f"should return {len(names)} values ({', '.join(names)}), returned {got}")
    return dict(zip(names, out))


# ----------------------------------------------------------------------------------------------------- the spec
def _settings(m):
    """Constructor keywords that rebuild the layer ``m`` (the reference's layers are of these kinds only)."""
    if isinstance(m, nn.Linear):
        return dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.LSTMCell):
        return dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    if isinstance(m, nn.Embedding):
        return dict(num_embeddings=m.num_embeddings, embedding_dim=m.embedding_dim, padding_idx=m.padding_idx)
    if isinstance(m, nn.BatchNorm1d):
        return dict(
            num_features=m.num_features,
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
    if isinstance(m, nn.Dropout):
        return dict(p=m.p)
    if isinstance(m, (nn.Sigmoid, nn.ReLU, nn.Tanh)):
        return {}
    raise TypeError(f"no spec for layer {type(m).__name__}")


def hybrid_spec(cls, ref, method, state):
    """The ``hybrid`` request that rebuilds the reference object ``ref`` around the student's ``method``."""
    remote_mods = REMOTE_MODULES.get(cls, ())
    modules = [
        [name, "remote" if name in remote_mods else type(m).__name__, {} if name in remote_mods else _settings(m)]
        for name, m in ref._modules.items()
    ]
    attrs = {
        k: v
        for k, v in vars(ref).items()
        if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))
    }
    own = (
        [[C, CFG["decoder_dim"], CFG["attention_dim"]], {}] if cls == "Attention" else [[dict(CFG)], {"encoder_dim": C}]
    )
    return {
        "op": "hybrid",
        "cls": cls,
        "modules": modules,
        "attrs": attrs,
        "own": own,
        "state": {k: v for k, v in state.items() if not any(k.startswith(m + ".") for m in remote_mods)},
        "remote": [m for m in CALLS.get(method, ()) if m in GRADED[cls]],
    }


# ---------------------------------------------------------------------------------------------------- context
class Context:
    """What one submission's tests use: inputs, reference modules, and the student's process (``remote``)."""

    def __init__(self, ref_module, remote=None, seed=None, passed=None):
        """``seed``: the grading run's secret seed (a str; None: the fixed SEEDS). It never leaves this process:
        the student's process gets only inputs and weights drawn from it, and a dropout seed derived from it.
        ``passed``: the outcomes so far (kept when the runner restarts a crashed process with a new Context)."""
        self.ref, self.remote, self.seed = ref_module, remote, seed
        self.deadline = None  # set per test by the runner (wall clock: the backstop)
        self.cpu_limit = None  # CPU seconds the student's process may use per request (None: as the deadline)
        # test -> passed (for the tests that pay only when their region's correctness test passed)
        self.passed = {} if passed is None else passed
        self._states, self._builds, self._loads, self._refs = {}, {}, {}, {}
        self.dropout_seed = self.derive("dropout")
        g = torch.Generator().manual_seed(self.derive("inputs"))
        caps = torch.randint(1, CFG["vocab_size"], (len(LENGTHS), max(LENGTHS)), generator=g)
        for i, n in enumerate(LENGTHS):
            caps[i, n:] = 0
        self.fwd = {
            "encoder_out": torch.randn(len(LENGTHS), S, S, C, generator=g),
            "captions": caps,
            "lengths": torch.tensor(LENGTHS),
        }
        self.step = {
            "embeddings": torch.randn(N_STEP, CFG["embed_dim"], generator=g),
            "h": torch.randn(N_STEP, CFG["decoder_dim"], generator=g),
            "c": torch.randn(N_STEP, CFG["decoder_dim"], generator=g),
            "encoder_out": torch.randn(N_STEP, P, C, generator=g),
        }
        self.att_in = {
            "encoder_out": torch.randn(6, P, C, generator=g),
            "h": torch.randn(6, CFG["decoder_dim"], generator=g),
        }

    def derive(self, label):
        """The seed for ``label`` (e.g. "inputs", "weights:Attention"): fixed without a run seed, else drawn from
        the run's seed by SHA-256 (one seed cannot be told from another, nor the run's seed from any of them)."""
        if self.seed is None:
            return SEEDS[label]
        return int.from_bytes(hashlib.sha256(f"{self.seed}\0{label}".encode()).digest()[:8], "little") % 2**62

    def generator(self, label):
        return torch.Generator().manual_seed(self.derive(label))

    # ------------------------------------------------------------------------------------------ reference side
    @staticmethod
    def _construct(module, cls):
        torch.manual_seed(0)
        if cls == "Attention":
            return getattr(module, cls)(C, CFG["decoder_dim"], CFG["attention_dim"])
        return getattr(module, cls)(dict(CFG), encoder_dim=C)

    def state(self, cls):
        """Seeded weights of the reference ``cls`` (every parameter and BatchNorm statistic random)."""
        if cls not in self._states:
            mod = self._construct(self.ref, cls)
            g = self.generator(f"weights:{cls}")
            with torch.no_grad():
                for name, t in sorted(mod.state_dict().items()):
                    if t.is_floating_point():
                        t.copy_(
                            torch.rand(t.shape, generator=g) + 0.5
                            if name.endswith("running_var")
                            else torch.randn(t.shape, generator=g) * 0.4
                        )
            self._states[cls] = {k: v.clone() for k, v in mod.state_dict().items()}
        return self._states[cls]

    def reference(self, cls, train=False, state=None):
        mod = self._construct(self.ref, cls)
        mod.load_state_dict(state if state is not None else self.state(cls))
        return mod.train(train)

    # --------------------------------------------------------------------------------------------- student side
    def _request(self, msg):
        limit = 20.0 if self.deadline is None else max(0.5, self.deadline - time.monotonic())
        if self.cpu_limit is not None:  # the child stops itself after this much CPU time; ``limit`` is wall clock
            msg = dict(msg, cpu_limit=min(float(self.cpu_limit), limit))
        reply = self.remote.request(msg, limit)
        if not reply.get("ok"):
            raise StudentError(reply.get("kind", "error"), reply.get("message", ""))
        return reply.get("value")

    def build(self, cls):
        """Their ``cls`` built by their ``__init__``: {"id": object id, "modules": [...], "state": {name: [shape,
        dtype]}, "recorded": [constructor calls of sub-module classes]}. The description (modules, state,
        recorded) is what their process SAYS: it words hints, it never earns points (``load`` + ``call`` do)."""
        if cls not in self._builds:
            try:
                if cls == "Attention":
                    args, kwargs = [C, CFG["decoder_dim"], CFG["attention_dim"]], {}
                else:
                    args, kwargs = [dict(CFG)], {"encoder_dim": C}
                record = ["Attention"] if cls == "DecoderWithAttention" else []
                self._builds[cls] = self._request(
                    {
                        "op": "build",
                        "cls": cls,
                        "args": args,
                        "kwargs": kwargs,
                        "record": record,
                        "recipes": {r: self.recipe(r) for r in record},
                    }
                )
            except StudentError as e:
                self._builds[cls] = e
        got = self._builds[cls]
        if isinstance(got, StudentError):
            raise Failed(f"{cls}(...) could not be built: {got.message}")
        if not isinstance(got, dict) or not isinstance(got.get("id"), int) or isinstance(got.get("id"), bool):
            raise Failed(f"{cls}(...) could not be described")
        for key, kind in (("modules", list), ("state", dict), ("recorded", list)):
            if not isinstance(got.get(key), kind):
                got[key] = kind()
        return got

    def recipe(self, cls):
        """How the stand-in for ``cls`` inside another class's ``__init__`` builds the reference's layers from the
        arguments it is given: {"params": [names], "layers": [[name, nn kind, {keyword: "$param" or value}]]}.
        Read off the reference built with distinct sizes, so each size names the parameter it came from."""
        init = getattr(self.ref, cls).__init__
        params = [p for p in inspect.signature(init).parameters][1:]
        values = {"encoder_dim": C, "decoder_dim": CFG["decoder_dim"], "attention_dim": CFG["attention_dim"]}
        ref = self._construct(self.ref, cls)
        by_value = {v: k for k, v in values.items() if k in params}
        layers = []
        for name, m in ref._modules.items():
            kw = {
                k: (f"${by_value[v]}" if isinstance(v, int) and not isinstance(v, bool) and v in by_value else v)
                for k, v in _settings(m).items()
            }
            layers.append([name, type(m).__name__, kw])
        return {"params": params, "layers": layers}

    def load(self, cls):
        """Their ``cls`` (``build``) with the grader's weights ``state(cls)`` loaded by name, strictly, one
        top-level module at a time: (object id, {module: why it did not load}, [modules with weights not sent])."""
        built = self.build(cls)
        if cls not in self._loads:
            try:
                rep = self._request({"op": "load", "id": built["id"], "state": self.state(cls)})
            except StudentError as e:
                raise Failed(f"the grader's weights could not be loaded into your {cls}: {e.message}") from None
            if not isinstance(rep, dict):
                rep = {}
            problems = rep.get("problems") if isinstance(rep.get("problems"), dict) else {}
            extra = rep.get("extra") if isinstance(rep.get("extra"), list) else []
            self._loads[cls] = ({str(k): str(v) for k, v in problems.items()}, [str(x) for x in extra])
        return (built["id"], *self._loads[cls])

    def hybrid(self, cls, method, state=None):
        """Id of an object of their ``cls`` with the reference's layers and weights (``state``), their ``method``
        and the reference's graded methods that ``method`` calls (answered by ``serve_refcall``)."""
        state = state if state is not None else self.state(cls)
        ref = self.reference(cls, state=state)
        try:
            oid = self._request(hybrid_spec(cls, ref, method, state))["id"]
        except StudentError as e:
            raise Failed(f"models.py: {cls} could not be set up for the test: {e.message}") from None
        self._refs[oid] = {
            "module": ref,
            "paths": {m for m in CALLS.get(method, ()) if m in GRADED[cls]} | set(REMOTE_MODULES.get(cls, ())),
            "meta": None,
        }
        return oid

    def call(self, oid, method, args, train=False, seed=None, device="cpu", cpu_args=(), return_args=False):
        """Their ``method`` (or sub-module, a dotted path) of object ``oid`` on ``args``; what it returned (with
        ``return_args``: (that, the args as the call left them)). Raises Failed with their error."""
        try:
            return self._request(
                {
                    "op": "call",
                    "id": oid,
                    "method": method,
                    "args": list(args),
                    "train": train,
                    "seed": seed,
                    "device": device,
                    "cpu_args": list(cpu_args),
                    "return_args": return_args,
                }
            )
        except StudentError as e:
            raise Failed(e.message) from None

    def serve_refcall(self, msg):
        """Answer the child's call of the reference's ``path`` (only the methods the running test may use)."""
        entry = self._refs.get(msg.get("id"))
        path = msg.get("path")
        if entry is None or path not in entry["paths"]:
            return {"ok": False, "message": f"{path} is not available in this test"}
        args, kwargs = msg.get("args", ()), msg.get("kwargs", {})
        mod = entry["module"]
        if any(is_tensor(a) and a.device.type == "meta" for a in list(args) + list(kwargs.values())):
            if entry["meta"] is None:
                entry["meta"] = copy.deepcopy(mod).to("meta")
            mod = entry["meta"]
        mod.train(bool(msg.get("train")))
        try:
            fn = getattr(mod, path)
            with torch.no_grad():
                out = fn(*args, **kwargs)
            return {"ok": True, "value": out}
        except Exception as e:  # noqa: BLE001 - the student passed inputs the reference cannot take
            return {"ok": False, "message": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}


class StudentError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind, self.message = kind, message
