"""The grader's promise that no submission can stop or spoil a batch: every failure while staging, decoding a
reply, running a hidden test or writing an output becomes that submission's status with a message, and the batch
goes on; grader-side failures are not journaled; outputs show untrusted text without acting on it; ``--notebooks``
reads only regular files, bounded; a message is cut once and stored once.

The hostile submissions are written by these tests. The grading runs put several triggers into ONE run beside
correct submissions that must still score 100 % (each run costs a Python + torch start per submission). Without
bubblewrap they grade with ``--allow-unsandboxed`` (the triggers are about the grader, not the sandbox); the unit
tests need no student process at all.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from test_grading import REFERENCE, RUBRIC, STUDENT_EDITION, mutate, read_grades, write_sub

from instructor.grading import batch as grader
from instructor.grading import job, outputs, remote, sandbox_outputs, submissions, wire
from instructor.grading.sandbox import missing_layers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

UNTRUSTED = "bad \udcff \x00 \x1b[2J\x1b]0;pwned\x07 <script>alert(1)</script> ![x](http://evil.example/x.png) |"


def _grade(subs, out, *extra):
    """Grade ``subs`` into ``out``; {id: result}. Limits are generous (60 s per test, as the wall-clock limits are
    today): these tests are about failures of the grader, not about time limits on a busy test machine."""
    from instructor.cli import main

    rc = main(
        [
            "grade",
            str(subs),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--timeout",
            "600",
            "--test-timeout",
            "60",
            "--memory-mb",
            "1024",
            "--quiet",
            *extra,
        ]
        + (["--allow-unsandboxed"] if missing_layers() else [])
    )
    assert rc == 0
    return {r["id"]: r for r in json.loads((out / "results.json").read_text(encoding="utf-8"))}


def _zip(path, members, utf8_flag_names=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    if utf8_flag_names:  # rewrite the names' bytes in place: not valid UTF-8, though the UTF-8 flag says so
        raw = path.read_bytes()
        for good, bad in utf8_flag_names:
            raw = raw.replace(good, bad)
        path.write_bytes(raw)
    return path


def hostile_zips(folder):
    """{id: zip path} of archives that cannot be staged: each must be a bad-submission row with a message."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    # a member name that is not UTF-8 although its UTF-8 flag (0x800) is set: zipfile raises UnicodeDecodeError
    p = folder / "zip_not_utf8.zip"
    with zipfile.ZipFile(p, "w") as z:
        info = zipfile.ZipInfo("caf\u00e9/models.py")  # non-ASCII: written with the UTF-8 flag
        z.writestr(info, REFERENCE)
    p.write_bytes(p.read_bytes().replace("caf\u00e9".encode(), b"caf\xff\xfe"))
    made["zip_not_utf8"] = p
    # a corrupt deflate stream (the CRC and sizes in the headers stay as they were)
    p = _zip(folder / "zip_corrupt_deflate.zip", {"models.py": REFERENCE * 3})
    raw = bytearray(p.read_bytes())
    start = raw.index(b"models.py") + len(b"models.py")
    raw[start + 10 : start + 60] = bytes(range(50))
    p.write_bytes(bytes(raw))
    made["zip_corrupt_deflate"] = p
    # a file and a folder of the same name
    made["zip_file_and_folder"] = _zip(
        folder / "zip_file_and_folder.zip", {"a/models.py": REFERENCE, "a/models.py/models.py": REFERENCE}
    )
    # a 300-character member name (longer than any file system's NAME_MAX)
    made["zip_long_name"] = _zip(folder / "zip_long_name.zip", {"x" * 300 + "/models.py": REFERENCE})
    return made


# ------------------------------------------------------------------------------------------------------ staging
def test_hostile_zips_are_rejected_with_a_message(tmp_path):
    for sid, p in hostile_zips(tmp_path / "zips").items():
        with pytest.raises(submissions.SubmissionError) as e:
            submissions.stage(submissions.Submission(sid, p), tmp_path / "staged" / sid)
        assert e.value.status == "bad-submission" and str(e.value), sid
        str(e.value).encode("utf-8")  # printable: no lone surrogates


