"""The grader (instructor-only): the reference scores 100 %, the untouched student edition 0 on every test, mutated
solutions lose exactly the points of the tests aimed at their bug, and hostile submissions (raising, exiting,
hanging, eating memory, deleting files, zip path traversal) get a row with the right grading_status while the
batch goes on.

The mutants are made from the reference models.py by string replacement inside one TODO region, so they follow the
reference as it changes. Two grading runs in all (each child imports torch: ~3-8 s a submission).
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from captioning.check import kit_root
from captioning.errors import KitError
from instructor.grading import batch as grader, submissions
from instructor.grading.hidden_tests import TESTS
from instructor.grading.rubric import load_rubric
from instructor.regions import find_regions, strip_solutions

REFERENCE = (kit_root() / "captioning" / "models.py").read_text(encoding="utf-8")
RUBRIC = load_rubric()
REGIONS = list(RUBRIC["regions"])


def points_of(region):  # the tests of a region
    return set(RUBRIC["regions"][region])


def mutate(text, region, old, new):
    """Replace ``old`` (exactly once) inside the solution region ``region`` of ``text``."""
    regs = [r for r in find_regions(text, "models.py") if r.name == region]
    assert len(regs) == 1, f"no single region {region} in the reference models.py"
    lines = text.splitlines(keepends=True)
    body = "".join(lines[regs[0].begin:regs[0].end - 1])
    assert body.count(old) == 1, f"{old!r} is not exactly once in region {region}: update the mutant"
    lines[regs[0].begin:regs[0].end - 1] = [body.replace(old, new)]
    return "".join(lines)


# mutant -> region -> (list of (old, new), tests of the region that must fail, tests of it that must still pass
# [, how they fail]). Regions a mutant does not touch must keep all their points. Hostile behaviour rides along
# in regions the mutant leaves alone (fewer grading processes): m1 calls sys.exit, m2 allocates without bound,
# m3 deletes files at import (see the batch fixture).
MUTANTS = {
    "m1": {
        "Attention.forward": ([("F.softmax(e, dim=1)", "F.softmax(e, dim=0)")],
                              {"attention_softmax_over_regions", "attention_forward_eval"}, set()),
        "DecoderWithRNN.one_step": ([("self.decode_step(embeddings, (h, c))",
                                      "self.decode_step(self.dropout(embeddings), (h, c))"),
                                     ("self.fc(self.dropout(h))", "self.fc(h)")],
                                    {"rnn_one_step_dropout_train"}, {"rnn_one_step_eval", "rnn_one_step_h_c_order"}),
        "DecoderWithRNN.forward": ([("self.one_step(embeddings[:num, t, :], h[:num], c[:num])",
                                     "self.one_step(embeddings[:, t, :], h, c)"),
                                    ("predictions[:num, t, :] = preds", "predictions[:, t, :] = preds")],
                                   {"rnn_forward_rows_past_end_zero", "rnn_forward_padding_independent"},
                                   {"rnn_forward_short_caption_alone", "rnn_forward_starts_from_initial_state"}),
        "DecoderWithAttention.__init__": ([("nn.LSTMCell(self.embed_dim + self.encoder_dim, self.decoder_dim)",
                                            "nn.LSTMCell(self.embed_dim + self.decoder_dim, self.decoder_dim)")],
                                          {"att_init_layer_names_shapes", "att_init_layer_types"},
                                          {"att_init_constructs"}),
        "DecoderWithAttention.one_step": ([("z, alpha = self.attention(encoder_out, h)",
                                            "import sys; sys.exit(3)\n"
                                            "        z, alpha = self.attention(encoder_out, h)")],
                                          points_of("DecoderWithAttention.one_step"), set(), "exit"),
    },
    "m2": {
        "DecoderWithAttention.one_step": ([("z = gate * z", "z = z")], {"att_one_step_gate", "att_one_step_eval"},
                                          set()),
        "DecoderWithRNN.one_step": ([("h, c = self.decode_step(", "c, h = self.decode_step(")],
                                    {"rnn_one_step_h_c_order", "rnn_one_step_eval"}, set()),
        "DecoderWithRNN.forward": ([("for t in range(max(decode_lengths)):",
                                     "h, c = torch.zeros_like(h), torch.zeros_like(c)\n"
                                     "        for t in range(max(decode_lengths)):")],
                                   {"rnn_forward_starts_from_initial_state", "rnn_forward_eval"},
                                   {"rnn_forward_rows_past_end_zero", "rnn_forward_padding_independent",
                                    "rnn_forward_short_caption_alone"}),
        "Attention.__init__": ([("nn.Linear(attention_dim, 1)", "nn.Linear(attention_dim, attention_dim)")],
                               {"attention_init_layer_names_shapes"}, {"attention_init_layer_types"}),
        "DecoderWithAttention.forward": ([("if length > t", "if length >= t")],
                                         {"att_forward_rows_past_end_zero", "att_forward_eval"},
                                         {"att_forward_short_caption_alone", "att_forward_padding_independent",
                                          "att_forward_starts_from_initial_state"}),
        "Attention.forward": ([("att1 = self.encoder_att(encoder_out)",
                                "_hog = [torch.empty(256 * 2 ** 20, dtype=torch.uint8) for _ in range(10 ** 6)]\n"
                                "        att1 = self.encoder_att(encoder_out)")],
                              points_of("Attention.forward"), set(), "memory"),
    },
    "m3": {
        "DecoderWithAttention.one_step": ([("preds = self.fc(self.dropout(h))", "preds = self.dropout(self.fc(h))")],
                                          {"att_one_step_dropout_train"},
                                          {"att_one_step_eval", "att_one_step_gate", "att_one_step_h_c_order"}),
        "DecoderWithAttention.forward": ([("self.one_step(embeddings[:num, t, :], encoder_out[:num], h[:num], "
                                           "c[:num])", "self.one_step(embeddings[:, t, :], encoder_out, h, c)"),
                                          ("predictions[:num, t, :] = preds", "predictions[:, t, :] = preds"),
                                          ("alphas[:num, t, :] = alpha", "alphas[:, t, :] = alpha")],
                                         {"att_forward_padding_independent", "att_forward_rows_past_end_zero"},
                                         {"att_forward_short_caption_alone", "att_forward_starts_from_initial_state"}),
        "DecoderWithRNN.one_step": ([("(embeddings, (h, c))", "(embeddings, (c, h))")],
                                    {"rnn_one_step_h_c_order", "rnn_one_step_eval"}, set()),
        "DecoderWithRNN.__init__": ([("nn.BatchNorm1d(self.embed_dim)", "nn.LayerNorm(self.embed_dim)")],
                                    {"rnn_init_layer_names_shapes", "rnn_init_layer_types"}, {"rnn_init_constructs"}),
        # accepted alternatives: must keep every point
        "DecoderWithRNN.forward": ([("preds, h, c = self.one_step(embeddings[:num, t, :], h[:num], c[:num])",
                                     "preds, h, c = self.one_step(embeddings[:, t, :], h, c)"),
                                    ("predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds[:num]")],
                                   set(), points_of("DecoderWithRNN.forward")),
        "Attention.__init__": ([("self.att = nn.Linear(attention_dim, 1)",
                                 "self.att = nn.Linear(attention_dim, 1)\n        self.softmax = nn.Softmax(dim=1)")],
                               set(), points_of("Attention.__init__")),
        "Attention.forward": ([("alpha = F.softmax(e, dim=1)", "alpha = self.softmax(e)"),
                               ("z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)",
                                "z = torch.bmm(alpha.unsqueeze(1), encoder_out).squeeze(1)")],
                              set(), points_of("Attention.forward")),
    },
}


STATUS = {"m1": "ok", "m2": "memory", "m3": "ok"}


def mutant_text(name, append=""):
    text = REFERENCE
    for region, (edits, *_) in MUTANTS[name].items():
        for old, new in edits:
            text = mutate(text, region, old, new)
    return text + append


def write_sub(root, name, text, as_zip=False):
    if as_zip:
        with zipfile.ZipFile(root / f"{name}.zip", "w") as z:
            z.writestr(f"{name}/captioning/models.py", text)
    else:
        (root / name).mkdir()
        (root / name / "models.py").write_text(text, encoding="utf-8")


def read_grades(out):
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[0], {r["id"]: r for r in rows[1:]}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One grading run over the reference, the student edition, three mutants and hostile submissions."""
    root = tmp_path_factory.mktemp("grading")
    subs, out = root / "submissions", root / "out"
    subs.mkdir()
    write_sub(subs, "reference", REFERENCE)
    write_sub(subs, "student_edition", strip_solutions(REFERENCE, "models.py")[0], as_zip=True)
    write_sub(subs, "m1", mutant_text("m1"))
    write_sub(subs, "m2", mutant_text("m2"))
    # m3 also deletes the grader's out dir, the whole submissions folder and its sandbox's parent
    write_sub(subs, "m3", mutant_text("m3", textwrap.dedent(f"""
        import os as _os, shutil as _sh
        _sh.rmtree({str(out)!r}, ignore_errors=True)
        _sh.rmtree({str(subs)!r}, ignore_errors=True)
        _sh.rmtree(_os.path.dirname(_os.getcwd()), ignore_errors=True)
        """)))
    write_sub(subs, "raises_at_import", REFERENCE + "\nraise RuntimeError('boom at import')\n")
    # an endless loop in one method: stopped by the per-test alarm (--test-timeout), the rest is graded
    write_sub(subs, "loops_in_one_step", mutate(REFERENCE, "DecoderWithRNN.one_step", "h, c = self.decode_step(",
                                                "while True:\n            pass\n        h, c = self.decode_step("))
    with zipfile.ZipFile(subs / "traversal.zip", "w") as z:
        z.writestr("models.py", REFERENCE)
        z.writestr("../../escaped.py", "print('escaped')")
    (subs / "README.txt").write_text("not a submission")
    (subs / "empty").mkdir()

    t0 = time.time()
    from instructor.cli import main

    before = set(Path(tempfile.gettempdir()).glob("grade-*"))
    rc = main(["grade", str(subs), "--out", str(out), "--jobs", "2", "--timeout", "240", "--test-timeout", "3",
               "--memory-mb", "1024", "--quiet"])
    assert rc == 0
    assert set(Path(tempfile.gettempdir()).glob("grade-*")) <= before  # every sandbox was removed
    results = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    return {"root": root, "subs": subs, "out": out, "results": results, "seconds": time.time() - t0}


