"""The self-check's messages point at the first cause (issue 29, "Messages"), on planted bugs: a copy of the kit
whose ``models.py`` has one bug (two for the order of fixes) runs ``python -m captioning check PART`` in its own
process, then prints each check's own message as JSON after a marker line.

* one cause is one FAIL line, with the checks it fails listed under it (a wrong layer size fails every check);
* a FAIL about steps names the first bad step and its value, not a prefix of good steps;
* an exception raised in models.py is one line naming the method the check called, the line of models.py that
  raised it and the calls that led there ("called from forward at line N"), never a traceback;
* init_hidden_state is checked on its own, so ``mean(0)`` there is blamed on it and not on forward;
* with several causes the last line names the one to fix first, in the order the methods depend on each other.

Instructor-only (not part of the release).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from test_public_checks_agree import AD, ATT_STEP, LOOP, MODELS, RNN_STEP, ROOT, A, R, _env, _kit_copy, variant_source

# Runs in one process, for every planted copy in turn (importing torch once): the copy's package replaces the
# previous one. Prints a JSON line per copy: the check's printed lines and each check's own result.
PROBE = """
import json, sys

for name, kit, part in json.loads(sys.argv[1]):
    for mod in [m for m in sys.modules if m.split(".")[0] in ("captioning", "public_checks")]:
        del sys.modules[mod]
    sys.path[0] = kit
    from captioning.check import run_checks
    from captioning.internals.errors import KitError

    printed = []
    if part == "require_todos":
        from captioning.check import require_todos
        try:
            require_todos("rnn")
            own = "no error"
        except KitError as e:
            own = f"KitError: {e}"
    else:
        own = [[p, n, ok, str(m)] for p, n, ok, m in run_checks(part, out=printed.append)]
    print(json.dumps([name, "\\n".join(printed).splitlines(), own]), flush=True)
