"""The seccomp filter of the grading sandbox, given to bubblewrap as ``--seccomp FD`` (a classic-BPF program:
an array of ``struct sock_filter``, which bubblewrap installs right before it runs the sandboxed program, after
setting up its namespaces; seccomp filters are inherited by every descendant and cannot be removed).

Why a filter at all: namespaces do not isolate everything. The kernel keyring is shared by every process of one
user (uid 65534 for every sandbox, or the grader's own user without root), so one submission could leave answers
there for another, or for a later run, to read (``add_key``/``request_key``/``keyctl``). And a new user namespace
(``unshare``/``clone`` with ``CLONE_NEWUSER``, or ``setns``) hands a process every capability inside it, the
widest door to kernel bugs and a way around the sandbox's own namespaces. Nothing a submission may legitimately do
(torch, numpy, threads, ``fork``) needs any of these.

What the program does (one architecture: the one the grader runs on, x86-64 or aarch64):

* a system call of another architecture (e.g. the 32-bit ``int 0x80`` entry on x86-64), or an x32 call
  (numbers with bit 30 set), fails with EPERM: the numbers below would mean other calls there;
* ``add_key``, ``request_key``, ``keyctl``, ``unshare``, ``setns`` fail with EPERM;
* ``clone`` with any namespace flag (``CLONE_NEWNS``/``NEWCGROUP``/``NEWUTS``/``NEWIPC``/``NEWUSER``/``NEWPID``/
  ``NEWNET``) fails with EPERM; without them (threads, ``fork``) it is allowed;
* ``clone3`` fails with ENOSYS: its flags are in memory, which a seccomp filter cannot read, so it is refused
  whole; ENOSYS ("not implemented") makes glibc fall back to ``clone``, which the filter can check;
* everything else is allowed.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import struct
import sys
import tempfile

# linux/audit.h
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# the system call numbers (arch/x86/entry/syscalls/syscall_64.tbl; include/uapi/asm-generic/unistd.h for aarch64)
SYSCALLS = {
    "x86_64": {
        "clone": 56,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "setns": 308,
        "clone3": 435,
    },
    "aarch64": {
        "clone": 220,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "unshare": 97,
        "setns": 268,
        "clone3": 435,
    },
}
X32_SYSCALL_BIT = 0x40000000
CLONE_NS_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
REFUSED = ("add_key", "request_key", "keyctl", "unshare", "setns")

# linux/filter.h, linux/seccomp.h
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16  # args[0]'s low 32 bits (both architectures are little-endian)


def supported(machine=None):
    return (machine or platform.machine()) in AUDIT_ARCH


def program(machine=None):
    """The filter for ``machine`` (default: this one) as bytes (``struct sock_filter`` in native byte order)."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        raise ValueError(f"no seccomp filter for the architecture {machine}")
    nr = SYSCALLS[machine]
    # (code, jump-if-true label, jump-if-false label, k); labels are resolved to relative offsets below
    code = [
        (BPF_LD_W_ABS, None, None, OFF_ARCH),
        (BPF_JEQ_K, None, "eperm", AUDIT_ARCH[machine]),
        (BPF_LD_W_ABS, None, None, OFF_NR),
    ]
    if machine == "x86_64":
        code.append((BPF_JGE_K, "eperm", None, X32_SYSCALL_BIT))
    code += [(BPF_JEQ_K, "eperm", None, nr[name]) for name in REFUSED]
    code += [
        (BPF_JEQ_K, "enosys", None, nr["clone3"]),
        (BPF_JEQ_K, None, "allow", nr["clone"]),
        (BPF_LD_W_ABS, None, None, OFF_ARG0),
        (BPF_JSET_K, "eperm", "allow", CLONE_NS_FLAGS),
    ]
    labels = {"allow": len(code), "eperm": len(code) + 1, "enosys": len(code) + 2}
    code += [
        (BPF_RET_K, None, None, SECCOMP_RET_ALLOW),
        (BPF_RET_K, None, None, SECCOMP_RET_ERRNO | EPERM),
        (BPF_RET_K, None, None, SECCOMP_RET_ERRNO | ENOSYS),
    ]
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        offs = [0 if j is None else labels[j] - i - 1 for j in (jt, jf)]
        assert all(0 <= o < 256 for o in offs)
        out += struct.pack("=HBBI", op, offs[0], offs[1], k)
    return bytes(out)


_FILE = None
# Opens the filter on the lowest free descriptor (never one the grader passes to the child: those are open) and
# becomes bubblewrap with ``--seccomp <that descriptor>``. A fixed number (a shell's ``9<file``) could replace one of
# the child's pipes.
WRAPPER = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "os.set_inheritable(fd, True)\n"
    "os.execvp(sys.argv[2], [sys.argv[2], '--seccomp', str(fd), *sys.argv[3:]])\n"
)


def program_file():
    """A file holding ``program()`` (made once per grader process, in a private temporary folder; the filter is
    not secret, the folder only keeps other users from swapping the file)."""
    global _FILE
    if _FILE is None or not os.path.isfile(_FILE):
        folder = tempfile.mkdtemp(prefix="grade-seccomp-")
        path = os.path.join(folder, "filter.bpf")
        with open(path, "wb") as f:
            f.write(program())
        atexit.register(shutil.rmtree, folder, True)
        _FILE = path
    return _FILE


def wrap(bwrap_argv):
    """``bwrap_argv`` (starting with "bwrap") run through a tiny Python (``WRAPPER``: isolated mode, no site) that
    opens the filter file and then becomes bubblewrap (``execvp``) with ``--seccomp FD``: every caller (the
    grader's Popen, the probe, the escape checks) gets the filter without passing descriptors itself."""
    assert bwrap_argv[0] == "bwrap"
    return [sys.executable, "-S", "-I", "-c", WRAPPER, program_file(), *bwrap_argv]
