"""Points only for code that computes the right thing, nothing shared between sandboxes or runs, a canary first,
limits in CPU time (issue 26, items 2-5). Hostile submissions are written here; each is graded in one batch beside
a correct submission that must still score 100 %:

* ``forged_init``: every ``__init__`` a ``pass`` plus a patch of the child's build/load reports (what used to pay
  the 12 ``__init__`` points) — 0 in the three ``__init__`` regions;
* ``constant``: every graded method returns constants of the right shapes (consistent with itself) — 0 in all;
* ``keyring``: tries the kernel keyring and a new user namespace at import (how one submission, or one run, left
  answers for another) — every attempt fails inside the sandbox; otherwise correct: 100 %;
* ``inputs``: prints a checksum of the inputs it is given — they come from the run's secret seed (journal/seed),
  not the fixed seeds, and a resumed run keeps the seed;
* ``busy``: ``Attention.forward`` spins forever — stopped by CPU time, loses that region only;
* (own batch) ``untimed_spin``: ``Attention.forward`` cancels the child's timers and spins — ended by the kernel
  (RLIMIT_CPU, the process's whole CPU budget), recorded as a timeout, loses that region only;
* ``dies_alone``: its process ends in one test; after the restart the tests gated on the region's correctness
  test (passed before) still pay;
* ``attn_cpu_tensor``, ``rnn_step_cpu_tensor``: a tensor made on the CPU inside ``Attention.forward`` / ``one_step``
  — only the device test fails (every graded method also runs on the ``meta`` device);
* the whole batch runs beside two busy processes (the correct ones still 100 %).

The canary: a broken environment (torch not importable in the sandbox; a venv reached through a symbolic link)
stops the batch with a message naming the cause, and no grades are written. Tests that need bubblewrap skip with
the reason where it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_grading import REFERENCE, STUDENT_EDITION, mutate, write_sub

from captioning import models as reference
from captioning.check import kit_root
from captioning.internals.errors import KitError
from instructor.grading import batch as grader
from instructor.grading import job, seccomp
from instructor.grading.hidden_harness import Context
from instructor.grading.journal import run_seed
from instructor.grading.sandbox import bwrap_args, ended_by_cpu_budget, missing_layers, preexec

MISSING = missing_layers()
NO_BWRAP = "bwrap" in MISSING
needs_bwrap = pytest.mark.skipif(
    NO_BWRAP,
    reason="bubblewrap is missing (apt-get install -y bubblewrap): the seccomp "
    "filter and the sandbox's file view are bubblewrap layers",
)
TEST_CPU_S = 4  # --test-timeout: CPU seconds per test (the busy loop's cost); the wall backstop is 5x
INIT_REGIONS = ("DecoderWithRNN.__init__", "Attention.__init__", "DecoderWithAttention.__init__")


def _inits_pass(text):
    """``text`` with the three ``__init__`` solution regions' bodies replaced by ``pass``."""
    from instructor.regions import find_regions

    for name in INIT_REGIONS:
        lines = text.splitlines(keepends=True)
        r = [x for x in find_regions(text, "models.py") if x.name == name][0]
        lines[r.begin : r.end - 1] = ["        pass  # forged\n"]
        text = "".join(lines)
    return text


def _description(cls):
    """What the child's ``build`` says about the reference ``cls`` (the report a forger sends instead)."""
    torch.manual_seed(0)
    obj = (
        reference.Attention(7, 12, 10)
        if cls == "Attention"
        else getattr(reference, cls)(
            dict(vocab_size=23, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.3), encoder_dim=7
        )
    )
    mods = [
        {
            "name": n,
            "type": type(m).__name__,
            "torch": [k.__name__ for k in type(m).__mro__ if k.__module__.startswith("torch.nn")],
            "settings": {"p": m.p} if isinstance(m, torch.nn.Dropout) else {},
        }
        for n, m in obj.named_modules()
        if n
    ]
    return {
        "modules": mods,
        "state": {k: [list(v.shape), "float32"] for k, v in obj.state_dict().items()},
        "recorded": [{"cls": "Attention", "args": [7, 12, 10], "kwargs": {}}] if cls != "Attention" else [],
    }


FORGE = """
import sys as _sys
_SERVER = _sys.modules["__main__"].Server
_DESC = json.loads({desc!r})


def _forged_build(self, req):
    oid = len(self.objects)
    self.objects[oid] = object()
    return dict(_DESC[req["cls"]], id=oid)


_SERVER.op_build = _forged_build
_SERVER.op_load = lambda self, req: {{"problems": {{}}, "extra": []}}
"""

