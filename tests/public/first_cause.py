"""What a FAIL of the public checks blames, and which FAIL to fix first. Loaded by ``public_checks.py``.

* An exception raised by ``models.py`` while a check runs becomes one line (never a traceback): the method the check
  called, the exception's first line, and where in ``models.py`` it was raised, with the calls that led there
  ("in DecoderWithAttention.one_step, called from forward at line 290"). When ``one_step`` was given arguments whose
  rows disagree (``h`` of the whole batch with ``embeddings[:num]``), the line says so: the bug is in the caller.
* ``group`` puts together the failures of one cause — the same message, or the same exception raised at the same
  line of ``models.py`` — so that one wrong layer size is one FAIL line that lists the checks it broke.
* ``fix_first`` picks the group to fix first, in the order the methods depend on each other:
  ``__init__`` → ``init_hidden_state`` → ``Attention.forward`` / ``one_step`` → ``forward``.
"""

from __future__ import annotations

import inspect
import os
import re
import traceback

import torch

STUDENT_FILE = "models.py"
# the order in which the methods depend on each other: a FAIL of an earlier one may explain those of later ones
METHOD_ORDER = ("__init__", "init_hidden_state", "Attention.forward", "one_step", "forward")
CLASS_ORDER = ("Attention", "DecoderWithRNN", "DecoderWithAttention")
GIVEN = ("init_hidden_state",)  # given code above a TODO: it fails when it was changed or when the layers are wrong


class Failure(str):
    """The message of a FAIL; ``cause`` is what failures of the same cause share (see ``group``)."""

    cause: str = ""


def failure(msg, cause=None):
    out = Failure(msg)
    out.cause = cause or str(msg)
    return out


def label(method):
    """How a message names ``method`` ("DecoderWithRNN.forward"): its TODO, or the given code it is."""
    if method.rsplit(".", 1)[-1] in GIVEN:
        return f"{method} (given code, run with your layers)"
    return f"TODO {method}"


# ------------------------------------------------------------------------------------------------ exceptions
def _student_frames(e):
    """[(qualified name, line)] of the frames of models.py in ``e``'s traceback, outermost first."""
    out = []
    for frame, lineno in traceback.walk_tb(e.__traceback__):
        # _Graded.__getattr__ only turns a missing layer into a TODO message: the line that asked for it is the one
        if os.path.basename(frame.f_code.co_filename) == STUDENT_FILE and frame.f_code.co_name != "__getattr__":
            out.append((frame.f_code.co_qualname, lineno))
    return out


def _short(qualname):
    return qualname.rsplit(".", 1)[-1]


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def describe(e):
    """One line for an exception raised by models.py: type, first line of its message, and where in models.py it
    was raised, with the chain of calls that led there (outermost last)."""
    text = _first_line(e)
    frames = _student_frames(e)
    if isinstance(e, NotImplementedError) and text.startswith("TODO"):
        where = f" (models.py line {frames[-1][1]}, in {frames[-1][0]})" if frames else ""
        return f"{text} is not done yet{where}" if "layer" not in text else f"{text}{where}"
    if not frames:
        return f"{type(e).__name__}: {text}"
    (name, line), callers = frames[-1], frames[:-1]
    chain = "".join(f", called from {_short(n)} at line {ln}" for n, ln in reversed(callers))
    return f"{type(e).__name__}: {text} (models.py line {line}, in {name}{chain}){_bad_arguments(e, callers)}"


def _bad_arguments(e, callers):
    """Why the caller is to blame, when a watched method (see ``watch``) was given arguments whose rows disagree."""
    bad = getattr(e, "_public_checks_arguments", None)
    if not bad:
        return ""
    method, shapes = bad
    caller = next((n for n, _ in reversed(callers) if _short(n) != method), None)
    who = f"{_short(caller)} passed {method}" if caller else f"{method} was given"
    listed = ", ".join(f"{n} {tuple(s)}" for n, s in shapes)
    return (
        f": {who} arguments whose rows disagree ({listed}) — each argument must hold the same rows, the first num "
        f"of each (e.g. h[:num], c[:num])"
    )


