"""The notebooks: their ``parameters`` cells, the papermill runner (``python -m instructor notebooks``) on tiny
shapes data, and the message a student gets from an unfinished TODO.

nbval (``make test``: ``--nbval-lax`` over ``notebooks/*.ipynb``) separately re-executes the committed notebooks at
their defaults and compares the cells marked ``# NBVAL_CHECK_OUTPUT`` with their saved outputs; then
``tests/notebook_results.py`` checks the numbers that run achieved.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from captioning.internals.errors import KitError
from captioning.internals.plugins import DISABLE_ENV
from captioning.notebooks import decoder_choice, find_checkpoint
from instructor.notebook_runs import (
    ADAPTIVE_RUNS,
    NOTEBOOKS,
    NOTEBOOKS_DIR,
    RUNS,
    check_parameters,
    select_runs,
    venv_kernel,
)
from instructor.regions import strip_solutions

ROOT = Path(__file__).resolve().parent.parent
# Split so that this file holds no solution marker line itself (the release tool scans for them).
BEGIN, END = "### BEGIN " + "SOLUTION", "### END " + "SOLUTION"
# Tiny: 40/10/10 images of 64 px, one epoch, small decoders — every notebook in a few seconds of work.
TINY = {
    "threads": 1,
    "shapes_n_train": 40,
    "shapes_n_val": 10,
    "shapes_n_test": 10,
    "shapes_image_size": 64,
    "epochs": 1,
    "embed_dim": 16,
    "decoder_dim": 32,
    "attention_dim": 16,
    "beam_size": 2,
    "print_freq": 0,
}


def _read(name):
    return nbformat.read(str(NOTEBOOKS_DIR / f"{name}.ipynb"), as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_parameters_cell_of_plain_literals_that_papermill_accepts(name):
    nb = _read(name)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}.ipynb has {len(tagged)} cells tagged 'parameters'"
    cell = tagged[0]
    assert cell is _code_cells(nb)[0], "the parameters cell must be the first code cell"
    names, defaults = [], {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"{name}.ipynb parameters cell: only `name = literal` lines, got {ast.unparse(node)!r}"
        )
        defaults[node.targets[0].id] = ast.literal_eval(node.value)  # raises unless a plain literal
        names.append(node.targets[0].id)
    assert len(set(names)) == len(names)
    inferred = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"))
    assert list(inferred) == names
    for n, p in inferred.items():
        assert ast.literal_eval(p["default"]) == defaults[n]
    assert {"device", "output_dir", "threads"} <= set(names)
    assert nb.metadata.kernelspec.name == "python3"


def test_notebook_defaults_are_the_shapes_recipe():
    """The parameters cells hold plain numbers a student can read and change; they must be the recipe's."""
    from captioning.data.recipe import RECIPE

    def defaults(name):
        return {
            k: ast.literal_eval(v["default"])
            for k, v in papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb")).items()
        }

    data = {
        "shapes_n_train": "n_train",
        "shapes_n_val": "n_val",
        "shapes_n_test": "n_test",
        "shapes_image_size": "image_size",
        "shapes_seed": "seed",
        "seed": "seed",
    }
    common = (
        "embed_dim",
        "decoder_dim",
        "dropout",
        "batch_size",
        "decoder_lr",
        "lr_decay_every",
        "lr_decay_factor",
        "length_penalty",
    )
    for name, decoder, extra in (
        ("train1", "rnn", ()),
        ("train2", "attention", ("attention_dim", "alpha_c", "init_state")),
    ):
        d = defaults(name)
        assert {k: d[k] for k in data} == {k: RECIPE[v] for k, v in data.items()}, name
        assert {k: d[k] for k in common + extra} == {k: RECIPE[k] for k in common + extra}, name
        assert d["epochs"] == RECIPE["epochs"][decoder], name
        assert d["encoder_weights"] is None  # None: the recipe's shapes_cnn
    for name in ("test", "caption"):
        d = defaults(name)
        assert (d["beam_size"], d["length_penalty"]) == (RECIPE["beam_size"], RECIPE["length_penalty"]), name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_the_reference_outputs(name):
    nb = _read(name)
    code = _code_cells(nb)
    if all(c.execution_count is None and not c.outputs for c in code):
        pytest.skip("notebooks without outputs (the student edition clears them)")
    from nbval.plugin import find_comment_markers

    marked = [c for c in code if "NBVAL_CHECK_OUTPUT" in c.source]
    # nbval takes a marker only as a whole comment line: "# NBVAL_CHECK_OUTPUT  (…)" is silently not one
    checked = [c for c in marked if ("check", True) in find_comment_markers(c.source)]
    assert len(checked) == len(marked), f"{name}.ipynb: a cell mentions NBVAL_CHECK_OUTPUT that nbval does not take"
    if name in ("train1", "train2"):  # the TODO check and the data summary: the same text on every machine
        assert len(checked) == 2, f"{name}.ipynb: {len(checked)} cells whose output nbval checks, not 2"
    assert all(c.execution_count is not None and c.outputs for c in checked), (
        f"{name}.ipynb: run `python -m instructor notebooks --refresh-committed` to save its outputs"
    )
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "papermill" not in nb.metadata
    assert not any("papermill" in c.metadata or "execution" in c.metadata for c in nb.cells)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    # progress bars redraw every 5 s in a notebook, not per batch (notebooks.py); 12 epochs of ~12 s keep ~100 lines
    bar_updates = sum(o.output_type == "stream" and o.name == "stderr" for c in code for o in c.outputs)
    assert bar_updates < 300, f"{name}.ipynb saved {bar_updates} progress-bar updates: the 5-s throttle is off"


