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


class Remote:
    def __init__(self, cmd, cwd, env, memory_mb, deadline, cgroups=None, refcall=None, cpu_seconds=None):
        """``cmd``: the command line with ``{in}``/``{out}`` for the pipe numbers; ``deadline``: time.monotonic()
        after which everything is killed; ``refcall(msg)`` answers the child's calls to the reference."""
        self.deadline, self.cgroups, self.refcall = deadline, cgroups, refcall
        self.log, self.log_bytes, self.reader = bytearray(), 0, wire.Reader()
        self.pending, self.returncode, self.killed = [], None, False
        c_in, p_out = os.pipe()  # grader -> child
        p_in, c_out = os.pipe()  # child -> grader
        cmd = [c.replace("{in}", str(c_in)).replace("{out}", str(c_out)) for c in cmd]
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(c_in, c_out), close_fds=True, start_new_session=True,
                preexec_fn=preexec((memory_mb + BASE_ADDRESS_SPACE_MB) * 2 ** 20,
                                   cgroups.procs_files if cgroups else [], cpu_seconds))
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
                    del self.log[:max(0, len(self.log) - LOG_TAIL)]
                    continue
                if not data:
                    self.open.discard(fd)
                    continue
                try:
                    self.pending.extend(self.reader.feed(data))
                except wire.WireError as e:
                    raise ChildGone(f"sent a malformed message ({e})") from None

    def _write(self, value, until):
        buf = memoryview(wire.encode(value))
        while buf:
            now = time.monotonic()
            if now > min(until, self.deadline):
                raise ChildTimeout()
            _, ready, _ = select.select([], [self.w], [], min(until, self.deadline) - now)
            if ready:
                try:
                    buf = buf[os.write(self.w, buf):]
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
        while True:
            m = self.next_message(until)
            if isinstance(m, dict) and "reply" in m and isinstance(m["reply"], dict):
                return m["reply"]
            if isinstance(m, dict) and m.get("op") == "refcall" and self.refcall is not None:
                self._write(self.refcall(m), until)
                continue
            raise ChildGone("sent a message out of turn")

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
                del self.log[:max(0, len(self.log) - LOG_TAIL)]
        except OSError:
            pass
        self.proc.stdout.close()
        self.open.clear()

    def log_text(self):
        return bytes(self.log).decode("utf-8", "replace")
