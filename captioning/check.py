"""``python -m captioning check [PART]`` — the students' self-check of ``models.py``.

Runs the public checks (``tests/public/public_checks.py``) of one part in this process and prints one PASS or WARN
line per check and one FAIL line per cause (the checks one cause fails are listed under it), with a message that
names the TODO, the tensor, the expected and actual shape or the relative error, and the cause where the check can
tell it; an exception in models.py is one line naming the method and the line that raised it. With several causes
the last line says which to fix first (the earliest in the order the methods depend on each other). A WARN passed but points at something that looks wrong
(it does not change the exit status). See that file for the relative-error measure.

``require_todos`` is the TODO check the training notebooks run first: it stops with a message naming the first
unfinished TODO of ``models.py`` (or an output of the wrong shape), and prints which ``models.py`` it checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from captioning.internals.errors import KitError

PARTS = ("rnn", "attention", "attention-decoder")
PUBLIC_TESTS = "tests/public"


def kit_root():
    """The folder that holds the ``captioning`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parent.parent


def load_public_checks(root=None):
    """Import ``tests/public/public_checks.py`` of the kit at ``root`` (default: this kit)."""
    root = Path(root) if root is not None else kit_root()
    path = root / PUBLIC_TESTS / "public_checks.py"
    if not path.is_file():
        raise KitError(
            f"{path} is missing: the self-check needs the kit's {PUBLIC_TESTS}/ folder (run it from "
            f"the kit you installed with `pip install -e .`)"
        )
    spec = importlib.util.spec_from_file_location("public_checks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("public_checks", mod)
    spec.loader.exec_module(mod)
    return mod


def run_checks(part="all", root=None, out=print):
    """Run the public checks of ``part`` (one of PARTS or "all"); print one line each. Returns the results:
    a list of (part, name, ok, message); a WARN is ok with a ``Warn`` message."""
    if part not in PARTS + ("all",):
        raise KitError(f"unknown part '{part}': choose one of {', '.join(PARTS)} or all")
    checks = load_public_checks(root)
    results = checks.run(None if part == "all" else part)
    groups = checks.group(results)
    by_first = {g["first"]: g for g in groups}
    width = max((len(f"{p}/{n}") for p, n, _, _ in results), default=10)
    status = [checks.status(ok, msg) for _, _, ok, msg in results]
    for i, ((p, n, _, msg), st) in enumerate(zip(results, status)):
        if st != "FAIL":
            out(f"{st}  {f'{p}/{n}':<{width}}  {msg}")
        elif i in by_first:  # one line per cause, where its first check comes; its other checks are listed
            out(f"{st}  {f'{p}/{n}':<{width}}  {by_first[i]['message']}")
            if len(by_first[i]["checks"]) > 1:
                out(f"      {_affected(by_first[i]['checks'])}")
    n_fail, n_warn = status.count("FAIL"), status.count("WARN")
    out(
        f"\n{len(results) - n_fail} of {len(results)} checks passed"
        + ("" if not n_warn else f", {n_warn} of them with a warning (WARN: read its message)")
        + (
            ""
            if not n_fail
            else f"; relative error = max|got - expected| / (max|expected| + 1e-8), tolerance {checks.REL_TOL:g}"
        )
    )
    if len(groups) > 1:
        first = checks.fix_first(groups)
        out(
            f"{len(groups)} causes fail {n_fail} checks. Fix first: {first['checks'][0]} — "
            f"{first['names']} (methods depend on each other in this order: __init__, "
            f"init_hidden_state, Attention.forward and one_step, forward; the later FAILs may follow from it)"
        )
    return results


def _affected(checks):
    """The continuation line of a grouped FAIL: every check that one cause fails."""
    return f"(this one cause fails {len(checks)} checks: {', '.join(checks)})"


def _cmd_check(a):
    results = run_checks(a.part)
    if not all(ok for _, _, ok, _ in results):
        raise SystemExit(1)


def register(subparsers):
    s = subparsers.add_parser(
        "check",
        help="self-check models.py: run the public checks of one part (rnn, attention, attention-decoder, or all)",
    )
    s.add_argument("part", nargs="?", default="all", choices=PARTS + ("all",))
    s.set_defaults(func=_cmd_check)


# ------------------------------------------------------------------- the TODO check the training notebooks run

_KIT_MODULES = ("captioning.models", "captioning.solver", "captioning.evaluation.evaluate")


def _reload_kit():
    """Re-import models.py (and the modules that hold names from it) so that an edit made while the notebook's
    kernel runs is what the next cells use."""
    import importlib

    for name in _KIT_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    from captioning.internals import plugins

    plugins.reload()  # a plug-in knows the classes of models.py


def _todo_message(err):
    text = str(err).strip()
    m = re.search(r"TODO\s+([A-Za-z_]\w*(?:\.\w+)?)", text)
    if not m:
        return (
            f"models.py: a TODO is not done yet ({type(err).__name__}: {text or 'no message'}) — complete it, "
            f"then re-run this cell"
        )
    detail = text[m.end() :].lstrip(" :—-")
    detail = re.sub(r"\s*\(define it in the __init__ TODO.*\)$", "", detail)
    return (
        f"models.py: TODO {m.group(1)} is not done yet{f' ({detail})' if detail else ''} — complete it, "
        f"then re-run this cell"
    )


def _expect(name, tensor, shape):
    got = tuple(getattr(tensor, "shape", ()))
    if got != tuple(shape):
        raise KitError(
            f"models.py: {name} has shape {got}, expected {tuple(shape)} — check that TODO, then re-run this cell"
        )


def require_todos(decoder_type="rnn"):
    """Stop with a ``KitError`` naming the first unfinished TODO of ``models.py`` that ``decoder_type`` needs.

    Builds a tiny decoder (and, for "attention", an ``Attention``) and runs ``one_step`` and ``forward`` on tiny
    tensors; a stub's ``NotImplementedError("TODO Class.method")`` or a missing layer's ``TodoError`` becomes
    "models.py: TODO Class.method is not done yet — complete it, then re-run this cell". Wrong output shapes are
    reported too. models.py is re-imported first, so re-running the cell after an edit checks the edited file.
    "adaptive" needs no TODO (``DecoderWithAdaptiveAttention`` is reference code that uses none of the student's
    classes): it only runs that decoder on tiny tensors.
    """
    if decoder_type not in ("rnn", "attention", "adaptive"):
        raise KitError(f"decoder_type {decoder_type!r}: choose 'rnn', 'attention' or 'adaptive'")
    _reload_kit()
    import torch

    from captioning import models

    B, S, C, V, E, D, A, T = 3, 2, 8, 9, 4, 6, 5, 6
    P = S * S
    cfg = {"vocab_size": V, "embed_dim": E, "decoder_dim": D, "attention_dim": A, "dropout": 0.0}
    gen = torch.Generator().manual_seed(0)
    enc = torch.randn(B, S, S, C, generator=gen)
    caps = torch.randint(4, V, (B, T), generator=gen)
    lens = torch.tensor([T, T - 1, T - 3])
    emb = torch.randn(B, E, generator=gen)
    h, c = torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)
    try:
        with torch.no_grad():
            if decoder_type == "rnn":
                dec = models.DecoderWithRNN(cfg, encoder_dim=C).eval()
                preds, h2, c2 = dec.one_step(emb, h, c)
                _expect("DecoderWithRNN.one_step's preds", preds, (B, V))
                _expect("DecoderWithRNN.one_step's h", h2, (B, D))
                out = dec(enc, caps, lens)
                _expect("DecoderWithRNN.forward's predictions", out[0], (B, T - 1, V))
                names = "DecoderWithRNN"
            elif decoder_type == "attention":
                att = models.Attention(C, D, A).eval()
                z, alpha = att(enc.view(B, P, C), h)
                _expect("Attention.forward's z", z, (B, C))
                _expect("Attention.forward's alpha", alpha, (B, P))
                dec = models.DecoderWithAttention(cfg, encoder_dim=C).eval()
                preds, alpha, h2, c2 = dec.one_step(emb, enc.view(B, P, C), h, c)
                _expect("DecoderWithAttention.one_step's preds", preds, (B, V))
                _expect("DecoderWithAttention.one_step's alpha", alpha, (B, P))
                _expect("DecoderWithAttention.one_step's h", h2, (B, D))
                out = dec(enc, caps, lens)
                _expect("DecoderWithAttention.forward's predictions", out[0], (B, T - 1, V))
                _expect("DecoderWithAttention.forward's alphas", out[3], (B, T - 1, P))
                names = "Attention and DecoderWithAttention"
            else:
                from captioning.solver import build_decoder

                dec = build_decoder({"decoder": "adaptive", **cfg}, V, C).eval()
                out = dec(enc, caps, lens)
                _expect("the adaptive decoder's predictions", out[0], (B, T - 1, V))
                _expect("the adaptive decoder's alphas", out[3], (B, T - 1, P + 1))
    except NotImplementedError as e:  # includes models.TodoError (a layer not defined yet)
        raise KitError(f"{_todo_message(e)} [checked: {_where(models)}]") from None
    except Exception as e:  # noqa: BLE001 - student code: one line naming the method and the line, no traceback
        part = {"rnn": "rnn", "attention": "attention-decoder"}.get(decoder_type)
        raise KitError(
            f"models.py: {_one_line(e)}"
            + (f" — run `python -m captioning check {part}` to find the first cause" if part else "")
            + f", then re-run this cell [checked: {_where(models)}]"
        ) from None
    # which file was imported: a student with two copies of the kit sees which one the notebook uses
    print(f"checked {_where(models)}")
    if decoder_type == "adaptive":
        print(
            "models.py: DecoderWithAdaptiveAttention is reference code, no TODO of yours is needed (it ran on tiny "
            "tensors)"
        )
    else:
        print(f"models.py: the {names} TODOs are done (checked on tiny tensors)")


def _one_line(e):
    """The public checks' one line for an exception raised by models.py (the method the TODO check called, the line
    that raised it); the bare exception when those checks are not there."""
    try:
        return str(load_public_checks().crash(e))
    except Exception:  # noqa: BLE001 - only a nicer message: keep the student's error whatever happens here
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _where(module):
    """The module's file relative to the working directory (the same text in every clone of the kit)."""
    return os.path.relpath(module.__file__)