def test_rubric_matches_hidden_tests_and_regions():
    assert sorted(REGIONS) == sorted(r.name for r in find_regions(REFERENCE, "models.py"))
    assert set(TESTS) == {t for ts in RUBRIC["regions"].values() for t in ts}
    for region, tests in RUBRIC["regions"].items():
        assert len(tests) >= 1 and all(TESTS[t][0] == region for t in tests)


def test_rubric_errors(tmp_path):
    bad = tmp_path / "rubric.toml"
    bad.write_text('[regions."DecoderWithRNN.__init__"]\nrnn_init_constructs = 1\n')
    with pytest.raises(KitError, match="differ"):
        load_rubric(bad)
    bad.write_text("[regions\n")
    with pytest.raises(KitError, match="not valid TOML"):
        load_rubric(bad)


def test_grades_csv_and_reference_full_marks(batch):
    maxrow, rows = read_grades(batch["out"])
    assert maxrow["id"] == "max" and maxrow["percent"] == "100.0"
    for region in REGIONS:
        assert float(maxrow[region]) == sum(RUBRIC["regions"][region].values())
    ref = rows["reference"]
    assert ref["grading_status"] == "ok" and ref["percent"] == "100.0", batch["results"]["reference"]["tests"]
    assert all(ref[r] == maxrow[r] for r in REGIONS)
    # every submission has a row; non-submissions are ignored
    assert set(rows) == {"reference", "student_edition", *MUTANTS, "raises_at_import", "loops_in_one_step",
                         "traversal", "empty"}
    assert (batch["out"] / "summary.md").read_text().count("| ") > 10
    print(f"grading run: {batch['seconds']:.1f} s")


