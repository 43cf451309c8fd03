"""``python -m instructor notebooks`` — run the four notebooks through papermill, as a student would run them.

``run_notebooks`` executes train1, train2, test (both checkpoints) and caption (both checkpoints) in that order,
and with ``adaptive`` also train2, test and caption for the adaptive decoder (``ADAPTIVE_RUNS``).
``refresh_committed`` re-executes ``notebooks/*.ipynb`` in place: their outputs are what nbval checks in
``make test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from captioning.cli import parse_overrides
from captioning.internals.errors import KitError
from captioning.notebooks import NBVAL_ENV

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("train1", "train2", "test", "caption")
# (run name, notebook, parameters the runner sets) in the order `python -m instructor notebooks` runs them; the
# run name is also the stem of the executed copy and of its metrics file.
RUNS = (
    ("train1", "train1", {}),
    ("train2", "train2", {}),
    ("test_rnn", "test", {"attention": False}),
    ("test_attention", "test", {"attention": True}),
    ("caption_rnn", "caption", {"attention": False}),
    ("caption_attention", "caption", {"attention": True}),
)
# Not run by default (`--adaptive` or `--only` adds them): the reference adaptive-attention decoder, trained by
# train2.ipynb with decoder "adaptive". Their run names are the stems of the metrics files the notebooks write.
ADAPTIVE_RUNS = (
    ("train_adaptive", "train2", {"decoder": "adaptive"}),
    ("test_adaptive", "test", {"decoder": "adaptive"}),
    ("caption_adaptive", "caption", {"decoder": "adaptive"}),
)
ALL_RUNS = RUNS + ADAPTIVE_RUNS
# chosen by the runner per notebook: a user value would mean different things in different notebooks
RUNNER_PARAMETERS = {
    "output_dir": "use --out DIR",
    "attention": "the runner tests and captions with both decoders (and the adaptive one with --adaptive)",
    "decoder": "the runner chooses the decoder of each run; add the adaptive decoder's runs with --adaptive",
    "checkpoint": "the runner uses the checkpoints train1/train2 wrote into --out; to resume training or test "
    "another checkpoint run that notebook alone: papermill notebooks/test.ipynb out.ipynb "
    "-p checkpoint PATH",
}


def notebook_parameters(name):
    """{parameter: default} of a notebook's ``parameters`` cell, as papermill infers them."""
    import papermill

    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.is_file():
        raise KitError(
            f"notebook '{path}' does not exist: run from a checkout of the kit (the notebooks are not "
            f"part of an installed package)"
        )
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def check_parameters(params, runs):
    """KitError for a parameter no selected notebook has, or one the runner chooses itself."""
    known = {nb: notebook_parameters(nb) for nb in dict.fromkeys(nb for _, nb, _ in runs)}
    for name in params:
        if name in RUNNER_PARAMETERS:
            raise KitError(
                f"parameter '{name}' is set by `python -m instructor notebooks` itself: {RUNNER_PARAMETERS[name]}"
            )
        if not any(name in k for k in known.values()):
            listing = "; ".join(f"{nb}.ipynb: {', '.join(k)}" for nb, k in known.items())
            raise KitError(
                f"unknown notebook parameter '{name}': no notebook run here has it. Known parameters — {listing}"
            )
        for nb, k in known.items():
            if name in k:
                _check_type(name, params[name], k[name], nb)
    return known


def _check_type(name, value, default_text, notebook):
    """KitError when ``value`` cannot stand where the notebook's default is a number or True/False (a string
    where a number belongs would fail minutes later, deep in a cell)."""
    import ast

    try:
        default = ast.literal_eval(default_text)
    except (ValueError, SyntaxError):
        return  # an expression: nothing to compare with
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    wanted = {
        bool: ("True or False", isinstance(value, bool)),
        int: ("an integer", isinstance(value, int) and not isinstance(value, bool)),
        float: ("a number", number),
    }.get(type(default))
    if wanted and not wanted[1]:
        raise KitError(
            f"notebook parameter {name}={value!r}: {notebook}.ipynb expects {wanted[0]} (its default is {default_text})"
        )


@contextlib.contextmanager
def venv_kernel():
    """Make the ``python3`` kernel papermill starts run *this* interpreter.

    jupyter_client starts a spec whose argv[0] is plain ``python``/``python3`` with ``sys.executable`` (the spec
    ipykernel installs into the venv is such a one). If the ``python3`` spec found first on the Jupyter path names
    another interpreter (e.g. one in ``~/.local/share/jupyter``), a temporary spec for this one is put in front of
    ``JUPYTER_PATH`` while the block runs.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    plain = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    if argv0 is not None and (
        argv0 in plain or os.path.realpath(shutil.which(argv0) or argv0) == os.path.realpath(sys.executable)
    ):
        yield
        return
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="captioning-kernel-") as tmp:
        spec_dir = os.path.join(tmp, "kernels", "python3")
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as fh:
            json.dump(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "Python 3 (ipykernel)",
                    "language": "python",
                },
                fh,
            )
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def _execute(src, dst, parameters, timeout, cwd, progress=True):
    """papermill one notebook; a failing cell becomes a KitError that quotes the notebook's error."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        return papermill.execute_notebook(
            str(src),
            str(dst),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(cwd),
            execution_timeout=timeout,
            progress_bar=progress,
            # one stdout and one stderr output per cell, with what a `\r` overwrote removed: a progress bar
            # keeps its final line instead of every redraw (nbclient's coalescing, as Jupyter shows it)
            coalesce_streams=True,
        )
    except PapermillExecutionError as e:
        last = str(e.evalue).strip().splitlines()[-1] if str(e.evalue).strip() else ""
        raise KitError(
            f"{Path(src).name} stopped in cell [{e.exec_count}]: {e.ename}: {last}\n(the executed "
            f"copy with the full error: {dst})"
        ) from None