def crash(e):
    """A Failure for an exception raised while a check ran: named after the method of models.py the check called
    (the outermost frame of models.py), grouped by the exception and the line that raised it."""
    frames = _student_frames(e)
    text = describe(e)
    if isinstance(e, NotImplementedError) and _first_line(e).startswith("TODO"):
        return failure(text)
    cause = f"{type(e).__name__}: {_first_line(e)} @ {frames[-1][1] if frames else '?'}"
    return failure(f"{label(frames[0][0])}: {text}" if frames else text, cause)


def watch(module, method="one_step"):
    """Wrap ``module.method`` (on this instance only) so that an exception raised inside it records the shapes of
    its tensor arguments when their first dimensions (the rows) disagree. It changes nothing else."""
    inner = getattr(module, method, None)
    if not callable(inner):
        return module

    def watched(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except Exception as e:
            shapes = _tensor_arguments(inner, args, kwargs)
            if len({s[0] for _, s in shapes if len(s)}) > 1 and not hasattr(e, "_public_checks_arguments"):
                try:
                    e._public_checks_arguments = (method, shapes)
                except AttributeError:  # an exception without a __dict__: report it without the diagnosis
                    pass
            raise

    object.__setattr__(module, method, watched)
    return module


def _tensor_arguments(fn, args, kwargs):
    try:
        named = list(inspect.signature(fn).bind(*args, **kwargs).arguments.items())
    except (TypeError, ValueError):
        named = [(f"argument {i + 1}", a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(n, tuple(a.shape)) for n, a in named if torch.is_tensor(a)]


def blame_earlier(checks, part, *names):
    """Run these earlier checks ("name" of ``part``, or "part/name") of ``checks`` ([(part, name, function)]): a FAIL
    of theirs, a cause that comes first, is raised as the calling check's, so that the two are one FAIL line."""
    want = {n if "/" in n else f"{part}/{n}" for n in names}
    for p, name, fn in checks:
        if f"{p}/{name}" in want:
            fn()


# ------------------------------------------------------------------------------------------------ grouping
NAMED = re.compile(r"(?:TODO )?(\w+)\.(\w+)")


def _rank(msg):
    """Where the method a message names comes in the dependency order (unknown methods last)."""
    m = NAMED.match(msg)
    if not m:
        return (len(METHOD_ORDER), len(CLASS_ORDER))
    cls, method = m.groups()
    full = f"{cls}.{method}"
    order = METHOD_ORDER.index(full) if full in METHOD_ORDER else None
    if order is None:
        order = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (order, CLASS_ORDER.index(cls) if cls in CLASS_ORDER else len(CLASS_ORDER))


def group(results):
    """The FAILs of ``results`` ([(part, name, ok, message)]) grouped by cause, in the order of their first check.
    Each group is a dict: ``message`` (that of the member earliest in the dependency order), ``checks`` (part/name
    of every member, in check order), ``rank``."""
    groups = {}
    for i, (part, name, ok, msg) in enumerate(results):
        if ok:
            continue
        g = groups.setdefault(getattr(msg, "cause", "") or str(msg), {"first": i, "checks": [], "members": []})
        g["checks"].append(f"{part}/{name}")
        g["members"].append((_rank(str(msg)), i, str(msg)))
    out = []
    for g in groups.values():
        rank, _, message = min(g["members"])
        named = NAMED.match(message)
        out.append(
            {
                "first": g["first"],
                "checks": g["checks"],
                "message": message,
                "rank": rank,
                "names": named.group(0) if named else message.split(":", 1)[0],
            }
        )
    return sorted(out, key=lambda g: g["first"])


def fix_first(groups):
    """The group to fix first: the earliest in the dependency order (then the earliest check)."""
    return min(groups, key=lambda g: (g["rank"], g["first"])) if groups else None
