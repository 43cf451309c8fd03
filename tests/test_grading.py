"""The grader (instructor-only): the reference scores 100 %, the untouched student edition 0 on every test, each
one-bug submission loses points in its own region only (with the hint of its own cause), each correct alternative
style keeps every point, and a second run resumes from the journal with the same grades.csv.

The bugs are made from the reference models.py by string replacement inside one TODO region, so they follow the
reference as it changes. One grading run (each submission's process imports torch: ~2-3 s a submission). The
hostile submissions are in ``test_grading_hostile.py``.
"""

from __future__ import annotations

import csv
import json
import time
import zipfile
from pathlib import Path

import pytest

from captioning.check import kit_root
from captioning.internals.errors import KitError
from instructor.grading import batch as grader
from instructor.grading import submissions
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
    body = "".join(lines[regs[0].begin : regs[0].end - 1])
    assert body.count(old) == 1, f"{old!r} is not exactly once in region {region}: update the mutant"
    lines[regs[0].begin : regs[0].end - 1] = [body.replace(old, new)]
    return "".join(lines)


# One-bug submissions: name -> (region, [(old, new)], tests that must fail, a word their messages must hold).
# Each must lose points in its own region only; ``ALTERNATIVES`` (correct other styles) must keep every point.
BUGS = {
    "rnn_embedding_dims": (
        "DecoderWithRNN.__init__",
        [("nn.Embedding(self.vocab_size, self.embed_dim)", "nn.Embedding(self.embed_dim, self.vocab_size)")],
        {"rnn_init_layer_names_shapes"},
        "sizes",
    ),
    "rnn_dropout_default_p": (
        "DecoderWithRNN.__init__",
        [("nn.Dropout(p=self.dropout_p)", "nn.Dropout()")],
        {"rnn_init_layer_types"},
        "dropout_p",
    ),
    "rnn_dropout_inplace": (
        "DecoderWithRNN.__init__",
        [("nn.Dropout(p=self.dropout_p)", "nn.Dropout(p=self.dropout_p, inplace=True)")],
        {"rnn_init_layer_types"},
        "in place",
    ),
    "rnn_layernorm": (
        "DecoderWithRNN.__init__",
        [("nn.BatchNorm1d(self.embed_dim)", "nn.LayerNorm(self.embed_dim)")],
        {"rnn_init_layer_names_shapes"},
        "weights",
    ),
    "rnn_lstm_sizes": (
        "DecoderWithRNN.__init__",
        [("nn.LSTMCell(self.embed_dim, self.decoder_dim)", "nn.LSTMCell(self.decoder_dim, self.decoder_dim)")],
        {"rnn_init_layer_names_shapes"},
        "sizes",
    ),
    "rnn_step_hc_out": (
        "DecoderWithRNN.one_step",
        [("h, c = self.decode_step(", "c, h = self.decode_step(")],
        {"rnn_one_step_h_c_order", "rnn_one_step_eval"},
        "swapped",
    ),
    "rnn_step_hc_in": (
        "DecoderWithRNN.one_step",
        [("(embeddings, (h, c))", "(embeddings, (c, h))")],
        {"rnn_one_step_h_c_order", "rnn_one_step_eval"},
        "(c, h)",
    ),
    "rnn_dropout_on_scores": (
        "DecoderWithRNN.one_step",
        [("self.fc(self.dropout(h))", "self.dropout(self.fc(h))")],
        {"rnn_one_step_dropout_train"},
        "dropout",
    ),
    "rnn_no_dropout": (
        "DecoderWithRNN.one_step",
        [("self.fc(self.dropout(h))", "self.fc(h)")],
        {"rnn_one_step_dropout_train"},
        "dropout",
    ),
    "rnn_dropout_state": (
        "DecoderWithRNN.one_step",
        [("preds = self.fc(self.dropout(h))", "h = self.dropout(h)\n        preds = self.fc(h)")],
        {"rnn_one_step_train_keeps_state"},
        "in place",
    ),
    "rnn_dropout_input": (
        "DecoderWithRNN.one_step",
        [("(embeddings, (h, c))", "(self.dropout(embeddings), (h, c))"), ("self.fc(self.dropout(h))", "self.fc(h)")],
        {"rnn_one_step_dropout_train", "rnn_one_step_train_keeps_state"},
        "dropout",
    ),
    "rnn_squeeze_all": (
        "DecoderWithRNN.one_step",
        [("preds = self.fc(self.dropout(h))", "preds = self.fc(self.dropout(h)).squeeze()")],
        {"rnn_one_step_batch_of_one"},
        "batch of one",
    ),
    "rnn_fwd_full_batch": (
        "DecoderWithRNN.forward",
        [
            ("self.one_step(embeddings[:num, t, :], h[:num], c[:num])", "self.one_step(embeddings[:, t, :], h, c)"),
            ("predictions[:num, t, :] = preds", "predictions[:, t, :] = preds"),
        ],
        {"rnn_forward_rows_past_end_zero", "rnn_forward_padding_independent"},
        None,
    ),
    "rnn_fwd_off_by_one": (
        "DecoderWithRNN.forward",
        [("if length > t", "if length >= t")],
        {"rnn_forward_rows_past_end_zero", "rnn_forward_eval"},
        None,
    ),
    "rnn_fwd_zero_state": (
        "DecoderWithRNN.forward",
        [
            (
                "for t in range(max(decode_lengths)):",
                "h, c = torch.zeros_like(h), torch.zeros_like(c)\n        for t in range(max(decode_lengths)):",
            )
        ],
        {"rnn_forward_starts_from_initial_state", "rnn_forward_eval"},
        "init_hidden_state",
    ),
    "rnn_fwd_cpu_tensor": (
        "DecoderWithRNN.forward",
        [("predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds * torch.ones(num, 1)")],
        {"rnn_forward_device"},
        "device",
    ),
    "att_attention_arg_order": (
        "DecoderWithAttention.__init__",
        [
            (
                "Attention(self.encoder_dim, self.decoder_dim, self.attention_dim)",
                "Attention(self.decoder_dim, self.encoder_dim, self.attention_dim)",
            )
        ],
        {"att_init_attention_arguments"},
        "Attention(",
    ),
    "att_lstm_input": (
        "DecoderWithAttention.__init__",
        [
            (
                "nn.LSTMCell(self.embed_dim + self.encoder_dim, self.decoder_dim)",
                "nn.LSTMCell(self.embed_dim + self.decoder_dim, self.decoder_dim)",
            )
        ],
        {"att_init_layer_names_shapes", "att_init_layer_types"},
        None,
    ),
    "att_dropout_default_p": (
        "DecoderWithAttention.__init__",
        [("nn.Dropout(p=self.dropout_p)", "nn.Dropout()")],
        {"att_init_layer_types"},
        "dropout_p",
    ),
    "att_tanh_gate_layer": (
        "DecoderWithAttention.__init__",
        [("self.sigmoid = nn.Sigmoid()", "self.sigmoid = nn.Tanh()")],
        {"att_init_layer_types"},
        "Sigmoid",
    ),
    "att_no_gate": (
        "DecoderWithAttention.one_step",
        [("z = gate * z", "z = z")],
        {"att_one_step_gate", "att_one_step_eval"},
        "gate",
    ),
    "att_linear_gate": (
        "DecoderWithAttention.one_step",
        [("gate = self.sigmoid(self.f_beta(h))", "gate = self.f_beta(h)")],
        {"att_one_step_gate", "att_one_step_eval"},
        "gate",
    ),
    "att_hc_out": (
        "DecoderWithAttention.one_step",
        [("h, c = self.decode_step(", "c, h = self.decode_step(")],
        {"att_one_step_h_c_order", "att_one_step_eval"},
        "swapped",
    ),
    "att_dropout_on_scores": (
        "DecoderWithAttention.one_step",
        [("preds = self.fc(self.dropout(h))", "preds = self.dropout(self.fc(h))")],
        {"att_one_step_dropout_train"},
        "dropout",
    ),
    "att_dropout_twice": (
        "DecoderWithAttention.one_step",
        [("self.fc(self.dropout(h))", "self.fc(self.dropout(self.dropout(h)))")],
        {"att_one_step_dropout_train"},
        "dropout",
    ),
    "att_attend_with_c": (
        "DecoderWithAttention.one_step",
        [("self.attention(encoder_out, h)", "self.attention(encoder_out, c)")],
        {"att_one_step_eval"},
        None,
    ),
    "att_cat_order": (
        "DecoderWithAttention.one_step",
        [("torch.cat([embeddings, z], dim=1)", "torch.cat([z, embeddings], dim=1)")],
        {"att_one_step_eval"},
        None,
    ),
    "att_squeeze_all": (
        "DecoderWithAttention.one_step",
        [("preds = self.fc(self.dropout(h))", "preds = self.fc(self.dropout(h)).squeeze()")],
        {"att_one_step_batch_of_one"},
        "batch of one",
    ),
    "att_fwd_full_batch": (
        "DecoderWithAttention.forward",
        [
            (
                "self.one_step(embeddings[:num, t, :], encoder_out[:num], h[:num], c[:num])",
                "self.one_step(embeddings[:, t, :], encoder_out, h, c)",
            ),
            ("predictions[:num, t, :] = preds", "predictions[:, t, :] = preds"),
            ("alphas[:num, t, :] = alpha", "alphas[:, t, :] = alpha"),
        ],
        {"att_forward_padding_independent", "att_forward_rows_past_end_zero"},
        None,
    ),
    "att_fwd_no_alphas": (
        "DecoderWithAttention.forward",
        [("alphas[:num, t, :] = alpha", "pass")],
        {"att_forward_eval"},
        "alphas",
    ),
    "att_fwd_cpu_tensor": (
        "DecoderWithAttention.forward",
        [("alphas[:num, t, :] = alpha", "alphas[:num, t, :] = alpha * torch.ones(num, 1)")],
        {"att_forward_device"},
        "device",
    ),
    "att_fwd_zero_state": (
        "DecoderWithAttention.forward",
        [
            (
                "for t in range(max(decode_lengths)):",
                "h, c = torch.zeros_like(h), torch.zeros_like(c)\n        for t in range(max(decode_lengths)):",
            )
        ],
        {"att_forward_starts_from_initial_state", "att_forward_eval"},
        "init_hidden_state",
    ),
    "attn_att_out_size": (
        "Attention.__init__",
        [("nn.Linear(attention_dim, 1)", "nn.Linear(attention_dim, attention_dim)")],
        {"attention_init_layer_names_shapes"},
        "sizes",
    ),
    "attn_encoder_att_in": (
        "Attention.__init__",
        [("nn.Linear(encoder_dim, attention_dim)", "nn.Linear(decoder_dim, attention_dim)")],
        {"attention_init_layer_names_shapes"},
        "sizes",
    ),
    "attn_softmax_batch": (
        "Attention.forward",
        [("F.softmax(e, dim=1)", "F.softmax(e, dim=0)")],
        {"attention_softmax_over_regions", "attention_forward_eval"},
        "dim=1",
    ),
    "attn_squeeze_all": ("Attention.forward", [(".squeeze(2)", ".squeeze()")], {"attention_batch_of_one"}, None),
    "attn_no_relu": (
        "Attention.forward",
        [("F.relu(att1 + att2)", "(att1 + att2)")],
        {"attention_forward_eval"},
        "relu",
    ),
}