def select_runs(only=None, adaptive=False):
    """The (run, notebook, parameters) to run, in order: ``only`` (names from RUNS and ADAPTIVE_RUNS) when given,
    else RUNS, followed by ADAPTIVE_RUNS with ``adaptive``."""
    if not only:
        return list(RUNS + ADAPTIVE_RUNS if adaptive else RUNS)
    runs = [r for r in ALL_RUNS if r[0] in only]
    if len(runs) != len(set(only)):
        raise KitError(
            f"--only: unknown run(s) {sorted(set(only) - {r[0] for r in ALL_RUNS})}; choose from "
            f"{', '.join(r[0] for r in ALL_RUNS)}"
        )
    return runs


def run_notebooks(out="outputs/notebooks", params=None, timeout=1800, only=None, progress=True, adaptive=False):
    """Run the notebooks with papermill: train1, train2, test and caption for each of the two checkpoints.

    out: folder for the executed copies (``<run>.ipynb``), their metrics (``<run>.metrics.json``), checkpoints and
        the generated shapes data (it becomes every notebook's ``output_dir``).
    params: {name: value} given to every notebook that has that parameter; a name no notebook has is a KitError.
    timeout: seconds one cell may run (papermill's ``execution_timeout``); None or 0: no limit.
    only: run names to run (``train1 train2 test_rnn test_attention caption_rnn caption_attention`` and the
        adaptive decoder's ``train_adaptive test_adaptive caption_adaptive``), in that order.
    adaptive: also run ``ADAPTIVE_RUNS`` after the others (train2, test and caption with decoder "adaptive").
    Returns {run name: its metrics dict}.
    """
    params = dict(params or {})
    runs = select_runs(only, adaptive)
    known = check_parameters(params, runs)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    results = {}
    with venv_kernel():
        for i, (run, nb, fixed) in enumerate(runs, 1):
            p = {k: v for k, v in params.items() if k in known[nb]}
            p.update(fixed, output_dir=out)
            dst = os.path.join(out, f"{run}.ipynb")
            shown = " ".join(f"{k}={v!r}" for k, v in p.items() if k != "output_dir")
            print(f"[notebooks] {i}/{len(runs)} {nb}.ipynb -> {dst}  {shown}", flush=True)
            t0 = time.time()
            _execute(NOTEBOOKS_DIR / f"{nb}.ipynb", dst, p, timeout or None, cwd=os.getcwd(), progress=progress)
            metrics_path = os.path.join(out, f"{run}.metrics.json")
            if not os.path.isfile(metrics_path):
                raise KitError(f"{nb}.ipynb ran but did not write {metrics_path}")
            with open(metrics_path) as fh:
                results[run] = json.load(fh)
            env = results[run].get("env") or {}
            if env.get("prefix") and os.path.realpath(env["prefix"]) != os.path.realpath(sys.prefix):
                raise KitError(
                    f"{nb}.ipynb ran in the Python of {env['prefix']}, not in {sys.prefix}: fix the "
                    f"'python3' Jupyter kernel (`jupyter kernelspec list`)"
                )
            print(f"[notebooks]   done in {time.time() - t0:.0f} s: {_headline(results[run])}", flush=True)
    return results


def _headline(m):
    if "best_bleu4" in m:
        return f"{m['decoder']} decoder, {m['epochs_run']} epochs, best validation BLEU-4 {m['best_bleu4']:.4f}"
    if "bleu4" in m:
        return f"{m['decoder']} decoder, {m['split']} BLEU-1..4 " + " ".join(
            f"{m[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4")
        )
    if "caption" in m:
        return f"{m['decoder']} decoder: {os.path.basename(m['image'])}: {m['caption']}"
    return "ok"