def test_student_edition_scores_zero_on_every_test(batch):
    r = batch["results"]["student_edition"]
    assert r["status"] == "ok" and r["total"] == 0
    assert all(not t["ok"] for t in r["tests"].values())
    assert all("TODO" in t["message"] for t in r["tests"].values()), r["tests"]


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutants_lose_exactly_the_aimed_points(batch, name):
    r = batch["results"][name]
    assert r["status"] == STATUS[name], r["message"]
    spec = MUTANTS[name]
    for test, t in r["tests"].items():
        region = t["region"]
        if region not in spec:
            assert t["ok"], f"{name}: {test} ({region}, not mutated) failed: {t['message']}"
            continue
        _, must_fail, must_pass, *how = spec[region]
        if test in must_fail:
            assert not t["ok"], f"{name}: {test} should catch the bug in {region}"
            assert t["kind"] == (how[0] if how else "fail"), f"{name}: {test} failed as {t['kind']}: {t['message']}"
        if test in must_pass:
            assert t["ok"], f"{name}: {test} should not be affected by the bug in {region}: {t['message']}"


def test_messages_point_at_the_bug(batch):
    res = batch["results"]
    assert "over the regions" in res["m1"]["tests"]["attention_softmax_over_regions"]["message"]
    assert "dropout" in res["m1"]["tests"]["rnn_one_step_dropout_train"]["message"]
    assert "swapped" in res["m2"]["tests"]["rnn_one_step_h_c_order"]["message"]
    assert "gate" in res["m2"]["tests"]["att_one_step_gate"]["message"]
    assert "init_hidden_state" in res["m2"]["tests"]["rnn_forward_starts_from_initial_state"]["message"]
    assert "padding" in res["m3"]["tests"]["att_forward_padding_independent"]["message"]
    assert "should stay 0" in res["m2"]["tests"]["att_forward_rows_past_end_zero"]["message"]