CONSTANT = """

def _attention_forward(self, encoder_out, h):
    n, p, c = encoder_out.shape
    return encoder_out.new_zeros(n, c), encoder_out.new_full((n, p), 1.0 / p)


def _rnn_one_step(self, embeddings, h, c):
    return h.new_zeros(h.size(0), self.vocab_size), h, c


def _att_one_step(self, embeddings, encoder_out, h, c):
    return h.new_zeros(h.size(0), self.vocab_size), h.new_full((h.size(0), encoder_out.size(1)), 0.0), h, c


def _forward(self, encoder_out, encoded_captions, caption_lengths):
    n = encoder_out.size(0)
    lengths, sort_ind = caption_lengths.sort(dim=0, descending=True)
    decode_lengths = (lengths - 1).tolist()
    t = max(decode_lengths)
    out = (encoder_out.new_zeros(n, t, self.vocab_size), encoded_captions[sort_ind], decode_lengths)
    if isinstance(self, DecoderWithAttention):
        out += (encoder_out.new_zeros(n, t, encoder_out.size(1) * encoder_out.size(2)),)
    return out + (sort_ind,)


Attention.forward = _attention_forward
DecoderWithRNN.one_step = _rnn_one_step
DecoderWithAttention.one_step = _att_one_step
DecoderWithRNN.forward = DecoderWithAttention.forward = _forward
"""

KEYRING = """
import ctypes as _ct, errno as _errno, os as _os
_libc = _ct.CDLL(None, use_errno=True)
_nr = {"x86_64": (248, 250), "aarch64": (217, 219)}.get(_os.uname().machine)


def _try(name, fn):
    _ct.set_errno(0)
    r = fn()
    print(f"PROBE {name} rc={r} errno={_errno.errorcode.get(_ct.get_errno(), _ct.get_errno())}", flush=True)


if _nr:
    _try("add_key", lambda: _libc.syscall(_nr[0], b"user", b"answers", b"42", 2, _ct.c_int(-3)))  # user keyring
    _try("keyctl", lambda: _libc.syscall(_nr[1], 0, _ct.c_int(-3), 0, 0, 0))  # KEYCTL_GET_KEYRING_ID
_try("unshare_newuser", lambda: _libc.unshare(0x10000000))
_pid = _os.fork()
if _pid == 0:
    _os._exit(0)
print(f"PROBE fork ok={_os.waitpid(_pid, 0)[0] == _pid}", flush=True)
"""

INPUTS = """
import hashlib as _hashlib
_orig = Attention.forward


def _printing_forward(self, encoder_out, h):
    if encoder_out.device.type == "cpu":
        print("INPUTS", _hashlib.sha256(encoder_out.contiguous().numpy().tobytes()).hexdigest()[:16], flush=True)
    return _orig(self, encoder_out, h)


Attention.forward = _printing_forward
"""

BUSY = """
def _spin(self, encoder_out, h):
    while True:
        pass


Attention.forward = _spin
"""

UNTIMED_SPIN = """
import signal as _signal


def _untimed_spin(self, encoder_out, h):
    _signal.setitimer(_signal.ITIMER_PROF, 0)  # the child's per-request CPU timer
    _signal.setitimer(_signal.ITIMER_REAL, 0)  # and its wall-clock alarm
    while True:
        pass


Attention.forward = _untimed_spin
"""
SMALL_CPU_BUDGET_S = 10  # per process; a correct submission's process used under 3 CPU s in all (import included)