def test_progress_bars_are_throttled_in_the_notebooks_cell_order():
    # the first derived cell imports captioning.notebooks, checks the parameters (which imports torch, and torch
    # imports tqdm), then calls setup: the throttle must already hold for the bars the kit makes afterwards
    code = (
        "import captioning.notebooks as nb\n"
        "nb.check_parameters({'epochs': 1})\n"
        "nb.setup(threads=1)\n"
        "from tqdm.auto import tqdm\n"
        "print(tqdm(total=1, disable=False).mininterval)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) == 5.0


def test_refreshing_the_committed_notebooks_wants_an_empty_output_folder(tmp_path):
    from instructor.notebook_runs import check_fresh_output

    check_fresh_output(tmp_path / "missing")
    check_fresh_output(tmp_path)  # empty
    (tmp_path / "data").mkdir()
    with pytest.raises(KitError, match="Move it away first.*--reuse-outputs"):
        check_fresh_output(tmp_path)
    check_fresh_output(tmp_path, reuse=True)


def test_unknown_parameter_is_reported_before_anything_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "instructor", "notebooks", "--out", str(tmp_path / "out"), "bogus=1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert "unknown notebook parameter 'bogus'" in r.stderr
    assert "train1.ipynb: " in r.stderr and "epochs" in r.stderr and "caption.ipynb: " in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(KitError, match="use --out"):
        check_parameters({"output_dir": "x"}, RUNS)
    with pytest.raises(KitError, match="both decoders"):
        check_parameters({"attention": True}, RUNS)
    with pytest.raises(KitError, match="--adaptive"):
        check_parameters({"decoder": "adaptive"}, RUNS + ADAPTIVE_RUNS)
    check_parameters({"beam_size": 3, "epochs": 2}, RUNS)  # each known to some notebook


def test_adaptive_runs_are_optional():
    names = lambda runs: [r[0] for r in runs]  # noqa: E731
    assert names(select_runs()) == [
        "train1",
        "train2",
        "test_rnn",
        "test_attention",
        "caption_rnn",
        "caption_attention",
    ]
    assert names(select_runs(adaptive=True)) == names(RUNS) + ["train_adaptive", "test_adaptive", "caption_adaptive"]
    assert names(select_runs(["caption_adaptive", "train1"])) == ["train1", "caption_adaptive"]
    assert all(nb in NOTEBOOKS and fixed == {"decoder": "adaptive"} for _, nb, fixed in ADAPTIVE_RUNS)
    with pytest.raises(KitError, match="unknown run.*train_adaptive"):
        select_runs(["train3"])


def test_runner_executes_every_notebook_on_tiny_data(tmp_path):
    out = tmp_path / "out"
    # test.ipynb with the attention checkpoint only (the rnn one takes the same path, without the pointing game)
    runs = ["train1", "train2", "test_attention", "caption_rnn", "caption_attention"]
    cmd = [
        sys.executable,
        "-m",
        "instructor",
        "notebooks",
        "--out",
        str(out),
        "--timeout",
        "600",
        "--only",
        ",".join(runs),
        *(f"{k}={v}" for k, v in TINY.items()),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert not (out / "test_rnn.ipynb").exists()
    metrics = {}
    for run in runs:
        assert (out / f"{run}.ipynb").is_file()
        metrics[run] = json.loads((out / f"{run}.metrics.json").read_text())
        env = metrics[run]["env"]  # the kernel ran in this venv's Python, with the requested threads
        assert os.path.realpath(env["prefix"]) == os.path.realpath(sys.prefix)
        assert env["threads"] == 1
    for run, decoder in (("train1", "rnn"), ("train2", "attention")):
        m = metrics[run]
        assert m["decoder"] == decoder and m["epochs_run"] == 1 and len(m["history"]) == 1
        assert 0.0 <= m["best_bleu4"] <= 1.0 and m["vocab_size"] > 4
        assert m["data"]["n_train"] == 40 and m["data"]["image_size"] == 64
        assert m["cfg"]["embed_dim"] == 16 and m["cfg"]["encoded_image_size"] == 4  # shapes_cnn: 64 px // 16
        assert m["cfg"]["encoder"] == "shapes_cnn" and m["cfg"]["encoder_weights"].endswith("shapes_cnn.pth")
        assert Path(m["best_checkpoint"]).is_file()
    m = metrics["test_attention"]
    assert m["decoder"] == "attention" and m["split"] == "TEST" and m["n_images"] == 10 and m["beam_size"] == 2
    assert all(0.0 <= m[f"bleu{n}"] <= 1.0 for n in range(1, 5)) and m["grounding"] is not None
    for run, decoder in (("caption_rnn", "rnn"), ("caption_attention", "attention")):
        m = metrics[run]
        assert m["decoder"] == decoder and m["image"].endswith(".jpg") and m["caption"] == " ".join(m["words"])
    # data generated once into --out/data and reused
    assert (out / "data" / "shapes_settings.json").is_file()
    # executed copies: papermill's injected parameters, the per-epoch lines, figures inline
    train2 = nbformat.read(str(out / "train2.ipynb"), as_version=4)
    injected = [c for c in train2.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "epochs = 1" in injected[0].source
    text = "".join(o.get("text", "") for c in _code_cells(train2) for o in c.outputs)
    assert "Epoch 0: train LOSS - " in text and "TOP-5 ACCURACY" in text and "BLEU-4" in text
    kinds = {k for c in _code_cells(train2) for o in c.outputs for k in o.get("data", {})}
    assert "image/png" in kinds  # the training curves
    caption = nbformat.read(str(out / "caption_attention.ipynb"), as_version=4)
    assert any("image/jpeg" in o.get("data", {}) for c in _code_cells(caption) for o in c.outputs)


def test_caption_metrics_keep_every_image_of_the_same_checkpoint(tmp_path):
    import torch

    from captioning.notebooks import caption_metrics, write_metrics

    path = tmp_path / "caption_adaptive.metrics.json"

    def res(name, words):
        return {
            "path": name,
            "words": words,
            "finished": True,
            "decoder": "adaptive",
            "alphas": torch.full((len(words), 5), 0.2),
        }

    write_metrics(path, caption_metrics(str(path), res("a.jpg", ["a", "red", "circle"]), "ck1", 5, {}))
    m = caption_metrics(str(path), res("b.jpg", ["a", "blue", "star"]), "ck1", 5, {})
    assert m["image"] == "b.jpg" and m["caption"] == "a blue star" and set(m["images"]) == {"a.jpg", "b.jpg"}
    assert m["images"]["a.jpg"]["caption"] == "a red circle" and len(m["images"]["b.jpg"]["beta"]) == 3
    write_metrics(path, m)
    m = caption_metrics(str(path), res("c.jpg", ["a", "cross"]), "ck2", 5, {})  # another checkpoint: start afresh
    assert set(m["images"]) == {"c.jpg"}
    # the notebook shows two images and writes once for both: the last at the top level
    m = caption_metrics(str(path), [res("d.jpg", ["a", "star"]), res("e.jpg", ["a", "circle"])], "ck2", 5, {})
    assert m["image"] == "e.jpg" and set(m["images"]) == {"d.jpg", "e.jpg"}


def test_decoder_parameter_and_checkpoint_lookup(tmp_path):
    # `decoder` None follows `attention` (as before the parameter existed); when given it wins
    assert decoder_choice(None, True) == "attention" and decoder_choice(None, False) == "rnn"
    assert decoder_choice("adaptive", False) == "adaptive" and decoder_choice("rnn", True) == "rnn"
    with pytest.raises(KitError, match=r"decoder 'adaptve' is not one of 'rnn', 'attention', 'adaptive'"):
        decoder_choice("adaptve")
    with pytest.raises(KitError, match=r"decoder 'rnn' is not one of 'attention', 'adaptive'.*train1\.ipynb"):
        decoder_choice("rnn", choices=("attention", "adaptive"))  # train2.ipynb's choices
    data = "shapes_5_cap_per_img_5_min_word_freq"
    with pytest.raises(
        KitError,
        match=r"no BEST_checkpoint_AdaptiveAttention_\*\.pth\.tar .*run train2\.ipynb with "
        r"decoder 'adaptive' first",
    ):
        find_checkpoint(str(tmp_path), "adaptive")
    paths = {}
    for kind in ("NoAttention", "Attention", "AdaptiveAttention"):
        paths[kind] = tmp_path / f"BEST_checkpoint_{kind}_{data}.pth.tar"
        paths[kind].touch()
    for key, kind in (
        (False, "NoAttention"),
        (True, "Attention"),
        ("rnn", "NoAttention"),
        ("attention", "Attention"),
        ("adaptive", "AdaptiveAttention"),
    ):
        assert find_checkpoint(str(tmp_path), key) == str(paths[kind])
        assert find_checkpoint(str(tmp_path), key, data) == str(paths[kind])
    with pytest.raises(KitError, match="decoder 'bogus'"):
        find_checkpoint(str(tmp_path), "bogus")


def test_invalid_decoder_stops_the_notebook_naming_it_and_the_choices(tmp_path):
    with venv_kernel(), pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / "test.ipynb"),
            str(tmp_path / "executed.ipynb"),
            kernel_name="python3",
            parameters={"output_dir": str(tmp_path / "out"), "decoder": "adaptve"},
            cwd=str(tmp_path),
            progress_bar=False,
            execution_timeout=300,
        )
    assert info.value.ename == "KitError"
    # the parameters are checked first (notebooks.check_parameters), before the data step
    assert (
        "parameter decoder = 'adaptve' is not allowed: decoder must be one of None, 'rnn', 'attention', 'adaptive'"
    ) in info.value.evalue


def test_runner_adaptive_decoder_through_the_notebooks_without_student_todos(tmp_path):
    """train2 / test / caption with `decoder=adaptive` (the runner's --only train_adaptive,test_adaptive,
    caption_adaptive) with a copy of the student package whose models.py is the student edition's: every TODO a
    stub, no plug-in. The adaptive decoder is reference code and must need none of them."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "captioning", kit / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    models = kit / "captioning" / "models.py"
    student, regions = strip_solutions(models.read_text(encoding="utf-8"), str(models))
    models.write_text(student, encoding="utf-8")
    # the kernels import the copy; no plug-in, as in the student edition
    env = {**os.environ, "PYTHONPATH": str(kit), DISABLE_ENV: "off"}
    if regions:  # (the student edition of this file has none: its models.py is already stubbed)
        check = subprocess.run(
            [sys.executable, "-c", "from captioning.notebooks import require_todos\nrequire_todos('attention')"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert check.returncode != 0 and "is not done yet" in check.stderr, check.stderr[-2000:]
    out = tmp_path / "out"
    runs = [r[0] for r in ADAPTIVE_RUNS]
    assert runs == ["train_adaptive", "test_adaptive", "caption_adaptive"]
    # 4 epochs at a higher rate, no dropout: after 1 epoch the tiny decoder's caption is empty, leaving no β to check
    settings = {**TINY, "epochs": 4, "decoder_lr": 1e-2, "dropout": 0.0}
    cmd = [
        sys.executable,
        "-m",
        "instructor",
        "notebooks",
        "--out",
        str(out),
        "--timeout",
        "600",
        "--only",
        ",".join(runs),
        *(f"{k}={v}" for k, v in settings.items()),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    metrics = {run: json.loads((out / f"{run}.metrics.json").read_text()) for run in runs}
    assert not (out / "train2.metrics.json").exists() and not (out / "test_attention.metrics.json").exists()
    m = metrics["train_adaptive"]
    assert m["decoder"] == "adaptive" and m["cfg"]["decoder"] == "adaptive" and m["epochs_run"] == 4
    assert 0.0 <= m["best_bleu4"] <= 1.0 and m["cfg"]["embed_dim"] == 16
    assert (
        Path(m["best_checkpoint"]).name
        == "BEST_checkpoint_AdaptiveAttention_shapes_5_cap_per_img_5_min_word_freq.pth.tar"
    )
    train = nbformat.read(str(out / "train_adaptive.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in _code_cells(train) for o in c.outputs)
    assert "DecoderWithAdaptiveAttention is reference code, no TODO of yours is needed" in text
    assert "checked " in text and "models.py" in text  # which models.py the notebook imported
    assert "Epoch 0: train LOSS - " in text
    m = metrics["test_adaptive"]
    assert m["decoder"] == "adaptive" and m["split"] == "TEST" and m["n_images"] == 10
    assert m["checkpoint"] == metrics["train_adaptive"]["best_checkpoint"]
    assert all(0.0 <= m[f"bleu{n}"] <= 1.0 for n in range(1, 5)) and m["grounding"] is not None
    m = metrics["caption_adaptive"]
    assert m["decoder"] == "adaptive" and m["checkpoint"] == metrics["train_adaptive"]["best_checkpoint"]
    assert m["image"].endswith(".jpg") and m["caption"] == " ".join(m["words"])
    # β per word (the sentinel's share), also in the figure's panel titles
    assert m["words"], "the tiny adaptive decoder gave an empty caption: no β to check"
    assert len(m["beta"]) == len(m["words"]) and all(0.0 <= b <= 1.0 for b in m["beta"])
    caption = nbformat.read(str(out / "caption_adaptive.ipynb"), as_version=4)
    assert any("image/jpeg" in o.get("data", {}) for c in _code_cells(caption) for o in c.outputs)
    assert "(adaptive decoder, beam 2)" in "".join(o.get("text", "") for c in _code_cells(caption) for o in c.outputs)


def _student_copy(tmp_path):
    """The captioning package copied to tmp_path/kit, with DecoderWithRNN.one_step's solution replaced by the
    student edition's stub."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "captioning", kit / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    models = kit / "captioning" / "models.py"
    lines = models.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "def one_step(self, embeddings, h, c)" in line)
    begin = next((i for i in range(start, len(lines)) if lines[i].strip() == BEGIN), None)
    if begin is None:
        pytest.skip("models.py has no solution regions (student edition)")
    end = next(i for i in range(begin, len(lines)) if lines[i].strip() == END)
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    lines[begin + 1 : end] = [f'{indent}raise NotImplementedError("TODO DecoderWithRNN.one_step")\n']
    models.write_text("".join(lines), encoding="utf-8")
    return kit


