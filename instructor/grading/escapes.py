"""``python -m instructor grade --check-sandbox``: try each known escape from a grading sandbox and print what is
contained. The probe runs exactly as a submission's process runs (same command, same cgroups, same limits); what
can be checked from outside (files, processes, a listening socket) is checked here, not taken from the probe.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from instructor.grading.sandbox import (
    BASE_ADDRESS_SPACE_MB,
    LAYERS,
    Cgroups,
    child_env,
    cpu_budget,
    preexec,
    probe_layers,
)

PROBE = r"""
import json, os, socket, sys, time
args = json.loads(sys.argv[1])
def say(name, contained, detail=""):
    print(json.dumps({"name": name, "contained": contained, "detail": str(detail)[:200]}), flush=True)
for name, path in (("read the reference solution", args["reference"]), ("read the hidden tests", args["hidden"])):
    try:
        open(path).read(100); say(name, False, path)
    except OSError as e:
        say(name, True, e.strerror)
try:
    with open(args["victim"], "w") as f: f.write("overwritten")
    say("overwrite another submission's models.py", False)
except OSError as e:
    say("overwrite another submission's models.py", True, e.strerror)
try:
    cwd = os.readlink(f"/proc/{os.getppid()}/cwd")
    with open(os.path.join(cwd, "ESCAPED"), "w") as f: f.write("x")
    say("write into the grader's folder via /proc/<ppid>/cwd", False, cwd)
except OSError as e:
    say("write into the grader's folder via /proc/<ppid>/cwd", True, e.strerror)
pids = [p for p in os.listdir("/proc") if p.isdigit()]
say("see the grader's processes", len(pids) < 10, f"{len(pids)} processes visible")
say("run as root", os.getuid() != 0, f"uid {os.getuid()}")
# the seccomp filter's rules, tried with the kernel's own numbers (written out here, not taken from seccomp.py, so
# that a wrong number there shows up as an open call here)
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def syscall(fn):
    ctypes.set_errno(0)
    r = fn()
    e = ctypes.get_errno()
    return r, (f"returned {r}" + (f", {errno.errorcode.get(e, e)}" if r == -1 else ""))
nr = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(os.uname().machine)
if nr is None:
    for name in ("add_key", "keyctl"):
        say(f"use the kernel keyring shared by the sandboxes ({name})", None,
            f"not tried: system call numbers unknown for {os.uname().machine}")
else:
    # add_key("user", …) into the user keyring (KEY_SPEC_USER_KEYRING = -4: one per uid, so every sandbox's)
    r, detail = syscall(lambda: libc.syscall(nr[0], b"user", args["token"].encode(), b"answers", 7, ctypes.c_int(-4)))
    say("use the kernel keyring shared by the sandboxes (add_key)", r == -1, detail)
    if r > 0:  # not contained: take the key out again (KEYCTL_UNLINK = 9)
        libc.syscall(nr[1], 9, ctypes.c_int(r), ctypes.c_int(-4))
    r, detail = syscall(lambda: libc.syscall(nr[1], 0, ctypes.c_int(-4), 0))  # KEYCTL_GET_KEYRING_ID
    say("use the kernel keyring shared by the sandboxes (keyctl)", r == -1, detail)
pid = os.fork()
if pid == 0:  # in a child: a probe that got its own user namespace would see the rest differently
    r, detail = syscall(lambda: libc.unshare(0x10000000))  # CLONE_NEWUSER
    os._exit(0 if r == 0 else (ctypes.get_errno() or 255) & 255)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
try:  # the per-request timers are the child's own; this limit is the one a spinning process cannot lift
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    say("lift the CPU-time budget (RLIMIT_CPU)", False, f"was {hard}, raised to unlimited")
except (ValueError, OSError) as e:
    say("lift the CPU-time budget (RLIMIT_CPU)", True, f"{soft} s, then SIGKILL at {hard} s; raising it: {e}")
say("create a user namespace (unshare CLONE_NEWUSER)", code != 0, "succeeded" if code == 0 else
    (f"returned -1, {errno.errorcode.get(code, code)}" if code > 0 else f"the child died of signal {-code}"))
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", args["port"])); say("connect to 127.0.0.1", False)
except OSError as e:
    say("connect to 127.0.0.1", True, e)