ALTERNATIVES = {
    "bmm": [
        (
            "Attention.forward",
            "z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)",
            "z = torch.bmm(alpha.unsqueeze(1), encoder_out).squeeze(1)",
        )
    ],
    "einsum": [
        (
            "Attention.forward",
            "z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)",
            "z = torch.einsum('np,npc->nc', alpha, encoder_out)",
        )
    ],
    "torch_sigmoid": [
        ("DecoderWithAttention.one_step", "gate = self.sigmoid(self.f_beta(h))", "gate = torch.sigmoid(self.f_beta(h))")
    ],
    "extra_layers": [
        (
            "Attention.__init__",
            "self.att = nn.Linear(attention_dim, 1)",
            "self.att = nn.Linear(attention_dim, 1)\n        self.relu = nn.ReLU()\n"
            "        self.softmax = nn.Softmax(dim=1)",
        ),
        ("Attention.forward", "F.relu(att1 + att2)", "self.relu(att1 + att2)"),
        ("Attention.forward", "F.softmax(e, dim=1)", "self.softmax(e)"),
    ],
    "keywords": [
        (
            "Attention.__init__",
            "nn.Linear(encoder_dim, attention_dim)",
            "nn.Linear(in_features=encoder_dim, out_features=attention_dim)",
        ),
        (
            "DecoderWithAttention.__init__",
            "Attention(self.encoder_dim, self.decoder_dim, self.attention_dim)",
            "Attention(attention_dim=self.attention_dim, encoder_dim=self.encoder_dim, decoder_dim=self.decoder_dim)",
        ),
    ],
    "functional_dropout": [
        ("DecoderWithRNN.one_step", "self.fc(self.dropout(h))", "self.fc(F.dropout(h, self.dropout_p, self.training))")
    ],
    "full_batch_store_num": [
        (
            "DecoderWithRNN.forward",
            "preds, h, c = self.one_step(embeddings[:num, t, :], h[:num], c[:num])",
            "preds, h, c = self.one_step(embeddings[:, t, :], h, c)",
        ),
        ("DecoderWithRNN.forward", "predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds[:num]"),
    ],
    "bisect_num": [
        (
            "DecoderWithAttention.forward",
            "num = sum(1 for length in decode_lengths if length > t)",
            "import bisect\n            num = bisect.bisect_left([-n for n in decode_lengths], -t)",
        )
    ],
    "masked_store": [
        (
            "DecoderWithAttention.forward",
            "preds, alpha, h, c = self.one_step(embeddings[:num, t, :], encoder_out[:num], h[:num], c[:num])",
            "preds, alpha, h, c = self.one_step(embeddings[:, t, :], encoder_out, h, c)\n"
            "            live = (torch.tensor(decode_lengths, device=encoder_out.device) > t)"
            ".unsqueeze(1).to(preds.dtype)",
        ),
        ("DecoderWithAttention.forward", "predictions[:num, t, :] = preds", "predictions[:, t, :] = preds * live"),
        ("DecoderWithAttention.forward", "alphas[:num, t, :] = alpha", "alphas[:, t, :] = alpha * live"),
    ],
    "cat_last_dim": [
        ("DecoderWithAttention.one_step", "torch.cat([embeddings, z], dim=1)", "torch.cat((embeddings, z), dim=-1)")
    ],
}