def test_long_and_internal_names_get_safe_distinct_ids(tmp_path):
    for name in ("a" * 250, "a" * 249 + "b", "edition", "_edition", ".work", "journal"):
        (tmp_path / name).mkdir()
    ids = [s.id for s in submissions.discover(tmp_path)]
    assert len(ids) == len(set(ids)) == 4  # "_edition" and ".work" are not submissions
    assert all(len(i) <= submissions.MAX_ID_CHARS and not i.startswith(("_", ".")) for i in ids)


# ------------------------------------------------------------------------------------------------ wire, replies
def test_replies_are_checked_against_the_protocol():
    deep = b'{"v": ' + b"[" * 200_000 + b"]" * 200_000 + b', "t": []}'
    with pytest.raises(wire.WireError, match="nested too deep"):
        wire.Reader().feed(b"%d 0\n" % len(deep) + deep)
    with pytest.raises(remote.ProtocolError):  # a list where the protocol has an object id
        remote.checked_reply({"op": "hybrid"}, {"ok": True, "value": {"id": [1]}})
    with pytest.raises(remote.ProtocolError):  # a list where the protocol has a string
        remote.checked_reply({"op": "call"}, {"ok": False, "kind": ["error"], "message": "x"})
    with pytest.raises(remote.ProtocolError):
        remote.checked_reply({"op": "call"}, {"ok": "yes"})
    with pytest.raises(remote.ProtocolError):
        remote.checked_refcall({"op": "refcall", "id": [1], "path": "one_step", "args": [], "kwargs": {}})
    r = remote.checked_reply(
        {"op": "call", "method": "one_step"},
        {"ok": True, "value": (torch.ones(2), [torch.zeros(1, dtype=torch.float64)])},
    )
    assert not r["ok"] and "one_step returned a float64 tensor of shape (1,)" in r["message"]
    r = remote.checked_reply({"op": "call", "method": "one_step"}, {"ok": True, "value": (torch.ones(2), [1])})
    assert r["ok"]
    r = remote.checked_reply(
        {"op": "call", "method": "forward", "device": "cpu"}, {"ok": True, "value": (torch.empty(2, device="meta"),)}
    )
    assert not r["ok"] and "meta device" in r["message"]
    r = remote.checked_reply(
        {"op": "call", "method": "forward", "device": "meta"},
        {"ok": True, "value": (torch.empty(2, device="meta"), None, [1, 2], None)},
    )
    assert r["ok"]
    r = remote.checked_reply({"op": "call", "method": "forward"}, {"ok": True, "value": (1, 2, None, 4)})
    assert not r["ok"] and "decode_lengths of type NoneType" in r["message"]
    r = remote.checked_reply(
        {"op": "call", "method": "forward"}, {"ok": True, "value": (1, 2, torch.tensor([3, 1]), 4)}
    )
    assert r["ok"] and r["value"][2] == [3, 1]


# ---------------------------------------------------------------------------------------------------- outputs
def test_outputs_show_untrusted_text_without_acting_on_it(tmp_path):
    sub = submissions.Submission("s1", Path("/x/\udcff"), notes=[UNTRUSTED])
    ran = {
        "rnn_forward_eval": {
            "region": "DecoderWithRNN.forward",
            "ok": False,
            "kind": "fail",
            "message": UNTRUSTED,
            "seconds": 0.1,
        }
    }
    r = job.result_dict(sub, RUBRIC, ran, "test-error", UNTRUSTED, 1.0, log=UNTRUSTED + "\nline 2", log_bytes=10)
    outputs.write_outputs(tmp_path, [r], RUBRIC)
    for p in [
        tmp_path / "feedback" / "s1.md",
        tmp_path / "logs" / "s1.log",
        tmp_path / "summary.md",
        tmp_path / "grades.csv",
        tmp_path / "results.json",
    ]:
        text = p.read_bytes().decode("utf-8")  # strict: valid UTF-8
        assert "\x00" not in text and "\x1b" not in text and "\x07" not in text, p
    fb = (tmp_path / "feedback" / "s1.md").read_text()
    assert "<script" not in fb and "![" not in fb and "](http" not in fb and "\\x1b" in fb
    assert "line 2" in (tmp_path / "logs" / "s1.log").read_text()
    assert json.loads((tmp_path / "results.json").read_text())[0]["status"] == "test-error"


