"""The grading process of ONE submission — copied into its sandbox as ``_grade_child.py`` and run there by the
grader (``batch.py``) in a fresh process group with a memory limit and a wall-clock timeout.

    python _grade_child.py FD PER_TEST_TIMEOUT_S MEMORY_MB

The sandbox holds ``captioning/`` (the reference kit with the student's ``models.py``), ``reference_models.py``
(the reference solution), ``_hidden_tests.py`` and ``_hidden_harness.py``. Results go, one JSON object per line, to
the pipe FD (so nothing the student prints can be mistaken for a result): ``ready``, ``import``, one ``test`` per
hidden test, ``done``.

Standard library only until the student's code is imported; no traceback is ever sent (it would quote the hidden
tests' source): messages are the hidden tests' own texts, or the student's exception with its line in models.py.
"""
import json
import os
import re
import resource
import signal
import sys
import time
import traceback

_ALLOC = re.compile(r"can't allocate memory|not enough memory|DefaultCPUAllocator|bad_alloc|out of memory|"
                    r"Cannot allocate memory|failed to map segment", re.IGNORECASE)


class TestTimeout(BaseException):
    """Raised by SIGALRM when one test (or the import) runs past its limit; a BaseException so that a student's
    ``except Exception`` does not swallow it."""


def _on_alarm(signum, frame):
    raise TestTimeout()


def classify(e):
    if isinstance(e, TestTimeout):
        return "timeout"
    if isinstance(e, MemoryError) or (isinstance(e, (RuntimeError, OSError, ImportError)) and _ALLOC.search(str(e))):
        return "memory"
    if isinstance(e, SystemExit):
        return "exit"
    return "error"


def describe(e, models_path, limit_s=None):
    """A message about an exception from the student's code, naming its line in models.py (never other sources)."""
    if isinstance(e, TestTimeout):
        return f"did not finish within {limit_s:g} s (an endless loop?)"
    if isinstance(e, SystemExit):
        return f"your code called sys.exit({e.code!r}); never exit from models.py"
    where = ""
    for fs in reversed(traceback.extract_tb(e.__traceback__)):
        if os.path.abspath(fs.filename) == models_path:
            where = f" (models.py line {fs.lineno}, in {fs.name})"
            break
    text = " ".join(str(e).split())[:400]
    if classify(e) == "memory":
        return f"ran out of memory: {type(e).__name__}: {text}{where}"
    return f"{type(e).__name__}: {text}{where}"


def _vm_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    fd, per_test, memory_mb = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    chan = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(**kw):
        chan.write(json.dumps(kw) + "\n")
        chan.flush()

    here = os.path.dirname(os.path.abspath(__file__))
    models_path = os.path.join(here, "captioning", "models.py")
    if sys.path[0] != here:
        sys.path.insert(0, here)

    import torch

    torch.set_num_threads(1)
    import captioning.errors  # noqa: F401  (the sandbox's package, not an installed one)
    import reference_models
    import _hidden_tests as ht

    if os.path.dirname(os.path.abspath(captioning.errors.__file__)) != os.path.join(here, "captioning"):
        emit(event="fatal", message=f"captioning was imported from {captioning.errors.__file__}, not the sandbox")
        return
    # From here on the student's code may run: tighten the address-space limit to what is mapped now (Python,
    # torch, torchvision) plus the submission's allowance. Lowering the hard limit cannot be undone.
    vm = _vm_bytes()
    if memory_mb > 0 and vm:
        limit = vm + memory_mb * 2 ** 20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    emit(event="ready", vm_mb=None if vm is None else round(vm / 2 ** 20))

    signal.signal(signal.SIGALRM, _on_alarm)
    t0 = time.time()
    try:
        signal.setitimer(signal.ITIMER_REAL, per_test)
        import captioning.models as stu
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as e:  # noqa: BLE001 - anything the student's import does
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit(event="import", ok=False, kind=classify(e), message=describe(e, models_path, per_test),
             seconds=round(time.time() - t0, 3))
        chan.close()
        os._exit(0)
    if os.path.abspath(stu.__file__) != models_path:
        emit(event="fatal", message=f"captioning.models came from {stu.__file__}")
        return
    emit(event="import", ok=True, seconds=round(time.time() - t0, 3))

    ctx = ht.Context(reference_models, stu)
    for name, (region, fn) in ht.TESTS.items():
        t0 = time.time()
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test)
            fn(ctx)
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok, kind, msg = True, "pass", ""
        except ht.Failed as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok, kind, msg = False, "fail", str(e)
        except BaseException as e:  # noqa: BLE001
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok, kind, msg = False, classify(e), describe(e, models_path, per_test)
        emit(event="test", name=name, region=region, ok=ok, kind=kind, message=msg[:1500],
             seconds=round(time.time() - t0, 3))
    emit(event="done")
    chan.close()
    os._exit(0)  # skip atexit handlers the student's code may have registered


if __name__ == "__main__":
    main()