def bug_text(name):
    region, edits, _, _ = BUGS[name]
    text = REFERENCE
    for old, new in edits:
        text = mutate(text, region, old, new)
    return text


def alternative_text(name):
    text = REFERENCE
    for region, old, new in ALTERNATIVES[name]:
        text = mutate(text, region, old, new)
    return text


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


STUDENT_EDITION = strip_solutions(REFERENCE, "models.py")[0]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One grading run over the reference, the student edition, every one-bug submission and every alternative."""
    root = tmp_path_factory.mktemp("grading")
    subs, out = root / "submissions", root / "out"
    subs.mkdir()
    write_sub(subs, "reference", REFERENCE)
    write_sub(subs, "student_edition", STUDENT_EDITION, as_zip=True)
    for name in BUGS:
        write_sub(subs, f"bug_{name}", bug_text(name))
    for name in ALTERNATIVES:
        write_sub(subs, f"alt_{name}", alternative_text(name))
    (subs / "README.txt").write_text("not a submission")
    t0 = time.time()
    from instructor.cli import main
    from instructor.grading.sandbox import missing_layers

    rc = main(
        ["grade", str(subs), "--out", str(out), "--jobs", "2", "--timeout", "240", "--memory-mb", "1024", "--quiet"]
        + (["--allow-unsandboxed"] if missing_layers() else [])
    )
    assert rc == 0
    results = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    return {"root": root, "subs": subs, "out": out, "results": results, "seconds": time.time() - t0}


def test_rubric_matches_hidden_tests_and_regions():
    assert set(REGIONS) == {r.name for r in find_regions(REFERENCE, "models.py")}
    assert {t for r in REGIONS for t in RUBRIC["regions"][r]} == set(TESTS)


def test_rubric_errors(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text('[regions."DecoderWithRNN.__init__"]\nrnn_init_constructs = 1\n')
    with pytest.raises(KitError, match="differ"):
        load_rubric(bad)
    bad.write_text("not toml [")
    with pytest.raises(KitError, match="not valid TOML"):
        load_rubric(bad)


def test_enough_bugs_and_alternatives():
    assert len(BUGS) >= 30 and len(ALTERNATIVES) >= 8
    assert {region for region, *_ in BUGS.values()} == set(REGIONS)  # every region has its bugs


def test_grades_csv_and_reference_full_marks(batch):
    header, rows = read_grades(batch["out"])
    assert header["id"] == "max" and header["total"] == "53"
    ref = rows["reference"]
    assert ref["percent"] == "100.0" and ref["grading_status"] == "ok"
    assert "README" not in " ".join(rows)
    summary = (batch["out"] / "summary.md").read_text()
    assert "Layers in use: bwrap, cgroup-memory, cgroup-pids" in summary or "WITHOUT" in summary


def test_student_edition_scores_zero_on_every_test(batch):
    r = batch["results"]["student_edition"]
    assert r["status"] == "ok" and r["total"] == 0
    assert all(not t["ok"] for t in r["tests"].values())


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_correct_alternatives_keep_every_point(batch, name):
    r = batch["results"][f"alt_{name}"]
    failed = {t: v["message"] for t, v in r["tests"].items() if not v["ok"]}
    assert r["percent"] == 100.0, failed


@pytest.mark.parametrize("name", list(BUGS))
def test_a_bug_costs_points_in_its_own_region_only(batch, name):
    region, _, must_fail, word = BUGS[name]
    r = batch["results"][f"bug_{name}"]
    assert r["status"] == "ok", r["message"]
    failed = {t for t, v in r["tests"].items() if not v["ok"]}
    outside = {t for t in failed if r["tests"][t]["region"] != region}
    assert not outside, f"{name} also lost {outside}"
    assert must_fail <= failed, f"{name}: {must_fail - failed} passed; failed: {failed}"
    if word is not None:
        for t in must_fail - {n for n in must_fail if n.endswith("_eval")} or must_fail:
            assert word in r["tests"][t]["message"], (t, r["tests"][t]["message"])


def test_each_hint_fires_for_its_own_cause_only(batch):
    """A hint naming a cause (gate, dropout, h/c order, batch of one, device) appears only for that cause."""
    causes = {
        "gate": "gate",
        "dropout": "dropout",
        "swapped": "hc",
        "(c, h)": "hc",
        "squeeze": "squeeze",
        "device": "cpu_tensor",
    }
    for name in BUGS:
        r = batch["results"][f"bug_{name}"]
        for t, v in r["tests"].items():
            if v["ok"] or t.endswith("_eval") or "_init_" in t:
                continue
            for word, cause in causes.items():
                if word in v["message"]:
                    assert cause in name or (cause == "hc" and "hc" in name), (name, t, v["message"])


def test_feedback_never_quotes_hidden_tests(batch):
    here = Path(grader.__file__).parent
    src = "\n".join(
        (here / name).read_text()
        for name in (
            "hidden_tests.py",
            "hidden_init_tests.py",
            "hidden_attention_tests.py",
            "hidden_checks.py",
            "hidden_harness.py",
        )
    )
    code_lines = {
        ln.strip()
        for ln in src.splitlines()
        if len(ln.strip()) > 30 and not ln.strip().startswith(("#", '"', "raise Failed", 'f"', '"', "'", "raise _todo"))
    }
    for p in (batch["out"] / "feedback").glob("*.md"):
        text = p.read_text()
        assert "Traceback" not in text and "hidden_tests" not in text and "hidden_harness" not in text
        leaked = [ln for ln in code_lines if ln in text]
        assert not leaked, f"{p.name} quotes hidden test code: {leaked[:3]}"


def test_resume_writes_the_same_grades(batch, tmp_path):
    """A second run of the same command grades nothing again (journal) and writes the same grades.csv."""
    before = (batch["out"] / "grades.csv").read_text()
    journaled = {p.name: p.stat().st_mtime_ns for p in (batch["out"] / "journal").glob("*.json")}
    from instructor.grading.sandbox import missing_layers

    results = grader.grade(
        batch["subs"],
        batch["out"],
        jobs=2,
        timeout=240,
        memory_mb=1024,
        progress=False,
        allow_unsandboxed=bool(missing_layers()),
    )
    assert len(results) == len(batch["results"])
    # graded again, an entry would be written again: every journal entry is the first run's, untouched
    assert journaled and {p.name: p.stat().st_mtime_ns for p in (batch["out"] / "journal").glob("*.json")} == journaled
    assert (batch["out"] / "grades.csv").read_text() == before


def test_zip_staging_limits(tmp_path, monkeypatch):
    def zipped(name, members, symlink=None):
        p = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for n, data in members.items():
                z.writestr(n, data)
            if symlink:
                info = zipfile.ZipInfo(symlink)
                info.external_attr = 0o120777 << 16
                z.writestr(info, "/etc/passwd")
        return submissions.Submission(name, p)

    ok = submissions.stage(
        zipped("ok", {"a/models.py": "x = 1\n", "a/b/models.py": "y", "notes.txt": "hi"}), tmp_path / "s_ok"
    )
    assert ok.models.read_text() == "x = 1\n" and ok.notes and not (tmp_path / "s_ok" / "notes.txt").exists()
    with pytest.raises(submissions.SubmissionError, match="symbolic link"):
        submissions.stage(zipped("link", {"models.py": "x"}, symlink="models2.py"), tmp_path / "s_link")
    with pytest.raises(submissions.SubmissionError, match="unsafe path"):
        submissions.stage(zipped("abs", {"/etc/models.py": "x"}), tmp_path / "s_abs")
    monkeypatch.setattr(submissions, "MAX_FILE_BYTES", 1000)
    with pytest.raises(submissions.SubmissionError, match="too many bytes"):
        submissions.stage(zipped("bomb", {"models.py": "0" * 10**6}), tmp_path / "s_bomb")
    (tmp_path / "notzip.zip").write_text("nope")
    with pytest.raises(submissions.SubmissionError, match="not a readable zip"):
        submissions.stage(submissions.Submission("nz", tmp_path / "notzip.zip"), tmp_path / "s_nz")


@pytest.mark.parametrize("bwrap", [True, False], ids=["sandbox", "no-bwrap"])
def test_grade_cli_errors(tmp_path, capsys, monkeypatch, bwrap):
    """The command line's own mistakes are reported as such, whether or not the machine has bubblewrap."""
    from instructor.cli import main

    if not bwrap:
        monkeypatch.setattr(
            grader,
            "probe_layers",
            lambda: {
                "bwrap": (False, "bubblewrap is not installed"),
                "cgroup-memory": (True, "x"),
                "cgroup-pids": (True, "y"),
            },
        )

    assert main(["grade", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "subs").mkdir()
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no submissions" in capsys.readouterr().err
    assert main(["grade", "--quiet"]) == 2
    assert "--check-sandbox" in capsys.readouterr().err


def test_wire_format_round_trip_and_refusals():
    import torch

    from instructor.grading import wire

    value = {
        "a": (torch.arange(6).reshape(2, 3), [1.5, None, "x"]),
        "m": torch.empty(2, 4, device="meta"),
        "b": torch.tensor([True, False]),
        "inf": float("inf"),
        "g": (x for x in ()),
    }
    reader = wire.Reader()
    [back] = reader.feed(wire.encode(value))
    assert torch.equal(back["a"][0], value["a"][0]) and back["a"][1] == [1.5, None, "x"]
    assert back["m"].device.type == "meta" and back["m"].shape == (2, 4) and back["inf"] == float("inf")
    assert isinstance(back["g"], wire.Unencodable)
    with pytest.raises(wire.WireError):
        wire.Reader().feed(b"99999999999 0\n")
    with pytest.raises(wire.WireError):  # a tensor whose data is shorter than its shape says
        head = b'{"v": {"__x": 0}, "t": [{"dtype": "float32", "shape": [1000], "device": "cpu", "n": 4000}]}'
        wire.Reader().feed(b"%d 4\n" % len(head) + head + b"\0" * 4)
    with pytest.raises(wire.WireError):  # pickles are not a message
        import pickle

        wire.Reader().feed(pickle.dumps({"x": 1}))


def test_a_missing_sandbox_layer_is_refused_unless_allowed(monkeypatch, capsys):
    from instructor.grading import sandbox

    layers = {"bwrap": (False, "bubblewrap is not installed"), "cgroup-memory": (True, "x"), "cgroup-pids": (True, "y")}
    monkeypatch.setattr(grader, "probe_layers", lambda: layers)
    with pytest.raises(
        KitError,
        match=r"bwrap: bubblewrap is not installed.*apt-get install -y bubblewrap.*"
        r"--allow-unsandboxed",
    ):
        grader.check_layers(False)
    active, missing = grader.check_layers(True)
    assert active == ["cgroup-memory", "cgroup-pids"] and set(missing) == {"bwrap"}
    assert "WITHOUT these sandbox layers" in capsys.readouterr().err
    assert sandbox.INSTALL_HINT == "apt-get install -y bubblewrap"


def test_a_reference_method_is_served_only_after_the_students_own_was_graded():
    from instructor.grading.hidden_harness import CALLS, GRADED, REMOTE_MODULES

    served_by = {"attention": "Attention.forward"}
    seen = set()
    for name, (region, _) in TESTS.items():
        cls, method = region.split(".")
        if method != "__init__":
            served = [f"{cls}.{m}" for m in CALLS[method] if m in GRADED[cls]]
            served += [served_by[m] for m in REMOTE_MODULES.get(cls, ())]
            later = [r for r in served if any(reg == r and t not in seen for t, (reg, _) in TESTS.items())]
            assert not later, f"{name} is served the reference of {later} before they are graded"
        seen.add(name)


def test_a_sandbox_that_cannot_be_set_up_is_a_grader_error_row_not_an_exception(tmp_path):
    from instructor.grading.job import Job

    sub = submissions.Submission("x", tmp_path, models=tmp_path / "missing.py")
    opts = {"timeout": 10, "memory_mb": 100, "per_test": 1, "notebooks": None, "notebook_timeout": 1, "rubric": RUBRIC}
    r = Job(sub, tmp_path / "work", tmp_path / "no-edition", None, opts, [], "1").run()
    assert r["status"] == "grader-error" and "could not set up the sandbox" in r["message"] and r["total"] == 0
