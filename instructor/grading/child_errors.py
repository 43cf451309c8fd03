"""How the process that runs a submission's code (``child.py``) names what went wrong in it — copied into the
sandbox as ``_child_errors.py`` beside ``_grade_child.py``. Standard library only: it is imported before the
student's code.

``TestTimeout`` is raised by the request timers (``on_alarm``); ``classify`` gives an exception's kind (timeout,
memory, exit, error) and ``describe`` the message for the student, naming the line of models.py it came from and
never quoting another file.
"""

import os
import re
import signal
import traceback

_ALLOC = re.compile(
    r"can't allocate memory|not enough memory|DefaultCPUAllocator|bad_alloc|out of memory|"
    r"Cannot allocate memory|failed to map segment",
    re.IGNORECASE,
)


class TestTimeout(BaseException):
    """Raised when one request runs past its limit: SIGPROF after ``cpu_limit`` seconds of CPU time (so a busy
    machine does not cost a correct submission its points), SIGALRM after ``limit`` seconds of wall-clock time (a
    backstop for code that sleeps). A BaseException: ``except Exception`` in the student's code does not swallow
    it. The grader kills the process if neither fires (the student's code may have changed the timers)."""

    def __init__(self, clock="cpu"):
        super().__init__(clock)
        self.clock = clock


def on_alarm(signum, frame):
    raise TestTimeout("cpu" if signum == signal.SIGPROF else "wall")


def classify(e):
    if isinstance(e, TestTimeout):
        return "timeout"
    if isinstance(e, MemoryError) or (isinstance(e, (RuntimeError, OSError, ImportError)) and _ALLOC.search(str(e))):
        return "memory"
    if isinstance(e, SystemExit):
        return "exit"
    return "error"


def describe(e, models_path, limit_s, cpu_s=None):
    if isinstance(e, TestTimeout):
        if e.clock == "cpu" and cpu_s is not None:
            return f"did not finish within {cpu_s:g} s of CPU time (an endless loop?)"
        return f"did not finish within {limit_s:g} s (an endless loop, or waiting for something?)"
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