def test_a_huge_message_is_cut_once_and_stored_once(tmp_path):
    sub = submissions.Submission("big", tmp_path)
    r = job.result_dict(sub, RUBRIC, {}, "import-error", "models.py could not be imported: " + "x" * 2**20, 1.0)
    assert len(r["message"]) < 2 * sandbox_outputs.MAX_MESSAGE
    assert all(len(t["message"]) < 200 for t in r["tests"].values())
    outputs.write_outputs(tmp_path / "out", [r], RUBRIC)
    sizes = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert sizes < 100_000


# -------------------------------------------------------------------------------------------------- notebooks
def test_notebook_metrics_are_read_from_regular_files_only(tmp_path):
    out = tmp_path / "nb"
    out.mkdir()
    (out / "train1.metrics.json").write_text(json.dumps({"bleu4": 0.25}))
    os.mkfifo(out / "fifo.metrics.json")  # opened for reading, it would block forever
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"bleu4": 0.99}))
    os.symlink(secret, out / "link.metrics.json")
    (out / "big.metrics.json").write_text(
        json.dumps({"bleu4": 0.5, "pad": "x" * (sandbox_outputs.MAX_METRICS_BYTES + 1)})
    )
    (out / "deep.metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    r = sandbox_outputs.notebook_result(out, "error: \x1b[31mbad\n", 1, False)
    assert r["bleu4"] == {"train1": 0.25} and r["status"] == "failed" and "\x1b" not in r["message"]
    os.symlink(tmp_path, tmp_path / "linked_dir")  # the output folder itself a link: not followed
    assert sandbox_outputs.notebook_result(tmp_path / "linked_dir", "", 0, False)["bleu4"] == {}


# ------------------------------------------------------------------------------- batch machinery, no processes
class _FakeJob:
    """Stands for ``job.Job``: fails on the grader's side for ids starting with "boom", else a full score. Records
    which submissions' staged folders exist while it runs."""

    seen = {}

    def __init__(self, sub, work, edition, ref_module, opts, layers, run_id):
        self.sub, self.work, self.opts, self.edition = sub, Path(work), opts, Path(edition)

    def run(self):
        _FakeJob.seen[self.sub.id] = sorted(p.name for p in self.work.parent.iterdir())
        assert (self.edition / "captioning").is_dir()
        if self.sub.id.startswith("boom"):
            raise RuntimeError("grader bug \udcff")
        ran = {
            name: {"region": region, "ok": True, "kind": "pass", "message": "", "seconds": 0.0}
            for region, tests in self.opts["rubric"]["regions"].items()
            for name in tests
        }
        return job.result_dict(self.sub, self.opts["rubric"], ran, "ok", "", 0.0)


def test_grader_side_failures_are_rows_and_never_journaled(tmp_path, monkeypatch):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    for name in ("good", "boom", "edition"):
        write_sub(subs, name, REFERENCE)
    hostile_zips(subs)
    monkeypatch.setattr(grader, "Job", _FakeJob)
    monkeypatch.setattr(grader, "probe_layers", lambda: {k: (True, "test") for k in grader.LAYERS})
    results = {r["id"]: r for r in grader.grade(subs, out, jobs=1, progress=False)}
    assert results["good"]["percent"] == 100.0 and results["edition"]["percent"] == 100.0
    assert results["boom"]["status"] == "grader-error" and "RuntimeError" in results["boom"]["message"]
    for sid in ("zip_not_utf8", "zip_corrupt_deflate", "zip_file_and_folder", "zip_long_name"):
        assert results[sid]["status"] == "bad-submission" and results[sid]["message"], sid
    journaled = {p.stem for p in (out / "journal").glob("*.json")}
    assert journaled == {"good", "edition"}  # not the grader's failure, not the (cheaply re-staged) rejects
    # a rejected archive's staged files are gone before any submission is graded
    assert not any(n.startswith("zip_") for names in _FakeJob.seen.values() for n in names)
    _, rows = read_grades(out)
    assert set(rows) == set(results) and rows["boom"]["grading_status"] == "grader-error"
    # the next run grades the grader-side failure again
    monkeypatch.setattr(_FakeJob, "run", lambda self: job.result_dict(self.sub, self.opts["rubric"], {}, "ok", "", 0.0))
    again = {r["id"]: r for r in grader.grade(subs, out, jobs=1, progress=False)}
    assert again["boom"]["status"] == "ok" and again["good"]["percent"] == 100.0


def test_cli_errors_come_before_the_sandbox_check(tmp_path, monkeypatch, capsys):
    """Without bubblewrap, a wrong SUBMISSIONS_DIR is still reported as such (not as a missing sandbox)."""
    from instructor.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    assert main(["grade", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "subs").mkdir()
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no submissions" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- one grading run, triggers
def _at_import(code):
    return REFERENCE + "\n" + textwrap.dedent(code)


DEEP_REPLY = """
    import os as _os, sys as _sys
    _h = b'{"v": ' + b"[" * 200000 + b"]" * 200000 + b', "t": []}'
    _os.write(int(_sys.argv[2]), b"%d 0\\n" % len(_h) + _h)
"""

LIST_FOR_ID = """
import sys as _s
_m = _s.modules.get("__main__")
for _n in dir(_m):
    _c = getattr(_m, _n)
    if isinstance(_c, type) and "send" in vars(_c):
        def _send(self, value, _orig=_c.send):
            r = value.get("reply") if isinstance(value, dict) else None
            if isinstance(r, dict) and isinstance(r.get("value"), dict) and set(r["value"]) == {"id"}:
                r["value"] = {"id": [r["value"]["id"]]}
            return _orig(self, value)
        _c.send = _send
"""


def trigger_submissions():
    """{id: (models.py text, expected status, whether it must keep every point)}."""
    return {
        "float64_state": (
            mutate(
                REFERENCE,
                "DecoderWithRNN.one_step",
                "preds = self.fc(self.dropout(h))\n",
                "preds = self.fc(self.dropout(h))\n        h, c = h.double(), c.double()\n",
            ),
            "ok",
            False,
        ),
        "decode_lengths_none": (
            mutate(
                REFERENCE,
                "DecoderWithRNN.forward",
                "            predictions[:num, t, :] = preds\n",
                "            predictions[:num, t, :] = preds\n        decode_lengths = None\n",
            ),
            "ok",
            False,
        ),
        "meta_module": (
            mutate(
                REFERENCE,
                "Attention.forward",
                "att1 = self.encoder_att(",
                "self.to('meta'); encoder_out = encoder_out.to('meta'); "
                "decoder_hidden = decoder_hidden.to('meta')\n        att1 = self.encoder_att(",
            ),
            "ok",
            False,
        ),
        "odd_message": (
            mutate(
                REFERENCE,
                "DecoderWithRNN.one_step",
                "h, c = self.decode_step(",
                f"raise ValueError({UNTRUSTED!r})\n        h, c = self.decode_step(",
            ),
            "ok",
            False,
        ),
        "huge_import_message": (_at_import("raise SystemExit('x' * 10 ** 6)\n"), "import-error", False),
        "deep_json_reply": (
            mutate(
                REFERENCE,
                "Attention.forward",
                "att1 = self.encoder_att(",
                textwrap.indent(textwrap.dedent(DEEP_REPLY), " " * 8).lstrip() + "        att1 = self.encoder_att(",
            ),
            "protocol-error",
            False,
        ),
        "list_for_id": (_at_import(LIST_FOR_ID), "protocol-error", False),
    }


def test_one_batch_of_triggers_beside_correct_submissions(tmp_path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    write_sub(subs, "reference", REFERENCE)
    write_sub(subs, "edition", REFERENCE)  # once deleted the grader's own staging folder of the same name
    write_sub(subs, "r" * 200, REFERENCE, as_zip=True)  # an id that must be shortened
    write_sub(subs, "student_edition", STUDENT_EDITION)
    triggers = trigger_submissions()
    for name, (text, _, _) in triggers.items():
        write_sub(subs, name, text)
    hostile_zips(subs)
    results = _grade(subs, out)
    long_id = next(i for i in results if i.startswith("rrr"))
    for sid in ("reference", "edition", long_id):
        assert results[sid]["percent"] == 100.0, (sid, results[sid]["message"])
    assert results["student_edition"]["status"] == "ok" and results["student_edition"]["total"] == 0
    for name, (_, status, full) in triggers.items():
        r = results[name]
        assert r["status"] == status and (status == "ok" or r["message"]), (name, r["status"], r["message"])
        assert (r["percent"] == 100.0) == full, (name, r["percent"])
    # each trigger's own cause is named
    rnn_fwd = results["decode_lengths_none"]["tests"]["rnn_forward_eval"]["message"]
    assert "decode_lengths of type NoneType" in rnn_fwd
    assert "meta device" in results["meta_module"]["tests"]["attention_forward_eval"]["message"]
    assert len(results["huge_import_message"]["message"]) < 2 * sandbox_outputs.MAX_MESSAGE
    for sid in ("zip_not_utf8", "zip_corrupt_deflate", "zip_file_and_folder", "zip_long_name"):
        assert results[sid]["status"] == "bad-submission" and results[sid]["message"], sid
    _, rows = read_grades(out)
    assert set(rows) == set(results)
    for sid in results:
        text = (out / "feedback" / f"{sid}.md").read_bytes().decode("utf-8")
        assert "\x1b" not in text and "<script" not in text and "![" not in text
    size = sum(p.stat().st_size for p in (out / "journal").glob("huge*.json"))
    assert size < 60_000


def test_small_chaos_batch(tmp_path):
    """A dozen submissions mixed as the chaos benchmark mixes them: the batch finishes and every correct one
    scores 100 %."""
    import grade_speed

    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    kinds = grade_speed.generate(subs, 12, chaos=True)
    results = _grade(subs, out)
    _, rows = read_grades(out)
    assert len(rows) == len(results) == len(list(subs.iterdir()))
    correct = [sid for sid, kind in kinds.items() if kind == "correct"]
    assert correct and all(results[sid]["percent"] == 100.0 for sid in correct), {
        sid: results[sid]["message"] for sid in correct if results[sid]["percent"] != 100.0
    }


FAKE_CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[3])
import wire
fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
reader = wire.Reader()
def receive():
    while True:
        got = reader.feed(os.read(fd_in, 1 << 16))
        if got:
            return got[0]
wire.write_message(fd_out, {"ready": True})
req = receive()
wire.write_message(fd_out, {"op": "refcall", "id": 1, "path": "one_step", "args": [], "kwargs": {}})
# the alarm fires before the answer is read: the child replies "timeout" with the answer still in its pipe
wire.write_message(fd_out, {"reply": {"ok": False, "kind": "timeout", "message": "did not finish"}})
while True:
    req = receive()
    wire.write_message(fd_out, {"reply": {"ok": True, "value": req.get("op")}})
"""


def test_a_child_that_timed_out_during_a_reference_call_is_marked_unsure(tmp_path):
    """Its next read would take the grader's late answer for a request (every later reply one off): the job
    restarts such a process before the next test."""
    (tmp_path / "child.py").write_text(FAKE_CHILD)
    argv = [sys.executable, str(tmp_path / "child.py"), "{in}", "{out}", str(Path(wire.__file__).parent)]
    r = remote.Remote(
        argv,
        None,
        dict(os.environ),
        512,
        time.monotonic() + 60,
        refcall=lambda m: {"ok": True, "value": torch.zeros(3)},
    )
    try:
        assert r.next_message(time.monotonic() + 30) == {"ready": True}
        reply = r.request({"op": "call", "method": "forward"}, 5)
        assert reply["kind"] == "timeout" and r.unsure
        # why it must not be asked again: it reads the stale answer as a request and answers that (op None)
        assert r.request({"op": "import"}, 5)["value"] is None
    finally:
        r.close()