def _checksum(seed):
    x = Context(reference, seed=seed).att_in["encoder_out"]
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    subs, out = root / "submissions", root / "out"
    subs.mkdir()
    desc = json.dumps({c: _description(c) for c in ("DecoderWithRNN", "Attention", "DecoderWithAttention")})
    write_sub(subs, "correct", REFERENCE)
    write_sub(subs, "forged_init", _inits_pass(REFERENCE) + "\nimport json\n" + FORGE.format(desc=desc))
    write_sub(subs, "constant", STUDENT_EDITION + CONSTANT)
    write_sub(subs, "keyring", REFERENCE + KEYRING)
    write_sub(subs, "inputs", REFERENCE + INPUTS)
    write_sub(subs, "busy", REFERENCE + BUSY)
    # the process dies in one test (a batch of one): after the restart the region's passed correctness test counts
    write_sub(
        subs,
        "dies_alone",
        mutate(
            REFERENCE,
            "Attention.forward",
            "att1 = self.encoder_att(",
            "if encoder_out.size(0) == 1:\n            import os; os._exit(3)\n        att1 = self.encoder_att(",
        ),
    )
    # a tensor made on the CPU inside Attention.forward / one_step: only their device test fails
    write_sub(
        subs,
        "attn_cpu_tensor",
        mutate(
            REFERENCE,
            "Attention.forward",
            "alpha = F.softmax(e, dim=1)",
            "alpha = F.softmax(e, dim=1) * torch.ones(e.size(1))",
        ),
    )
    write_sub(
        subs,
        "rnn_step_cpu_tensor",
        mutate(
            REFERENCE,
            "DecoderWithRNN.one_step",
            "preds = self.fc(self.dropout(h))",
            "preds = self.fc(self.dropout(h)) + torch.zeros(1)",
        ),
    )
    # two busy processes beside the batch (a shared machine); the limits are CPU time, so they cost no point
    busy = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(2)]
    try:
        results = grader.grade(
            subs,
            out,
            jobs=2,
            timeout=180,
            memory_mb=1024,
            test_timeout=TEST_CPU_S,
            progress=False,
            allow_unsandboxed=bool(MISSING),
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return {"subs": subs, "out": out, "results": {r["id"]: r for r in results}}


def _failed(r):
    return {t: v["message"] for t, v in r["tests"].items() if not v["ok"]}


def test_correct_submission_full_marks_beside_busy_processes(batch):
    r = batch["results"]["correct"]
    assert r["status"] == "ok" and r["percent"] == 100.0, _failed(r)


def test_a_forged_init_report_earns_nothing(batch):
    r = batch["results"]["forged_init"]
    for region in INIT_REGIONS:
        assert r["regions"][region][0] == 0, (region, _failed(r))
    others = [reg for reg in r["regions"] if reg not in INIT_REGIONS]
    assert all(r["regions"][reg][0] == r["regions"][reg][1] for reg in others), _failed(r)


def test_constant_outputs_score_zero(batch):
    r = batch["results"]["constant"]
    assert r["status"] == "ok" and r["total"] == 0, {t: v["message"][:80] for t, v in r["tests"].items() if v["ok"]}
    gated = [v["message"] for v in r["tests"].values() if "earns its points only when" in v["message"]]
    assert gated, "the self-consistency tests should say they pay only with the correctness test"


@needs_bwrap
def test_keyring_and_user_namespaces_refused_in_the_sandbox(batch):
    r = batch["results"]["keyring"]
    assert r["percent"] == 100.0, _failed(r)
    probes = [ln for ln in r["log"].splitlines() if ln.startswith("PROBE")]
    assert any("unshare_newuser rc=-1 errno=EPERM" in p for p in probes), probes
    if seccomp.supported():
        assert any("add_key rc=-1 errno=EPERM" in p for p in probes), probes
        assert any("keyctl rc=-1 errno=EPERM" in p for p in probes), probes
    assert any("fork ok=True" in p for p in probes), probes  # plain fork/clone still work


@needs_bwrap
def test_seccomp_filter_refuses_keyring_and_namespaces_allows_threads():
    code = textwrap.dedent("""
        import ctypes, os, threading
        libc = ctypes.CDLL(None, use_errno=True)
        nr = {"x86_64": (248, 249, 250, 308), "aarch64": (217, 218, 219, 268)}[os.uname().machine]
        for n in nr:
            print(n, libc.syscall(n, 0, 0, 0, 0, 0), ctypes.get_errno())
        print("unshare", libc.unshare(0x10000000), ctypes.get_errno())
        print("unshare_net", libc.unshare(0x40000000), ctypes.get_errno())
        t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
        import subprocess; print("child", subprocess.run(["true"]).returncode)
    """)
    r = subprocess.run(
        bwrap_args([], None) + [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr
    if not seccomp.supported():
        pytest.skip(f"no seccomp filter for {os.uname().machine}")
    assert [ln.split()[1:] for ln in lines[:4]] == [["-1", "1"]] * 4, lines
    assert lines[4:6] == ["unshare -1 1", "unshare_net -1 1"] and "thread" in lines and "child 0" in lines, lines


@needs_bwrap
def test_the_filter_takes_no_descriptor_the_child_is_given():
    """The child's pipes keep their numbers (a fixed descriptor for the filter, 9, once replaced one of them)."""
    script = textwrap.dedent("""
        import fcntl, os, subprocess, sys
        from instructor.grading.sandbox import bwrap_args
        r0, w = os.pipe()
        r = fcntl.fcntl(r0, fcntl.F_DUPFD, 30)
        os.close(r0)
        for fd in range(3, 10):  # the child is given descriptors 3..9 (9: the number that once collided)
            if fd != w:
                os.dup2(w, fd, inheritable=False)
        code = "import os; [os.write(fd, b'%d ' % fd) for fd in range(3, 10)]"
        p = subprocess.run(bwrap_args([], None) + [sys.executable, "-S", "-c", code], pass_fds=range(3, 10),
                           capture_output=True)
        for fd in range(3, 10):
            os.close(fd)
        print(p.returncode, os.read(r, 1000).decode(), p.stderr.decode()[-300:])
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rc, *written = p.stdout.split()
    assert rc == "0" and "9" in written and len(written) >= 6, p.stdout


def test_seccomp_program_shape():
    for machine in ("x86_64", "aarch64"):
        prog = seccomp.program(machine)
        assert len(prog) % 8 == 0 and 10 < len(prog) // 8 < 40
    with pytest.raises(ValueError, match="architecture"):
        seccomp.program("sparc")


def test_inputs_come_from_the_runs_secret_seed_and_a_resume_keeps_it(batch):
    out = batch["out"]
    seed = (out / "journal" / "seed").read_text().strip()
    assert len(seed) == 64 and (out / "journal" / "seed").stat().st_mode & 0o077 == 0
    log = batch["results"]["inputs"]["log"]
    seen = {ln.split()[1] for ln in log.splitlines() if ln.startswith("INPUTS")}
    assert _checksum(seed) in seen and _checksum(None) not in seen, seen  # an audit reproduces them from the seed
    assert seed not in json.dumps(batch["results"]) and not any(
        seed in p.read_text(errors="replace") for p in (out / "feedback").glob("*")
    )
    grades = (out / "grades.csv").read_text()
    grader.grade(
        batch["subs"],
        out,
        jobs=2,
        timeout=180,
        memory_mb=1024,
        test_timeout=TEST_CPU_S,
        progress=False,
        allow_unsandboxed=bool(MISSING),
    )
    assert (out / "journal" / "seed").read_text().strip() == seed and (out / "grades.csv").read_text() == grades


def test_each_run_draws_its_own_seed(tmp_path):
    a, b = run_seed(tmp_path / "a"), run_seed(tmp_path / "b")
    assert a != b and run_seed(tmp_path / "a") == a
    assert _checksum(a) != _checksum(b)
    ca, cb = Context(reference, seed=a), Context(reference, seed=b)
    assert not torch.equal(ca.state("Attention")["att.weight"], cb.state("Attention")["att.weight"])
    assert ca.dropout_seed != cb.dropout_seed
    (tmp_path / "a" / "seed").write_text("not a seed")
    assert run_seed(tmp_path / "a") not in (a, "not a seed")


def test_a_busy_loop_is_stopped_by_cpu_time(batch):
    r = batch["results"]["busy"]
    att = {t: v for t, v in r["tests"].items() if v["region"] == "Attention.forward"}
    assert all(not v["ok"] for v in att.values())
    assert any(v["kind"] == "timeout" and "s of CPU time" in v["message"] for v in att.values()), att
    others = [reg for reg in r["regions"] if reg != "Attention.forward"]
    assert all(r["regions"][reg][0] == r["regions"][reg][1] for reg in others), _failed(r)


@pytest.mark.parametrize(
    "name,test", [("attn_cpu_tensor", "attention_forward_device"), ("rnn_step_cpu_tensor", "rnn_one_step_device")]
)
def test_every_graded_method_runs_on_the_meta_device(batch, name, test):
    r = batch["results"][name]
    assert set(_failed(r)) == {test}, _failed(r)
    assert "device" in r["tests"][test]["message"]


def test_a_restart_keeps_the_correctness_outcomes(batch):
    r = batch["results"]["dies_alone"]
    assert r["status"] == "crashed" and set(_failed(r)) == {"attention_batch_of_one"}, _failed(r)


# ---------------------------------------------------------------------------------------------------- the canary
def test_a_broken_environment_stops_the_batch_with_no_grades(tmp_path, monkeypatch):
    from instructor.grading import job

    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    write_sub(subs, "correct", REFERENCE)
    monkeypatch.setattr(job, "site_packages", lambda: ["/nonexistent-site-packages"])  # torch not importable
    with pytest.raises(KitError) as e:
        grader.grade(subs, out, jobs=1, timeout=60, memory_mb=1024, progress=False, allow_unsandboxed=bool(MISSING))
    msg = str(e.value)
    assert "canary failed" in msg and "reference solution" in msg and "no grades were written" in msg, msg
    assert "import-error" in msg
    assert not (out / "grades.csv").exists() and not (out / "journal" / "correct.json").exists()


def test_a_symlinked_venv_is_named(tmp_path):
    from instructor.grading.canary import link_problems

    real = tmp_path / "real" / "venv"
    (real / "lib").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    msgs = link_problems([("the venv", str(tmp_path / "link" / "venv")), ("site-packages", str(real / "lib"))])
    assert len(msgs) == 1 and f"the venv at {tmp_path / 'link' / 'venv'} is not visible inside the sandbox" in msgs[0]
    assert f"is a symbolic link to {tmp_path / 'real'}" in msgs[0]


@needs_bwrap
def test_a_grader_run_through_a_symlinked_venv_stops_at_the_canary(tmp_path):
    venv = Path(sys.prefix)
    link = tmp_path / "venv-link"
    link.symlink_to(venv)
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    write_sub(subs, "correct", REFERENCE)
    r = subprocess.run(
        [
            str(link / "bin" / "python"),
            "-m",
            "instructor",
            "grade",
            str(subs),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--timeout",
            "60",
            "--quiet",
        ],
        cwd=kit_root(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode != 0 and "canary failed" in r.stderr, r.stderr[-2000:]
    assert f"is a symbolic link to {venv}" in r.stderr and not (out / "grades.csv").exists(), r.stderr[-2000:]


@pytest.mark.parametrize("ignore_sigxcpu", [False, True])
def test_the_kernel_ends_a_process_that_cancels_its_timer_and_spins(ignore_sigxcpu):
    """RLIMIT_CPU set by preexec: SIGXCPU at the budget, SIGKILL a little later for a process that ignores it."""
    code = (
        "import signal, sys\nsignal.setitimer(signal.ITIMER_PROF, 0)\n"
        "if sys.argv[1:]:\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    )
    p = subprocess.run(
        [sys.executable, "-S", "-c", code, *(["ignore"] if ignore_sigxcpu else [])],
        preexec_fn=preexec(8 * 2**30, [], 1),
        timeout=600,
    )  # the timeout: a safety net only
    assert p.returncode == (-signal.SIGKILL if ignore_sigxcpu else -signal.SIGXCPU)
    assert ended_by_cpu_budget(p.returncode) is not ignore_sigxcpu
    assert ended_by_cpu_budget(128 + signal.SIGXCPU) and not ended_by_cpu_budget(128 + signal.SIGKILL)  # bwrap


def test_a_process_that_cancels_its_timers_is_stopped_by_its_cpu_budget(tmp_path, monkeypatch):
    """Only the kernel can stop ``untimed_spin`` here: its own timers are cancelled and the wall-clock backstop is
    made far longer than the grading, so the test holds on any machine load without timing anything."""
    monkeypatch.setattr(job, "cpu_budget", lambda per_test, requests: SMALL_CPU_BUDGET_S)
    monkeypatch.setattr(job, "WALL_BACKSTOP", 10_000)
    subs = tmp_path / "submissions"
    subs.mkdir()
    write_sub(subs, "correct", REFERENCE)
    write_sub(subs, "untimed_spin", REFERENCE + UNTIMED_SPIN)
    results = {
        r["id"]: r
        for r in grader.grade(
            subs,
            tmp_path / "out",
            jobs=2,
            timeout=3600,
            memory_mb=1024,
            test_timeout=TEST_CPU_S,
            progress=False,
            allow_unsandboxed=bool(MISSING),
        )
    }
    assert results["correct"]["percent"] == 100.0, _failed(results["correct"])
    r = results["untimed_spin"]
    att = {t: v for t, v in r["tests"].items() if v["region"] == "Attention.forward"}
    assert r["status"] == "timeout" and all(not v["ok"] for v in att.values()), att
    assert any(
        v["kind"] == "timeout" and f"CPU-time budget ({SMALL_CPU_BUDGET_S} s" in v["message"] for v in att.values()
    ), att
    others = [reg for reg in r["regions"] if reg != "Attention.forward"]
    assert all(r["regions"][reg][0] == r["regions"][reg][1] for reg in others), _failed(r)