def test_hostile_submissions_get_their_status(batch):
    res, out = batch["results"], batch["out"]
    assert res["raises_at_import"]["status"] == "import-error"
    assert "boom at import" in res["raises_at_import"]["message"]
    assert res["raises_at_import"]["total"] == 0

    # sys.exit inside a method is caught per test (m1): that region scores 0, the batch and the other tests go on
    assert "sys.exit(3)" in res["m1"]["tests"]["att_one_step_eval"]["message"]
    assert res["m1"]["regions"]["DecoderWithAttention.one_step"][0] == 0
    # unbounded allocation (m2) hits the address-space limit: status memory, that region 0
    assert res["m2"]["status"] == "memory" and res["m2"]["regions"]["Attention.forward"][0] == 0
    assert "out of memory" in res["m2"]["tests"]["attention_forward_eval"]["message"]

    assert res["traversal"]["status"] == "bad-submission" and "unsafe path" in res["traversal"]["message"]
    assert not (batch["subs"].parent / "escaped.py").exists() and not (batch["root"].parent / "escaped.py").exists()
    assert res["empty"]["status"] == "no-models"

    # the deleter removed the out dir, the submissions folder and its own sandbox; everything was still graded
    # (submissions are copied out before any student code runs; outputs are written at the end)
    assert not batch["subs"].exists()
    for sid in res:
        assert (out / "feedback" / f"{sid}.md").is_file()
    assert res["reference"]["percent"] == 100.0

    loops = res["loops_in_one_step"]
    assert loops["status"] == "timeout", loops["message"]
    assert all(t["kind"] == "timeout" for t in loops["tests"].values() if t["region"] == "DecoderWithRNN.one_step")
    assert loops["total"] == loops["max"] - sum(RUBRIC["regions"]["DecoderWithRNN.one_step"].values()), loops


def test_feedback_never_quotes_hidden_tests(batch):
    here = Path(grader.__file__).parent
    src = "\n".join((here / name).read_text() for name in ("hidden_tests.py", "hidden_harness.py"))
    code_lines = {ln.strip() for ln in src.splitlines() if len(ln.strip()) > 30 and not ln.strip().startswith(
        ("#", '"', "raise Failed", "f\"", "\"", "'"))}
    for p in (batch["out"] / "feedback").glob("*.md"):
        text = p.read_text()
        assert "Traceback" not in text and "_hidden_tests" not in text and "_hidden_harness" not in text
        leaked = [ln for ln in code_lines if ln in text]
        assert not leaked, f"{p.name} quotes hidden test code: {leaked[:3]}"