for i in range(3):  # children that leave the process group
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-S", "-c", "import time; time.sleep(600)", args["token"]])
kids = []
for i in range(3):  # 3 x 1 GiB in forked children
    pid = os.fork()
    if pid == 0:
        try:
            b = bytearray(b"\x01") * (1 << 30)
            time.sleep(2)
            os._exit(0)
        except MemoryError:
            os._exit(3)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
say("3 forked children x 1 GiB (limit 2048 MB beyond torch)", any(c != 0 for c in codes), f"exit codes {codes}")
# the parent a submission sees: the namespace's own init (SIGKILL from inside cannot reach it), not the grader
say("SIGKILL the grader (getppid)", os.getppid() == 1, f"getppid() = {os.getppid()}")
"""


def check_sandbox(out=print):
    """Run the probe; print one line per escape. True when every escape is contained."""
    from captioning.check import kit_root

    layers = probe_layers()
    for name in LAYERS:
        ok, detail = layers[name]
        out(f"layer {name:<14} {'available' if ok else 'MISSING'}: {detail}")
    active = [k for k in LAYERS if layers[k][0]]
    token = f"escape-probe-{secrets.token_hex(6)}"
    work = Path(tempfile.mkdtemp(prefix="grade-check-"))
    victim = work / "other" / "models.py"
    victim.parent.mkdir()
    victim.write_text("untouched")
    sandbox = work / "sandbox"
    sandbox.mkdir()
    (sandbox / "probe.py").write_text("import torch\n" + PROBE)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    root = kit_root()
    args = {
        "reference": str(root / "captioning" / "models.py"),
        "hidden": str(root / "instructor" / "grading" / "hidden_tests.py"),
        "victim": str(victim),
        "port": listener.getsockname()[1],
        "token": token,
    }
    cg = Cgroups(f"grade-check-{os.getpid()}", 2048, active)
    try:
        rows = _run_probe(active, sandbox, args, cg)
        try:
            conn, _ = listener.accept()
            conn.close()
            rows.append({"name": "a connection reached the grader's socket", "contained": False})
        except OSError:
            pass
        cg.kill_all()
        time.sleep(0.2)
        rows.append({"name": "children that called setsid() outlive the sandbox", "contained": not alive_with(token)})
        rows.append({"name": "another submission's file unchanged", "contained": victim.read_text() == "untouched"})
        rows.append(
            {
                "name": "nothing written into the kit",
                "contained": not (root / "ESCAPED").exists() and not (Path.cwd() / "ESCAPED").exists(),
            }
        )
    finally:
        listener.close()
        cg.remove()
        for pid in alive_with(token):
            os.kill(pid, 9)
        shutil.rmtree(work, ignore_errors=True)
    ok = True
    for r in rows:
        c = r.get("contained")
        ok &= c is not False
        out(
            f"{'contained' if c else ('n/a' if c is None else 'NOT CONTAINED'):<14} {r['name']}"
            + (f" ({r['detail']})" if r.get("detail") else "")
        )
    out("every escape is contained" if ok else "some escapes are NOT contained: do not grade untrusted code here")
    return ok


def _run_probe(layers, sandbox, args, cg):
    from instructor.grading.job import command

    where = "/sandbox" if "bwrap" in layers else str(sandbox)
    argv, cwd, pypath = command(layers, sandbox, [f"{where}/probe.py", json.dumps(args)])
    env = child_env("/tmp" if "bwrap" in layers else sandbox, pypath)
    r = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
        start_new_session=True,
        preexec_fn=preexec((2048 + BASE_ADDRESS_SPACE_MB) * 2**20, cg.procs_files, cpu_budget(20.0, 1)),
    )
    rows = []
    for line in r.stdout.decode(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        rows.append({"name": "the probe ran", "contained": False, "detail": r.stderr.decode(errors="replace")[-300:]})
    return rows


def alive_with(token):
    """Pids of the processes whose command line holds ``token``."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if token.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found