def test_student_edition_stops_at_the_todo_check_with_its_name(tmp_path, monkeypatch):
    kit = _student_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(kit))  # the kernel imports the copy
    out = tmp_path / "executed.ipynb"
    with venv_kernel(), pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / "train1.ipynb"),
            str(out),
            kernel_name="python3",
            parameters={"output_dir": str(tmp_path / "out")},
            cwd=str(tmp_path),
            progress_bar=False,
            execution_timeout=300,
        )
    err = info.value
    assert err.ename == "KitError"
    assert "models.py: TODO DecoderWithRNN.one_step is not done yet" in err.evalue
    assert "re-run this cell" in err.evalue
    # it stopped in the cell that checks the TODOs, before any data was generated or training started
    nb = nbformat.read(str(out), as_version=4)
    failed = [c for c in _code_cells(nb) if any(o.output_type == "error" for o in c.outputs)]
    assert len(failed) == 1 and "require_todos" in failed[0].source
    assert not (tmp_path / "out" / "data").exists()
    # the traceback shown to the student is short: the cell and require_todos, nothing from the solver
    assert "solver.py" not in "\n".join(failed[0].outputs[-1].traceback)


@pytest.mark.parametrize(
    "stub, decoder, message",
    [
        ("init", "rnn", "models.py: TODO DecoderWithRNN.__init__ is not done yet (layer '"),
        ("Attention.forward", "attention", "models.py: TODO Attention.forward is not done yet — complete it"),
    ],
)
def test_require_todos_names_other_todos(tmp_path, stub, decoder, message):
    """Layer definitions stubbed by `pass` (TodoError) and a stubbed method of a class the decoder uses."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "captioning", kit / "captioning", ignore=shutil.ignore_patterns("__pycache__"))
    models = kit / "captioning" / "models.py"
    text = models.read_text(encoding="utf-8")
    if BEGIN not in text:
        pytest.skip("models.py has no solution regions (student edition)")
    anchor = "TODO DecoderWithRNN.__init__ =" if stub == "init" else "TODO Attention.forward ="
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if anchor in line)
    begin = next(i for i in range(start, len(lines)) if lines[i].strip() == BEGIN)
    end = next(i for i in range(begin, len(lines)) if lines[i].strip() == END)
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    body = "pass\n" if stub == "init" else f'raise NotImplementedError("TODO {stub}")\n'
    lines[begin + 1 : end] = [indent + body]
    models.write_text("".join(lines), encoding="utf-8")
    code = f"from captioning.notebooks import require_todos\nrequire_todos({decoder!r})"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(kit)},
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "captioning.internals.errors.KitError: " + message in r.stderr, r.stderr[-2000:]


def test_venv_kernel_overrides_a_python3_spec_of_another_interpreter(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = tmp_path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {"argv": ["/usr/bin/false", "-f", "{connection_file}"], "display_name": "other", "language": "python"}
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/usr/bin/false"
    with venv_kernel():
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    assert os.environ["JUPYTER_PATH"] == str(tmp_path)


def test_cached_shapes_data_from_another_generator_version_is_regenerated(tmp_path):
    from captioning.notebooks import SHAPES_SETTINGS, ensure_data

    name, sizes = (
        "shapes_5_cap_per_img_5_min_word_freq",
        dict(shapes_n_train=12, shapes_n_val=4, shapes_n_test=4, shapes_image_size=64),
    )
    assert ensure_data(tmp_path, name, **sizes)["status"] == "generated"
    assert ensure_data(tmp_path, name, **sizes)["status"] == "found"
    stamp = tmp_path / SHAPES_SETTINGS
    older = json.loads(stamp.read_text())
    older["generator_version"] -= 1  # as if an older generator had written the cached copy
    stamp.write_text(json.dumps(older))
    assert ensure_data(tmp_path, name, **sizes)["status"] == "generated"
