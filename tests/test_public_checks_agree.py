"""The students' self-check agrees with the grading in both directions, on one-bug variants of the reference
``models.py`` (string edits inside one solution region, with ``mutate`` of ``test_grading.py``) and on correct
alternatives written in other styles.

* a correct alternative: ``python -m captioning check all`` passes every check, no FAIL and no WARN;
* a bug: at least one FAIL or WARN line names the TODO and the cause (a regex per bug); a few bugs also name
  causes that must NOT be blamed (a missing gate is not a dropout problem);
* the reference: every check passes.

Each variant is a copy of the kit's ``captioning/`` and ``tests/public/`` with its own ``models.py``, checked in its
own process (three at a time) with that copy first on the path; a WARN is also run under pytest, where it must
be a warning, not a failure. Instructor-only (not part of the release).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_grading import mutate

ROOT = Path(__file__).resolve().parent.parent
MODELS = (ROOT / "captioning" / "models.py").read_text(encoding="utf-8")
LINE = re.compile(r"^(PASS|FAIL|WARN)  (\S+)\s+(.*)$")
CHECK = ["-m", "captioning", "check", "all"]

R, A, AD = "DecoderWithRNN", "Attention", "DecoderWithAttention"
RNN_STEP = "self.one_step(embeddings[:num, t, :], h[:num], c[:num])"
ATT_STEP = "self.one_step(embeddings[:num, t, :], encoder_out[:num], h[:num], c[:num])"
LOOP = "for t in range(max(decode_lengths)):"
I8 = "\n        "  # a new line inside a method
I12 = "\n            "  # a new line inside the forward loop

# name -> ([(region, old, new), ...], TODO the cause line names, cause regex[, regex no line may match])
BUGS = {
    "rnn_dropout_default_p": (
        [(f"{R}.__init__", "nn.Dropout(p=self.dropout_p)", "nn.Dropout()")],
        f"{R}.__init__",
        r"dropout has p=0\.5.*default",
    ),
    "att_dropout_inplace": (
        [(f"{AD}.__init__", "nn.Dropout(p=self.dropout_p)", "nn.Dropout(p=self.dropout_p, inplace=True)")],
        f"{AD}.__init__",
        r"inplace=True",
    ),
    "att_attention_argument_order": (
        [
            (
                f"{AD}.__init__",
                "Attention(self.encoder_dim, self.decoder_dim,",
                "Attention(self.decoder_dim, self.encoder_dim,",
            )
        ],
        f"{AD}.__init__",
        r"arguments of Attention\(\.\.\.\) are in the wrong order",
    ),
    "att_lstm_input_size": (
        [
            (
                f"{AD}.__init__",
                "nn.LSTMCell(self.embed_dim + self.encoder_dim,",
                "nn.LSTMCell(self.embed_dim + self.decoder_dim,",
            )
        ],
        f"{AD}.__init__",
        r"decode_step\.weight_ih has shape",
    ),
    "rnn_layer_name": (
        [(f"{R}.__init__", "self.fc = nn.Linear(", "self.out = nn.Linear(")],
        f"{R}.__init__",
        r"missing: fc\.bias, fc\.weight",
    ),
    "rnn_layer_type": (
        [
            (
                f"{R}.__init__",
                "nn.BatchNorm1d(self.embed_dim)",
                "nn.InstanceNorm1d(self.embed_dim, affine=True, track_running_stats=True)",
            )
        ],
        f"{R}.__init__",
        r"self\.bn is a InstanceNorm1d, expected nn\.BatchNorm1d",
    ),
    "attention_layer_sizes": (
        [(f"{A}.__init__", "nn.Linear(encoder_dim, attention_dim)", "nn.Linear(decoder_dim, attention_dim)")],
        f"{A}.__init__",
        r"encoder_att\.weight has shape",
    ),
    "rnn_h_c_swapped_at_output": (
        [(f"{R}.one_step", "h, c = self.decode_step(", "c, h = self.decode_step(")],
        f"{R}.one_step",
        r"swapped at the LSTMCell's output",
    ),
    "att_h_c_swapped_at_input": (
        [(f"{AD}.one_step", "dim=1), (h, c))", "dim=1), (c, h))")],
        f"{AD}.one_step",
        r"swapped at the LSTMCell's input",
        r"dropout",
    ),
    "att_gate_missing": (
        [(f"{AD}.one_step", "z = gate * z", "z = z")],
        f"{AD}.one_step",
        r"gate is missing",
        r"dropout",
    ),
    "rnn_dropout_on_scores": (
        [(f"{R}.one_step", "self.fc(self.dropout(h))", "self.dropout(self.fc(h))")],
        f"{R}.one_step",
        r"dropout is applied to the scores",
    ),
    "att_dropout_on_embeddings": (
        [
            (f"{AD}.one_step", "torch.cat([embeddings, z], dim=1)", "torch.cat([self.dropout(embeddings), z], dim=1)"),
            (f"{AD}.one_step", "self.fc(self.dropout(h))", "self.fc(h)"),
        ],
        f"{AD}.one_step",
        r"dropout goes on h only",
        r"gate",
    ),
    "att_dropout_twice": (
        [(f"{AD}.one_step", "self.fc(self.dropout(h))", "self.fc(self.dropout(self.dropout(h)))")],
        f"{AD}.one_step",
        r"dropout is applied twice",
        r"gate",
    ),
    "rnn_no_dropout": (
        [(f"{R}.one_step", "self.fc(self.dropout(h))", "self.fc(h)")],
        f"{R}.one_step",
        r"no dropout in train mode",
    ),
    "rnn_dropout_in_place": (
        [
            (
                f"{R}.one_step",
                "self.fc(self.dropout(h))",
                "self.fc(F.dropout(h, self.dropout_p, self.training, inplace=True))",
            )
        ],
        f"{R}.one_step",
        r"h that one_step returns has dropout applied.*inplace=True",
    ),
    "att_returns_dropped_h": (
        [(f"{AD}.one_step", "preds = self.fc(self.dropout(h))", f"h = self.dropout(h){I8}preds = self.fc(h)")],
        f"{AD}.one_step",
        r"h that one_step returns has dropout applied",
        r"gate",
    ),
    "rnn_dropout_p_hard_coded": (
        [(f"{R}.one_step", "self.fc(self.dropout(h))", "self.fc(F.dropout(h, 0.5, self.training))")],
        f"{R}.one_step",
        r"dropout uses p=0\.5",
    ),
    "att_dropout_in_eval_mode": (
        [(f"{AD}.one_step", "self.fc(self.dropout(h))", "self.fc(F.dropout(h, self.dropout_p))")],
        f"{AD}.one_step",
        r"dropout must be off in eval mode",
    ),
    "att_one_step_squeeze": (
        [(f"{AD}.one_step", "torch.cat([embeddings, z], dim=1)", "torch.cat([embeddings, z.squeeze()], dim=1)")],
        f"{AD}.one_step",
        r"batch of one \(N=1\)",
    ),
    "attention_softmax_over_batch": (
        [(f"{A}.forward", "F.softmax(e, dim=1)", "F.softmax(e, dim=0)")],
        f"{A}.forward",
        r"over the wrong dim",
    ),
    "attention_squeeze_without_dim": (
        [(f"{A}.forward", ".squeeze(2)", ".squeeze()")],
        f"{A}.forward",
        r"batch of one \(N=1\).*squeeze",
    ),
    "rnn_rows_past_end": (
        [
            (f"{R}.forward", RNN_STEP, "self.one_step(embeddings[:, t, :], h, c)"),
            (f"{R}.forward", "predictions[:num, t, :] = preds", "predictions[:, t, :] = preds"),
        ],
        f"{R}.forward",
        r"rows past a caption's end are not zero",
    ),
    "att_alphas_depend_on_padding": (
        [
            (f"{AD}.forward", ATT_STEP, "self.one_step(embeddings[:, t, :], encoder_out, h, c)"),
            (f"{AD}.forward", "predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds[:num]"),
            (f"{AD}.forward", "alphas[:num, t, :] = alpha", "alphas[:, t, :] = alpha"),
        ],
        f"{AD}.forward",
        r"alphas depend on padding",
    ),
    "att_not_from_init_hidden_state": (
        [(f"{AD}.forward", LOOP, f"h, c = torch.zeros_like(h), torch.zeros_like(c){I8}{LOOP}")],
        f"{AD}.forward",
        r"step 0 .*init_hidden_state",
    ),
    "rnn_h_c_not_carried": (
        [(f"{R}.forward", f"preds, h, c = {RNN_STEP}", f"preds, _, _ = {RNN_STEP}")],
        f"{R}.forward",
        r"step 1 differ",
    ),
    "rnn_mask_on_the_cpu": (
        [
            (f"{R}.forward", RNN_STEP, "self.one_step(embeddings[:, t, :], h, c)"),
            (
                f"{R}.forward",
                "predictions[:num, t, :] = preds",
                f"mask = torch.tensor([n > t for n in decode_lengths]).unsqueeze(1){I12}"
                f"predictions[:, t, :] = preds * mask",
            ),
        ],
        f"{R}.forward",
        r"device",
    ),
    # runs on a GPU (copies between devices), but a CPU tensor where encoder_out's device belongs: a WARN
    "rnn_cpu_buffer": (
        [
            (
                f"{R}.forward",
                "predictions[:num, t, :] = preds",
                f"step = torch.zeros(batch_size, self.vocab_size){I12}step[:num] = preds{I12}"
                f"predictions[:, t, :] = step",
            )
        ],
        f"{R}.forward",
        r"copies into a CPU tensor.*device",
    ),
    "att_forward_squeeze": (
        [(f"{AD}.forward", "embeddings[:num, t, :]", "embeddings[:num, t:t + 1, :].squeeze()")],
        f"{AD}.forward",
        r"num=1, a batch of one",
    ),
}

ALTERNATIVES = {
    "gate_with_torch_sigmoid": [(f"{AD}.one_step", "self.sigmoid(self.f_beta(h))", "torch.sigmoid(self.f_beta(h))")],
    "z_with_bmm": [
        (
            f"{A}.forward",
            "z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)",
            "z = torch.bmm(alpha.unsqueeze(1), encoder_out).squeeze(1)",
        )
    ],
    "z_with_einsum": [
        (
            f"{A}.forward",
            "z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)",
            "z = torch.einsum('np,npc->nc', alpha, encoder_out)",
        )
    ],
    "softmax_and_relu_layers": [
        (
            f"{A}.__init__",
            "self.att = nn.Linear(attention_dim, 1)",
            f"self.att = nn.Linear(attention_dim, 1){I8}self.softmax = nn.Softmax(dim=1){I8}self.relu = nn.ReLU()",
        ),
        (f"{A}.forward", "F.relu(att1 + att2)", "self.relu(att1 + att2)"),
        (f"{A}.forward", "F.softmax(e, dim=1)", "self.softmax(e)"),
    ],
    "keyword_constructors": [
        (
            f"{A}.__init__",
            "nn.Linear(encoder_dim, attention_dim)",
            "nn.Linear(in_features=encoder_dim, out_features=attention_dim)",
        ),
        (
            f"{AD}.__init__",
            "Attention(self.encoder_dim, self.decoder_dim, self.attention_dim)",
            "Attention(attention_dim=self.attention_dim, decoder_dim=self.decoder_dim, encoder_dim=self.encoder_dim)",
        ),
        (
            f"{R}.__init__",
            "nn.Linear(self.decoder_dim, self.vocab_size)",
            "nn.Linear(in_features=self.decoder_dim, out_features=self.vocab_size)",
        ),
        (f"{R}.__init__", "nn.Dropout(p=self.dropout_p)", "nn.Dropout(self.dropout_p)"),
    ],
    "functional_dropout": [
        (f"{R}.one_step", "self.fc(self.dropout(h))", "self.fc(F.dropout(h, self.dropout_p, self.training))"),
        (
            f"{AD}.one_step",
            "self.fc(self.dropout(h))",
            "self.fc(F.dropout(h, p=self.dropout_p, training=self.training))",
        ),
    ],
    "full_batch_steps": [
        (f"{R}.forward", RNN_STEP, "self.one_step(embeddings[:, t, :], h, c)"),
        (f"{R}.forward", "predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds[:num]"),
        (f"{AD}.forward", ATT_STEP, "self.one_step(embeddings[:, t, :], encoder_out, h, c)"),
        (f"{AD}.forward", "predictions[:num, t, :] = preds", "predictions[:num, t, :] = preds[:num]"),
        (f"{AD}.forward", "alphas[:num, t, :] = alpha", "alphas[:num, t, :] = alpha[:num]"),
    ],
    "masked_full_batch_store": [
        (f"{R}.forward", RNN_STEP, "self.one_step(embeddings[:, t, :], h, c)"),
        (
            f"{R}.forward",
            "predictions[:num, t, :] = preds",
            f"mask = (torch.tensor(decode_lengths, device=encoder_out.device) > t).unsqueeze(1){I12}"
            f"predictions[:, t, :] = torch.where(mask, preds, predictions[:, t, :])",
        ),
        (f"{AD}.forward", ATT_STEP, "self.one_step(embeddings[:, t, :], encoder_out, h, c)"),
        (
            f"{AD}.forward",
            "predictions[:num, t, :] = preds",
            f"keep = encoder_out.new_tensor(decode_lengths).gt(t).unsqueeze(1){I12}predictions[:, t, :] = preds * keep",
        ),
        (f"{AD}.forward", "alphas[:num, t, :] = alpha", "alphas[:, t, :] = alpha * keep"),
    ],
    "bisect_for_num": [
        (f"{R}.forward", LOOP, f"import bisect{I8}{LOOP}"),
        (
            f"{R}.forward",
            "num = sum(1 for length in decode_lengths if length > t)",
            "num = len(decode_lengths) - bisect.bisect_right(sorted(decode_lengths), t)",
        ),
    ],
    "cat_on_last_dim_and_hx_keyword": [
        (f"{AD}.one_step", "torch.cat([embeddings, z], dim=1)", "torch.cat([embeddings, z], dim=-1)"),
        (f"{R}.one_step", "self.decode_step(embeddings, (h, c))", "self.decode_step(embeddings, hx=(h, c))"),
    ],
}


def variant_source(edits):
    text = MODELS
    for region, old, new in edits:
        text = mutate(text, region, old, new)
    return text


def _env(kit):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV"))}
    env.update(
        PYTHONPATH=str(kit),
        PYTHONDONTWRITEBYTECODE="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        CAPTIONING_PLUGINS="off",
    )
    return env


def _kit_copy(root, name, models_src):
    kit = root / name
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "captioning", kit / "captioning", ignore=ignore)
    shutil.copytree(ROOT / "tests" / "public", kit / "tests" / "public", ignore=ignore)
    (kit / "captioning" / "models.py").write_text(models_src, encoding="utf-8")
    return kit


def _run(kit, args):
    res = subprocess.run([sys.executable, *args], cwd=kit, env=_env(kit), capture_output=True, text=True, timeout=300)
    lines = [m.groups() for m in map(LINE.match, res.stdout.splitlines()) if m]
    return res.returncode, lines, res.stdout + res.stderr


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """name -> (exit code, [(status, check, message)], output) for the reference, every bug and alternative."""
    root = tmp_path_factory.mktemp("agree")
    sources = {"reference": MODELS}
    sources.update({n: variant_source(v[0]) for n, v in BUGS.items()})
    sources.update({n: variant_source(v) for n, v in ALTERNATIVES.items()})
    kits = {n: _kit_copy(root, n, src) for n, src in sources.items()}
    jobs = {n: (kit, CHECK) for n, kit in kits.items()}
    jobs["probe"] = (
        kits["reference"],
        [
            "-c",
            "import captioning, captioning.check as c; "  # no torch: fast
            "print(c.kit_root()); print(captioning.__file__)",
        ],
    )
    jobs["pytest_warn"] = (
        kits["rnn_cpu_buffer"],
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/public/test_public_rnn.py"],
    )
    # three at a time on two cores: importing torch waits on the disk for about a third of its time
    with ThreadPoolExecutor(max_workers=3) as pool:
        out = dict(zip(jobs, pool.map(lambda job: _run(*job), jobs.values())))
    ref = kits["reference"]
    assert out["probe"][2].split() == [str(ref), str(ref / "captioning" / "__init__.py")], out["probe"][
        2
    ]  # the copy's package, not the installed kit, is the one checked
    return out


def test_the_reference_passes_every_check(outcomes):
    rc, lines, out = outcomes["reference"]
    assert rc == 0 and lines and all(s == "PASS" for s, _, _ in lines), out
    assert f"{len(lines)} of {len(lines)} checks passed" in out


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_a_correct_alternative_passes_without_warnings(outcomes, name):
    rc, lines, out = outcomes[name]
    assert rc == 0 and len(lines) == len(outcomes["reference"][1]), out
    assert all(s == "PASS" for s, _, _ in lines), out


@pytest.mark.parametrize("name", BUGS)
def test_a_bug_is_failed_or_warned_with_its_cause(outcomes, name):
    _, todo, cause, *never = BUGS[name]
    rc, lines, out = outcomes[name]
    flagged = [(s, c, m) for s, c, m in lines if s != "PASS"]
    # a check names the TODO; a crash names the exception and where in models.py it came from
    # (init_hidden_state is given code that runs the student's layers: its FAILs name it, not a TODO)
    named = r"TODO |\w+\.init_hidden_state \(given code|\w+: .*\(models\.py line \d+"
    assert flagged and all(re.match(named, m) for _, _, m in flagged), out
    assert any(m.startswith(f"TODO {todo}") and re.search(cause, m) for _, _, m in flagged), out
    if any(s == "FAIL" for s, _, _ in flagged):
        assert rc == 1, out
    else:  # only warnings: the command succeeds and its last line counts them
        assert rc == 0 and f"{len(flagged)} of them with a warning" in out, out
    for regex in never:  # a hint fires only for its own cause
        assert not [m for _, _, m in flagged if re.search(regex, m)], out


def test_a_warning_is_a_pytest_warning_not_a_failure(outcomes):
    rc, _, out = outcomes["pytest_warn"]
    assert rc == 0 and " passed" in out and "PublicCheckWarning" in out and "copies into a CPU tensor" in out, out
