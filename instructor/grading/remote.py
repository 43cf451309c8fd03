"""The grader's side of one submission's process (``child.py`` in its sandbox): start it, send requests, answer
its calls back to the reference, keep the tail of its output, enforce deadlines, and end it with every process it
started.

``Remote.request(msg, limit)`` returns the child's reply (a dict: ``ok``, ``value`` or ``kind``/``message``);
raises ``ChildGone`` when the process ended or broke the protocol and ``ChildTimeout`` when it did not answer in
time (the process is then killed: a child that blocks SIGALRM cannot hang the batch).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

import torch

from instructor.grading import wire
from instructor.grading.sandbox import BASE_ADDRESS_SPACE_MB, preexec

LOG_TAIL = 64 * 1024
GRACE_S = 5.0  # beyond a request's own limit (the child's alarm fires first)


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ChildGone(Exception):
    pass


class ChildTimeout(Exception):
    pass


class ProtocolError(ChildGone):
    """The child sent something outside the protocol (undecodable, out of turn, a reply of the wrong shape): it is
    ended like a crashed one, and the submission's status says ``protocol-error``."""


class Remote:
    def __init__(self, cmd, cwd, env, memory_mb, deadline, cgroups=None, refcall=None, cpu_seconds=None):
        """``cmd``: the command line with ``{in}``/``{out}`` for the pipe numbers; ``deadline``: time.monotonic()
        after which everything is killed; ``refcall(msg)`` answers the child's calls to the reference."""
        self.deadline, self.cgroups, self.refcall = deadline, cgroups, refcall
        self.log, self.log_bytes, self.reader = bytearray(), 0, wire.Reader()
        self.pending, self.returncode, self.killed = [], None, False
        # True once the child may hold a half-read message: its alarm fired while it waited for our answer to one
        # of its reference calls (a slow grader). Its next read could take that answer for a request, shifting
        # every later reply by one: the job restarts it before the next test instead.
        self.unsure = False
        c_in, p_out = os.pipe()  # grader -> child
        p_in, c_out = os.pipe()  # child -> grader
        cmd = [c.replace("{in}", str(c_in)).replace("{out}", str(c_out)) for c in cmd]
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(c_in, c_out),
                close_fds=True,
                start_new_session=True,
                preexec_fn=preexec(
                    (memory_mb + BASE_ADDRESS_SPACE_MB) * 2**20, cgroups.procs_files if cgroups else [], cpu_seconds
                ),
            )
        except BaseException:
            for fd in (p_in, p_out):
                os.close(fd)
            raise
        finally:
            os.close(c_in)
            os.close(c_out)
        self.r, self.w, self.o = p_in, p_out, self.proc.stdout.fileno()
        os.set_blocking(self.w, False)
        self.open = {self.r, self.o}

    # ---------------------------------------------------------------------------------------------------- I/O
    def _pump(self, until):
        """Read whatever is ready (output into the log, messages into ``pending``) until a message is pending or
        ``until`` passes. Raises ChildGone / ChildTimeout."""
        while not self.pending:
            now = time.monotonic()
            if now > min(until, self.deadline):
                raise ChildTimeout()
            if self.r not in self.open:
                raise ChildGone()
            ready, _, _ = select.select(list(self.open), [], [], min(until, self.deadline) - now)
            for fd in ready:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    data = b""
                if fd == self.o:
                    if not data:
                        self.open.discard(fd)
                    self.log_bytes += len(data)
                    self.log += data
                    del self.log[: max(0, len(self.log) - LOG_TAIL)]
                    continue
                if not data:
                    self.open.discard(fd)
                    continue
                try:
                    self.pending.extend(self.reader.feed(data))
                except wire.WireError as e:
                    raise ProtocolError(f"sent a malformed message ({e})") from None

    def _write(self, value, until):
        buf = memoryview(wire.encode(value))
        while buf:
            now = time.monotonic()
            if now > min(until, self.deadline):
                raise ChildTimeout()
            _, ready, _ = select.select([], [self.w], [], min(until, self.deadline) - now)
            if ready:
                try:
                    buf = buf[os.write(self.w, buf) :]
                except BlockingIOError:
                    continue
                except OSError:
                    raise ChildGone() from None

    def next_message(self, until):
        self._pump(until)
        return self.pending.pop(0)

    def request(self, msg, limit):
        """Send ``msg`` (the child stops it after ``limit`` s); answer its reference calls; return its reply."""
        until = time.monotonic() + limit + GRACE_S
        self._write(dict(msg, limit=limit), until)
        answered = False
        while True:
            m = self.next_message(until)
            if isinstance(m, dict) and "reply" in m and isinstance(m["reply"], dict):
                reply = checked_reply(msg, m["reply"])
                if answered and not reply["ok"] and reply.get("kind") == "timeout":
                    self.unsure = True
                return reply
            if isinstance(m, dict) and m.get("op") == "refcall" and self.refcall is not None:
                self._write(self.refcall(checked_refcall(m)), until)
                answered = True
                continue
            raise ProtocolError("sent a message out of turn")

    # ------------------------------------------------------------------------------------------------ the end
    def close(self, wait=2.0):
        """Ask the child to exit, then kill its process group (and its cgroups, which hold every descendant)."""
        if self.proc.poll() is None and not self.killed:
            try:
                self._write({"op": "exit"}, time.monotonic() + 0.5)
            except (ChildGone, ChildTimeout):
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self):
        self.killed = True
        kill_group(self.proc.pid)
        if self.cgroups is not None:
            self.cgroups.kill_all()
        try:
            self.returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.returncode = None
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            while self.o in self.open and select.select([self.o], [], [], 0.2)[0]:
                data = os.read(self.o, 1 << 16)
                if not data:
                    break
                self.log_bytes += len(data)
                self.log += data
                del self.log[: max(0, len(self.log) - LOG_TAIL)]
        except OSError:
            pass
        self.proc.stdout.close()
        self.open.clear()

    def log_text(self):
        return bytes(self.log).decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------ checking what comes in