def test_hanging_submission_is_killed_with_its_process_group(tmp_path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    pidfile = tmp_path / "grandchild.pid"
    write_sub(subs, "hangs", REFERENCE + textwrap.dedent(f"""
        import signal as _sig, subprocess as _sp, time as _t
        _p = _sp.Popen(["sleep", "300"])
        open({str(pidfile)!r}, "w").write(str(_p.pid))
        _sig.signal(_sig.SIGALRM, _sig.SIG_IGN)  # dodge the per-test alarm: only the wall clock stops it
        while True:
            _t.sleep(0.2)
        """))
    t0 = time.time()
    results = {r["id"]: r for r in grader.grade(subs, out, jobs=1, timeout=20, memory_mb=1024, progress=False)}
    took = time.time() - t0
    assert results["hangs"]["status"] == "timeout" and results["hangs"]["total"] == 0
    assert took < 80
    _, rows = read_grades(out)
    assert rows["hangs"]["grading_status"] == "timeout"
    assert pidfile.exists(), "the submission's code did not start within the timeout (machine very busy?)"
    pid = int(pidfile.read_text())  # its grandchild (same process group) must be gone too
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), "the submission's grandchild process survived the timeout"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def test_zip_staging_limits(tmp_path, monkeypatch):
    def zipped(name, members, symlink=None):
        p = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for n, data in members.items():
                z.writestr(n, data)
            if symlink:
                info = zipfile.ZipInfo(symlink)
                info.external_attr = (0o120777 << 16)
                z.writestr(info, "/etc/passwd")
        return submissions.Submission(name, p)

    ok = submissions.stage(zipped("ok", {"a/models.py": "x = 1\n", "a/b/models.py": "y", "notes.txt": "hi"}),
                      tmp_path / "s_ok")
    assert ok.models.read_text() == "x = 1\n" and ok.notes and not (tmp_path / "s_ok" / "notes.txt").exists()
    with pytest.raises(submissions.SubmissionError, match="symbolic link"):
        submissions.stage(zipped("link", {"models.py": "x"}, symlink="models2.py"), tmp_path / "s_link")
    with pytest.raises(submissions.SubmissionError, match="unsafe path"):
        submissions.stage(zipped("abs", {"/etc/models.py": "x"}), tmp_path / "s_abs")
    monkeypatch.setattr(submissions, "MAX_FILE_BYTES", 1000)
    with pytest.raises(submissions.SubmissionError, match="too many bytes"):
        submissions.stage(zipped("bomb", {"models.py": "0" * 10 ** 6}), tmp_path / "s_bomb")
    (tmp_path / "notzip.zip").write_text("nope")
    with pytest.raises(submissions.SubmissionError, match="not a readable zip"):
        submissions.stage(submissions.Submission("nz", tmp_path / "notzip.zip"), tmp_path / "s_nz")


def test_notebooks_flag(tmp_path):
    if not (kit_root() / "instructor" / "notebook_runs.py").is_file():
        pytest.skip("instructor/notebook_runs.py (the notebook runner) is not in the kit: --notebooks runs "
                    "`python -m instructor.notebook_runs` in each sandbox")
    # the real runner at the smallest sizes, one notebook (train1: its metrics hold the best validation BLEU-4)
    subs, out = tmp_path / "subs", tmp_path / "out"
    subs.mkdir()
    write_sub(subs, "reference", REFERENCE)
    results = grader.grade(subs, out, jobs=1, timeout=300, memory_mb=2048, notebooks=True, notebook_timeout=300,
                           notebook_runs=("train1",), progress=False,
                           notebook_params=["shapes_n_train=10", "shapes_n_val=5", "shapes_n_test=5",
                                            "shapes_image_size=32", "embed_dim=16", "decoder_dim=16"])
    nb = results[0]["notebooks"]
    assert nb["status"] == "ok", f"{nb}\n{(out / 'logs' / 'reference.log').read_text()[-3000:]}"
    assert set(nb["bleu4"]) == {"train1"} and 0 <= nb["bleu4"]["train1"] <= 1
    _, rows = read_grades(out)
    assert rows["reference"]["notebooks_status"] == "ok" and rows["reference"]["bleu4_train1"]