def clean_metadata(nb):
    """Drop papermill's and nbclient's per-run metadata (timestamps, durations) from an executed notebook."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "tags" in cell.metadata and not cell.metadata["tags"]:
            del cell.metadata["tags"]
    return nb


def check_fresh_output(folder, reuse=False):
    """A KitError unless ``folder`` is missing or empty (or ``reuse``): the committed outputs should show what a
    first run gives, not a run on data, an encoder and caches that an older version of the kit may have made."""
    folder = Path(folder)
    if reuse or not folder.is_dir() or not any(folder.iterdir()):
        return
    raise KitError(
        f"--refresh-committed saves what a first run of the notebooks shows, but '{folder}' holds the "
        f"data, encoder, caches or checkpoints of earlier runs, which the notebooks would reuse (an older "
        f"kit may have made them). Move it away first (mv '{folder}' '{folder}.old'), or pass "
        f"--reuse-outputs to refresh on it"
    )


def refresh_committed(timeout=1800, names=NOTEBOOKS, progress=True, reuse_outputs=False):
    """Maintainers: re-execute ``notebooks/*.ipynb`` in place at their default parameters (cwd ``notebooks/``), keep
    the outputs, drop papermill's metadata. These outputs are the reference that nbval (`make test`) checks. The
    notebooks' default output folder must be empty or missing unless ``reuse_outputs`` (``check_fresh_output``)."""
    import nbformat

    from captioning.notebooks import DEFAULT_OUTPUT_DIR

    check_fresh_output((NOTEBOOKS_DIR / DEFAULT_OUTPUT_DIR).resolve(), reuse_outputs)
    saved = os.environ.pop(NBVAL_ENV, None)
    try:
        with venv_kernel():
            for name in names:
                path = NOTEBOOKS_DIR / f"{name}.ipynb"
                tmp = NOTEBOOKS_DIR / f".{name}.running.ipynb"
                print(f"[notebooks] refreshing {path}", flush=True)
                try:
                    _execute(path, tmp, None, timeout or None, cwd=NOTEBOOKS_DIR, progress=progress)
                    nb = clean_metadata(nbformat.read(str(tmp), as_version=4))
                    nbformat.write(nb, str(path))
                finally:
                    tmp.unlink(missing_ok=True)
    finally:
        if saved is not None:
            os.environ[NBVAL_ENV] = saved


# --------------------------------------------------------------------------------------------- command line
def _cmd_notebooks(a):
    if a.refresh_committed:
        if a.overrides or a.only or a.adaptive:
            raise KitError(
                "--refresh-committed runs the notebooks at their committed defaults: drop the key=value "
                "settings, --only and --adaptive"
            )
        refresh_committed(timeout=a.timeout, reuse_outputs=a.reuse_outputs)
        return
    params = parse_overrides(a.overrides)
    results = run_notebooks(a.out, params, timeout=a.timeout, only=a.only, adaptive=a.adaptive)
    print(
        f"[notebooks] wrote {len(results)} executed notebooks and their .metrics.json files into "
        f"{os.path.abspath(a.out)}"
    )


def register(subparsers):
    runs = ", ".join(r[0] for r in ALL_RUNS)
    s = subparsers.add_parser(
        "notebooks",
        help="run the notebooks with papermill (train1, train2, test and caption for both decoders)",
        description="Runs notebooks/train1, train2, test (both checkpoints) and caption (both checkpoints) with "
        "papermill, in that order (with --adaptive then train2, test and caption for the adaptive "
        "decoder), writing the executed copies, their .metrics.json files, the "
        "checkpoints and the generated shapes data into --out. Example for COCO on a GPU: "
        "python -m instructor notebooks --timeout 0 data_folder=data/coco "
        "data_name=coco_5_cap_per_img_5_min_word_freq encoder_weights=imagenet device=cuda workers=4 "
        "epochs=20",
    )
    s.add_argument(
        "--out",
        default="outputs/notebooks",
        help="folder for everything the notebooks write (default: outputs/notebooks)",
    )
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="set a notebook parameter in every notebook that has it; the value is a Python literal "
        "(3, 1e-3, None, True) or else a string",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds one cell may run (papermill execution_timeout; 0: no limit — use it for long "
        "GPU training). Default 1800",
    )
    s.add_argument(
        "--only",
        type=lambda v: [r for r in v.split(",") if r],
        metavar="RUN[,RUN…]",
        help=f"run only these, in the usual order: {runs}",
    )
    s.add_argument(
        "--adaptive",
        action="store_true",
        help="also train, test and caption with the reference adaptive-attention decoder (runs "
        "train_adaptive, test_adaptive, caption_adaptive: train2, test and caption with "
        "decoder=adaptive)",
    )
    s.add_argument(
        "--refresh-committed",
        action="store_true",
        help="maintainers: re-execute notebooks/*.ipynb in place at their defaults, keeping the outputs "
        "that `make test` (nbval) compares against; outputs/notebooks must be empty or missing",
    )
    s.add_argument(
        "--reuse-outputs",
        action="store_true",
        help="with --refresh-committed: run on what outputs/notebooks already holds",
    )
    s.set_defaults(func=_cmd_notebooks)
    return s


def main(argv=None):
    """``python -m instructor.notebook_runs [options] [key=value …]``: the ``notebooks`` command on its own (the
    grader runs it so inside a sandbox that holds no other instructor code)."""
    import argparse

    from captioning.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m instructor.notebook_runs")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(["notebooks", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