MAX_TEXT = 20_000  # characters of an error message kept from a reply (clipped further where it is stored)


def checked_refcall(m):
    """The child's call of a reference method, its fields of the protocol's types (else ProtocolError)."""
    if (
        not isinstance(m.get("id"), (int, str))
        or isinstance(m.get("id"), bool)
        or not isinstance(m.get("path"), str)
        or not isinstance(m.get("args", ()), (list, tuple))
        or not isinstance(m.get("kwargs", {}), dict)
    ):
        raise ProtocolError("sent a call to the reference whose id, path, args or kwargs are of the wrong type")
    return m


def checked_reply(request, reply):
    """``reply`` to ``request`` checked against the protocol before any test uses it.

    What only a tampered child sends (``ok`` not a bool, an error's kind or message not a string, an object id that
    is not an int) raises ProtocolError. What a student's method may honestly return but no test can compare
    becomes an error reply whose message says what is wrong (the test fails with it): a floating tensor that is
    not float32 (a decoder that keeps its state in float64), a tensor on the ``meta`` device where the inputs were
    on the CPU, ``forward``'s decode_lengths that are not a list of ints (None); a 1-d integer tensor of lengths
    becomes a list."""
    ok = reply.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("sent a reply without a true/false 'ok'")
    if not ok:
        kind, message = reply.get("kind", "error"), reply.get("message", "")
        if not isinstance(kind, str) or not isinstance(message, str):
            raise ProtocolError("sent an error reply whose kind or message is not a string")
        return {"ok": False, "kind": kind[:40], "message": message[:MAX_TEXT]}
    value, op = reply.get("value"), request.get("op")
    if op == "hybrid" and not (
        isinstance(value, dict) and isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool)
    ):
        raise ProtocolError(f"answered 'hybrid' with {type(value).__name__} instead of an object id")
    if op == "build" and not isinstance(value, dict):
        raise ProtocolError(f"answered 'build' with {type(value).__name__} instead of a description")
    if op != "call":
        return {"ok": True, "value": value}
    method = request.get("method", "the method")
    try:
        value = _checked_tensors(value, on_cpu=request.get("device", "cpu") == "cpu")
    except _Refused as e:
        return {"ok": False, "kind": "error", "message": f"{method} returned {e}"}
    if method == "forward" and isinstance(value, tuple) and len(value) >= 3:
        lengths = value[2]
        if (
            isinstance(lengths, torch.Tensor)
            and lengths.dim() == 1
            and not lengths.is_floating_point()
            and lengths.device.type == "cpu"
        ):
            lengths = lengths.tolist()
        if not (
            isinstance(lengths, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in lengths)
        ):
            return {
                "ok": False,
                "kind": "error",
                "message": f"forward returned decode_lengths of type {type(value[2]).__name__}: it should be "
                f"the list of ints (caption_lengths - 1).tolist(), one per caption",
            }
        value = (*value[:2], list(lengths), *value[3:])
    return {"ok": True, "value": value}


class _Refused(Exception):
    pass


def _checked_tensors(v, on_cpu, depth=0):
    """``v`` if every tensor in it can be compared with the reference's; raises _Refused naming the first that
    cannot: a floating tensor that is not float32 (float64 state breaks the next step, whose layers are float32),
    or a tensor on the meta device when the request ran on the CPU (its numbers do not exist)."""
    if depth > wire.MAX_DEPTH + 2:
        raise _Refused("values nested too deep")
    if isinstance(v, torch.Tensor):
        if on_cpu and v.device.type == "meta":
            raise _Refused(
                f"a tensor of shape {tuple(v.shape)} on the meta device, although every input was on "
                f"the CPU: a module or tensor was moved to the meta device (.to('meta'))"
            )
        if v.is_floating_point() and v.dtype != torch.float32:
            raise _Refused(
                f"a {str(v.dtype).removeprefix('torch.')} tensor of shape {tuple(v.shape)}: the model "
                f"and its inputs are float32, keep every tensor float32 (a {v.dtype} state or score "
                f"breaks the next step's float32 layers; do not call .double() or .half())"
            )
        return v
    if isinstance(v, (tuple, list)):
        for x in v:
            _checked_tensors(x, on_cpu, depth + 1)
    elif isinstance(v, dict):
        for x in v.values():
            _checked_tensors(x, on_cpu, depth + 1)
    return v