FAKE_NOTEBOOKS = textwrap.dedent("""
    \"\"\"Stand-in for the notebook runner (`python -m instructor.notebook_runs --out DIR --timeout S --only A,B
    key=value ...`): writes a metrics JSON whose BLEU-4 encodes what it was given.\"\"\"
    import argparse, glob, json, os

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--timeout")
    p.add_argument("--only", type=lambda v: [r for r in v.split(",") if r])
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    params = dict(kv.split("=", 1) for kv in a.overrides)
    n = len(glob.glob("notebooks/train*.ipynb"))
    assert a.only == ["train1", "train2", "test_rnn", "test_attention"] and params["epochs"] == "GRADING_EPOCHS", a
    assert os.path.isfile("instructor/fastpath.py"), "the sandbox has no fast path"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "test_rnn.metrics.json"), "w") as f:
        json.dump({"split": "TEST", "bleu4": n / 10 + float(params.get("bonus", 0))}, f)
    """)


def test_notebooks_plumbing_with_a_stand_in_runner(tmp_path, monkeypatch):
    kit = tmp_path / "kit"
    shutil.copytree(kit_root() / "captioning", kit / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    # the grader passes the recipe's grading sizes (captioning/recipe.py) to the runner
    epochs = str(grader.SMALL_NOTEBOOK_PARAMS["epochs"])
    (kit / "instructor").mkdir()
    (kit / "instructor" / "notebook_runs.py").write_text(FAKE_NOTEBOOKS.replace("GRADING_EPOCHS", epochs))
    shutil.copyfile(kit_root() / "instructor" / "fastpath.py", kit / "instructor" / "fastpath.py")
    monkeypatch.setattr(grader, "_kit", lambda: kit)
    subs, out = tmp_path / "subs", tmp_path / "out"
    with zipfile.ZipFile(tmp_path / "alice.zip", "w") as z:
        z.writestr("alice/models.py", REFERENCE)
        z.writestr("alice/train_rnn.ipynb", "{}")
        z.writestr("alice/BEST_checkpoint.pth.tar", b"not really")
    subs.mkdir()
    shutil.move(tmp_path / "alice.zip", subs / "alice.zip")
    results = grader.grade(subs, out, jobs=1, timeout=240, memory_mb=1024, notebooks=True,
                           notebook_params=["bonus=0.02"], progress=False)
    nb = results[0]["notebooks"]
    assert results[0]["percent"] == 100.0
    assert nb["status"] == "ok" and nb["bleu4"] == {"test_rnn": pytest.approx(0.12)}, nb
    _, rows = read_grades(out)
    assert rows["alice"]["notebooks_status"] == "ok" and rows["alice"]["bleu4_test_rnn"] == "0.1200"
    assert "test_rnn: BLEU-4 0.1200" in (out / "feedback" / "alice.md").read_text()


def test_grade_cli_errors(tmp_path, capsys):
    from instructor.cli import main

    assert main(["grade", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "subs").mkdir()
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no submissions" in capsys.readouterr().err


def test_status_of_a_run_from_its_events():
    from types import SimpleNamespace as NS

    def status(events, rc=0, timed_out=False):
        job = NS(proc=NS(events=events, returncode=rc, timed_out=timed_out), timeout=60, per_test=5, memory_mb=512)
        return grader._Job._status(job)[0]

    ready, imp = {"event": "ready"}, {"event": "import", "ok": True}
    test = {"event": "test", "name": "x", "ok": True, "kind": "pass"}
    assert status([ready, imp, test, {"event": "done"}]) == "ok"
    assert status([]) == "crashed" and status([], rc=None, timed_out=True) == "timeout"
    assert status([ready, {"event": "import", "ok": False, "kind": "error"}]) == "import-error"
    assert status([ready, {"event": "import", "ok": False, "kind": "memory"}]) == "memory"
    assert status([ready, imp, test], rc=0) == "crashed"  # os._exit after one test
    assert status([ready, imp, test], rc=-9) == "crashed"
    assert status([ready, imp, dict(test, ok=False, kind="memory"), {"event": "done"}]) == "memory"
    assert status([ready, imp, test], timed_out=True) == "timeout"
    assert status([ready, {"event": "fatal", "message": "x"}]) == "crashed"