"""
EARLY = "for t in range(max(decode_lengths) - 1):"  # a loop that stops one step early
ATT_MEAN = "encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim).mean(dim=1)"
RNN_MEAN = "encoder_out.reshape(batch_size, -1, self.encoder_dim).mean(dim=1)"


def _given(text, old, new):
    """Replace ``old`` (exactly once) in given code, outside the solution regions ``mutate`` edits."""
    assert text.count(old) == 1, f"{old!r} is not exactly once in models.py: update the planted bug"
    return text.replace(old, new)


# name -> (part to check, models.py source)
PLANTED = {
    "layer_size": (
        "rnn",
        variant_source(
            [
                (
                    f"{R}.__init__",
                    "nn.Linear(self.decoder_dim, self.vocab_size)",
                    "nn.Linear(self.embed_dim, self.vocab_size)",
                )
            ]
        ),
    ),
    "loop_one_step_short": ("attention-decoder", variant_source([(f"{AD}.forward", LOOP, EARLY)])),
    "h_not_sliced": (
        "attention-decoder",
        variant_source([(f"{AD}.forward", ATT_STEP, "self.one_step(embeddings[:num, t, :], encoder_out[:num], h, c)")]),
    ),
    "rnn_h_not_sliced": (
        "rnn",
        variant_source([(f"{R}.forward", RNN_STEP, "self.one_step(embeddings[:num, t, :], h, c)")]),
    ),
    "mean_over_batch": ("attention-decoder", _given(MODELS, ATT_MEAN, ATT_MEAN.replace("mean(dim=1)", "mean(0)"))),
    "rnn_mean_over_batch": ("rnn", _given(MODELS, RNN_MEAN, RNN_MEAN.replace("mean(dim=1)", "mean(0)"))),
    "two_causes": (
        "all",
        variant_source(
            [
                (f"{R}.forward", LOOP, EARLY),
                (f"{A}.__init__", "nn.Linear(encoder_dim, attention_dim)", "nn.Linear(decoder_dim, attention_dim)"),
            ]
        ),
    ),
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """name -> (the check's printed lines, {part/name: (ok, own message)}, everything printed); and
    "require_todos" -> (None, KitError's line, everything printed): the notebooks' TODO check on rnn_h_not_sliced."""
    root = tmp_path_factory.mktemp("messages")
    jobs = [[n, str(_kit_copy(root, n, src)), part] for n, (part, src) in PLANTED.items()]
    jobs.append(["require_todos", str(root / "rnn_h_not_sliced"), "require_todos"])
    res = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(jobs)],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=900,  # one process for all: about 30 s of CPU
    )
    out = {}
    for line in res.stdout.splitlines():
        name, printed, own = json.loads(line)
        text = "\n".join(printed)
        if name == "require_todos":
            out[name] = (None, own, own)
        else:
            out[name] = (printed, {f"{p}/{n}": (ok, m) for p, n, ok, m in own}, text)
    assert set(out) == {j[0] for j in jobs}, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def _fails(lines):
    return [line for line in lines if line.startswith("FAIL")]


def _line_of(name, needle):
    """The line number of the code (not a comment) that holds ``needle``, exactly once in the planted models.py."""
    found = [i + 1 for i, line in enumerate(PLANTED[name][1].splitlines()) if needle in line.split("#")[0]]
    assert len(found) == 1, needle
    return found[0]


def _last_step():
    """The index of the last step of the longest caption of the checks' forward input."""
    ref = torch.load(ROOT / "tests/public/reference_values.pt", weights_only=True)
    return int(ref["attention_decoder"]["forward_in"]["lengths"].max()) - 2


def _assert_one_line_per_cause(name, reports):
    """Every failing check belongs to exactly one printed FAIL line, and no FAIL message is printed twice."""
    lines, own, text = reports[name]
    failed = sorted(c for c, (ok, _) in own.items() if not ok)
    fails = _fails(lines)
    listed = []
    for i, line in enumerate(lines):
        if line.startswith("FAIL"):
            follow = lines[i + 1] if i + 1 < len(lines) else ""
            m = re.search(r"this one cause fails (\d+) checks: (.*)\)$", follow)
            listed += m.group(2).split(", ") if m else [line.split()[1]]
    assert sorted(listed) == failed, text
    messages = [line.split(None, 2)[2] for line in fails]
    assert len(set(messages)) == len(messages), text
    assert "Traceback" not in text, text
    return fails


def test_a_wrong_layer_size_is_one_fail_listing_every_check_it_breaks(reports):
    lines, own, text = reports["layer_size"]
    fails = _assert_one_line_per_cause("layer_size", reports)
    assert len(fails) == 1, text
    assert "TODO DecoderWithRNN.__init__: fc.weight has shape (23, 8), expected (23, 12)" in fails[0], text
    assert text.count("fc.weight has shape") == 1, text
    assert all(not ok for ok, _ in own.values()), text  # every rnn check builds the module: one cause fails all
    assert f"this one cause fails {len(own)} checks" in text and "Fix first" not in text, text


def test_a_loop_one_step_short_names_the_first_bad_step(reports):
    lines, own, text = reports["loop_one_step_short"]
    fails = _assert_one_line_per_cause("loop_one_step_short", reports)
    last = _last_step()
    assert len(fails) == 1, text
    assert f"predictions at step {last} differ from one_step run by hand, first in row 0" in fails[0], text
    assert f"steps 0 to {last - 1} agree" in fails[0] and "never stored" in fails[0], text
    for check, (ok, msg) in own.items():  # each failing check, on its own, names that step, not good ones
        assert ok or f"step {last}" in msg, (check, msg)
    assert not re.search(r"sums \[1\.0", text), text


def test_h_not_sliced_is_blamed_on_forward_with_the_lines_of_the_calls(reports):
    lines, own, text = reports["h_not_sliced"]
    fails = _assert_one_line_per_cause("h_not_sliced", reports)
    call = _line_of("h_not_sliced", "self.one_step(embeddings[:num, t, :], encoder_out[:num], h, c)")
    raised = _line_of("h_not_sliced", "self.att(F.relu(att1 + att2))")
    assert len(fails) == 1, text
    msg = fails[0].split(None, 2)[2]
    assert msg.startswith("TODO DecoderWithAttention.forward: RuntimeError: "), text
    assert f"(models.py line {raised}, in Attention.forward, called from one_step at line " in msg, text
    assert f"called from forward at line {call})" in msg, text
    assert "forward passed one_step arguments whose rows disagree" in msg and "h (4, 12)" in msg, text
    assert all(ok for check, (ok, _) in own.items() if "/one_step" in check), text  # one_step itself is fine


def test_an_exception_in_one_step_caused_by_forward_names_forward(reports):
    lines, own, text = reports["rnn_h_not_sliced"]
    fails = _assert_one_line_per_cause("rnn_h_not_sliced", reports)
    call = _line_of("rnn_h_not_sliced", "self.one_step(embeddings[:num, t, :], h, c)")
    raised = _line_of("rnn_h_not_sliced", "h, c = self.decode_step(embeddings, (h, c))")
    assert len(fails) == 1, text
    msg = fails[0].split(None, 2)[2]
    assert msg.startswith("TODO DecoderWithRNN.forward: RuntimeError: "), text
    assert f"(models.py line {raised}, in DecoderWithRNN.one_step, called from forward at line {call})" in msg, text
    assert "embeddings (3, 8), h (4, 12), c (4, 12)" in msg, text


@pytest.mark.parametrize("name", ["mean_over_batch", "rnn_mean_over_batch"])
def test_mean_over_the_batch_is_blamed_on_init_hidden_state(reports, name):
    lines, own, text = reports[name]
    fails = _assert_one_line_per_cause(name, reports)
    cls = "DecoderWithRNN" if name.startswith("rnn") else "DecoderWithAttention"
    assert len(fails) == 1, text
    assert fails[0].split()[1].endswith("/init_hidden_state"), text
    assert fails[0].split(None, 2)[2].startswith(f"{cls}.init_hidden_state (given code, run with your layers): "), text
    assert not own[f"{PLANTED[name][0]}/init_hidden_state"][0], text
    assert not any(line.split(None, 2)[2].startswith(f"TODO {cls}.forward") for line in fails), text
    if name == "mean_over_batch":  # no exception: the shape says why
        assert "h has shape (9, 12)" in fails[0] and "not over the batch (dim 0)" in fails[0], text
    else:  # the LSTMCell raises inside init_hidden_state
        line = _line_of(name, "return self.decode_step(self.bn(self.init(feature)), (h, c))")
        assert "RuntimeError: " in fails[0] and f"(models.py line {line}, in {cls}.init_hidden_state)" in fails[0]


def test_with_two_causes_the_earliest_in_dependency_order_is_to_fix_first(reports):
    lines, own, text = reports["two_causes"]
    fails = _assert_one_line_per_cause("two_causes", reports)
    assert len(fails) >= 3, text  # rnn's forward, Attention.__init__, and what it does to the decoder
    assert fails[0].split()[1].startswith("rnn/"), text  # printed in check order...
    assert re.search(r"causes fail \d+ checks\. Fix first: attention/layers — TODO Attention\.__init__ ", lines[-1]), (
        text  # ...but the attention's layers come first in the order the methods depend on each other
    )


def test_the_notebooks_todo_check_reports_an_exception_in_one_line(reports):
    _, err, _ = reports["require_todos"]
    call = _line_of("rnn_h_not_sliced", "self.one_step(embeddings[:num, t, :], h, c)")
    assert err.startswith("KitError: models.py: TODO DecoderWithRNN.forward: RuntimeError: "), err
    assert "\n" not in err and f"in DecoderWithRNN.one_step, called from forward at line {call})" in err, err
    assert "run `python -m captioning check rnn` to find the first cause, then re-run this cell" in err, err
