"""One prepared GPU check: runs every CUDA path of the kit once and measures what a GPU user meets first, in one go,
on the lent GPU machine as it is (its own Python 3.12 and torch; nothing installed from the network there).

Here, once (the wheels of the packages the GPU machine lacks, into the ignored ``.gpu_wheels/``; prints the command
to run there):

    python3 benchmarks/gpu_check.py --prepare-device

There, from a plain checkout (the kit imported from the repository root, not installed):

    python3 benchmarks/gpu_check.py OUT            # on one H100: under 8 minutes, each step within its budget
    python3 benchmarks/gpu_check.py OUT --dry-run  # every step at tiny sizes on the CPU (tests/test_gpu_check.py)

Supported torch: 2.11 (the GPU machine's) to 2.14.1 (the kit's pin); the kit uses no newer API.

OUT receives at most three files, rewritten after every step: ``gpu_check.json``, ``gpu_check.md`` (a table: step,
status, seconds, numbers) and ``gpu_check.log`` (what the steps print, the subprocesses' output, tracebacks).
Everything else (data, checkpoints, executed notebooks) goes to a work folder outside OUT (``--work``; default a
new temporary folder). Before a step starts it is recorded as "running": if the run is cut off (the device tool's
10-minute limit), OUT still holds every finished step and names the one that was running. Each step has a time
budget (``BUDGETS``); ``faulthandler`` dumps every thread's traceback to the log when a step passes its budget, and a
watchdog ends the run at twice the budget (recording the step as killed); a step is not started when the total
budget (``TOTAL_BUDGET_S``) could not hold it. The imports are checked first, naming what is missing; a step whose
imports are missing is skipped, the others run. The exit status is 1 when any step failed or was skipped.

Steps:

* ``train_smoke`` — ``Trainer.fit`` on the tiny shapes data (attention): bf16 autocast, ``channels_last``, pinned
  memory and ``non_blocking`` copies, DataLoader workers, the feature cache built on the device; records whether
  the fast path ran (``fast_path``);
* ``encoder`` — ResNet-101 (random weights; the dry run: shapes_cnn) at 256 px, bf16 autocast and
  ``channels_last``: images/s, inference
  and fine-tuning (forward + backward);
* ``train_step`` — the attention decoder at course sizes: the kit's step and the course procedure's, side by side
  (``train_speed.py``'s functions): captions/s, ratio;
* ``beam`` — beam-5 decoding at course sizes: images/s;
* ``coco_epoch`` — minutes per COCO epoch extrapolated from those;
* ``fine_tune`` — ``fine_tune_encoder=True`` (ResNet-101, blocks 2–4) for a few batches, then ``test`` on that
  checkpoint (the fine-tuned encoder, uncached);
* ``uncached`` — a frozen epoch with ``feature_cache=False`` (the folded encoder per batch);
* ``rnn`` — the decoder without attention: an epoch, then ``test``;
* ``caption`` — ``caption_images`` with train_smoke's checkpoint on an image file;
* ``papermill`` — ``python -m instructor notebooks --only train2`` on the tiny shapes data;
* ``nccl`` — one torchrun process that joins an nccl process group and all-reduces (gloo with ``--dry-run``);
* ``torchrun`` — two torchrun processes training through the kit's own process group (``captioning.internals.distributed``):
  nccl with two GPUs, else gloo on the CPU (NCCL needs a GPU per process).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a plain checkout: the kit from the repository root, train_speed.py and _common.py beside this file
for _p in (str(ROOT / "benchmarks"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

STEPS = (
    "train_smoke",
    "encoder",
    "train_step",
    "beam",
    "coco_epoch",
    "fine_tune",
    "uncached",
    "rnn",
    "caption",
    "papermill",
    "nccl",
    "torchrun",
)
# seconds per step on one H100 (the dry run's, on a CPU that other work may share, are ten times these: its times
# mean nothing): faulthandler dumps the tracebacks at the budget, a watchdog ends the run at twice it
BUDGETS = dict(
    train_smoke=45,
    encoder=30,
    train_step=30,
    beam=30,
    coco_epoch=5,
    fine_tune=45,
    uncached=25,
    rnn=30,
    caption=15,
    papermill=80,
    nccl=30,
    torchrun=60,
)
TOTAL_BUDGET_S = 450  # with start-up and the data: under 8 minutes
import gpu_check_steps  # noqa: E402  (the steps that run in this process)
from gpu_check_setup import (  # noqa: E402
    CORE_MODULES,
    STEP_MODULES,
    WHEELS_DIR,
    Report,
    find_fast_path,
    preflight,
    prepare_device,
    torch_support,
)
from gpu_check_steps import COURSE, TINY, _ran_with, tiny_data  # noqa: E402


def _subprocess(cmd, report, budget, env=None):
    """Run ``cmd`` with its output appended to the log; RuntimeError with the log's tail on failure or past
    ``budget`` seconds."""
    report.log.flush()
    try:
        r = subprocess.run(cmd, stdout=report.log, stderr=subprocess.STDOUT, timeout=budget, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"still running after its budget of {budget} s: stopped (its output is in the log)")
    if r.returncode:
        raise RuntimeError(f"exit status {r.returncode} (its output is in gpu_check.log)")


def _python():
    """This interpreter with its isolation flag (``-S``), if any, for the subprocesses."""
    return [sys.executable] + (["-S"] if sys.flags.no_site else [])


def step_papermill(a, device, sizes, data, results, report=None, budget=None):
    out = os.path.join(a.work, "notebooks")
    settings = {
        "device": device.type,
        "threads": 1,
        "epochs": 1,
        "shapes_n_train": 40,
        "shapes_n_val": 10,
        "shapes_n_test": 10,
        "shapes_image_size": 64,
        "embed_dim": 16,
        "attention_dim": 16,
        "decoder_dim": 16,
        "batch_size": 20,
        "workers": 0,
    }
    cmd = [
        *_python(),
        "-m",
        "instructor",
        "notebooks",
        "--out",
        out,
        "--timeout",
        str(budget),
        "--only",
        "train2",
        *(f"{k}={v}" for k, v in settings.items()),
    ]
    _subprocess(cmd, report, budget)
    m = json.load(open(os.path.join(out, "train2.metrics.json")))
    from captioning.internals import plugins

    # the kernel finds plug-ins only through installed entry points (gpu_check's registration stays here)
    declared = [ep.value for ep in plugins._declared("fast_path")]
    return {
        "best_bleu4": m["best_bleu4"],
        "device": m["cfg"]["device"],
        "fast_path": declared[0] if declared else "the decoder's own forward (no entry point installed)",
    }


def _torchrun(nproc, child_args, report, budget):
    """torchrun of this script's child mode with ``nproc`` processes (python flags kept: ``--no-python``)."""
    cmd = [
        *_python(),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "--no-python",
        *_python(),
        __file__,
        *child_args,
    ]
    _subprocess(cmd, report, budget)


def step_nccl(a, device, sizes, data, results, report=None, budget=None):
    backend = "gloo" if a.dry_run else "nccl"
    _torchrun(1, ["--child", "all_reduce", backend, a.work], report, budget)
    return {"backend": backend, "all_reduce": "ok"}


def step_torchrun(a, device, sizes, data, results, report=None, budget=None):
    """Two processes train one epoch through captioning.internals.distributed.ProcessGroup (the solver's own)."""
    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    child_device = "cuda" if gpus >= 2 else "cpu"
    out = os.path.join(a.work, "torchrun")
    dims = sizes["train_dims"] if child_device == "cuda" else TINY["train_dims"]  # two CPU processes: keep it small
    _torchrun(2, ["--child", "train", child_device, out, data[0], data[1], json.dumps(dims)], report, budget)
    with open(os.path.join(out, "result.json")) as fh:
        res = json.load(fh)
    return dict(
        res,
        device=child_device,
        backend="nccl" if child_device == "cuda" else "gloo",
        note=None
        if gpus >= 2 or device.type != "cuda"
        else "one GPU: NCCL needs a GPU per process, so the two processes train on the CPU with gloo",
    )


def child(args):
    """Inside torchrun: ``all_reduce BACKEND WORK`` or ``train DEVICE OUT DATA_FOLDER DATA_NAME DIMS``."""
    import torch

    if args[0] == "all_reduce":
        import torch.distributed as dist

        backend = args[1]
        device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
        )
        dist.init_process_group(backend)
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        dist.barrier()
        assert t.sum().item() == 4 * dist.get_world_size()
        dist.destroy_process_group()
        print("all_reduce ok", flush=True)
        return 0
    _, device, out, folder, name, dims = args
    import torch.distributed as dist

    from captioning.solver import Trainer, make_cfg

    find_fast_path()
    torch.set_num_threads(1)
    cfg = make_cfg(
        data_folder=folder,
        data_name=name,
        encoder="shapes_cnn",
        encoder_weights=None,
        encoded_image_size=2,
        batch_size=20,
        epochs=1,
        workers=0,
        print_freq=0,
        output_dir=out,
        device=device,
        decoder="attention",
        progress=False,
        recalibrate_images=16,
        **json.loads(dims),
    )
    trainer = Trainer(cfg, progress=False)
    res = trainer.fit()
    if trainer.rank == 0:
        from captioning.internals.atomic import write_json

        write_json(
            {
                "world": trainer.world,
                "val_bleu4": round(res["history"][-1]["bleu4"], 4),
                "val_images": res["history"][-1]["val_images"],
                "fast_path": _ran_with(trainer),
            },
            os.path.join(out, "result.json"),
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------------ main
def _kill(report, name, budget):
    """The watchdog: a step at twice its budget is taken as hung; its tracebacks go to the log, the report says
    so, and the run ends (the finished steps are in OUT already)."""
    faulthandler.dump_traceback(file=report.log, all_threads=True)
    report.step(name, status=f"killed: still running at twice its budget ({2 * budget} s); tracebacks in the log")
    report.say(f"[gpu_check] {name}: killed at {2 * budget} s")
    report.log.flush()
    os._exit(3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument(
        "--work",
        default=None,
        help="folder for data, checkpoints and notebooks (default: a new temporary folder; never inside OUT)",
    )
    ap.add_argument(
        "--prepare-device",
        action="store_true",
        help=f"download the device's missing wheels into {WHEELS_DIR}/ and print the device command",
    )
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.prepare_device:
        return prepare_device()
    if a.child:
        return child(a.child)
    if not a.out:
        ap.error("give OUT (or --prepare-device)")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    report = Report(a.out, a.dry_run)
    report.say(f"[gpu_check] {shlex.join(sys.argv)}; python {sys.version.split()[0]} at {sys.executable}")
    started = time.time()
    missing = preflight(report)
    core_missing = [m for m in CORE_MODULES if m in missing]
    if core_missing:
        report.data["status"] = f"stopped: cannot import {', '.join(core_missing)}"
        report.write()
        report.say(f"[gpu_check] {report.data['status']}")
        return 1
    import torch

    report.data.update(
        torch=torch.__version__,
        torch_support=torch_support(torch),
        captioning=str(Path(importlib.import_module("captioning").__file__).parent),
    )
    if not a.dry_run and not torch.cuda.is_available():
        report.data["status"] = "stopped: no CUDA GPU visible (use --dry-run on a CPU)"
        report.write()
        sys.exit("no CUDA GPU visible: run on the GPU machine, or use --dry-run to check the script on a CPU")
    device = torch.device("cpu" if a.dry_run else "cuda")
    if device.type == "cuda":
        report.data["gpu"] = torch.cuda.get_device_name(0)
    sizes = TINY if a.dry_run else COURSE
    a.work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="gpu_check_work_"))
    if Path(a.work).resolve().is_relative_to(Path(a.out).resolve()):
        sys.exit(f"--work {a.work} lies inside OUT: only gpu_check.* belong there")
    os.makedirs(a.work, exist_ok=True)
    report.data["work"] = a.work
    torch.set_num_threads(min(2, os.cpu_count() or 1) if a.dry_run else torch.get_num_threads())
    report.data["fast_path"] = find_fast_path()
    data = tiny_data(a.work)
    scale = 10 if a.dry_run else 1
    results = {}
    failed = False
    for name in a.steps.split(","):
        budget = BUDGETS[name] * scale
        left = TOTAL_BUDGET_S * scale - (time.time() - started)
        need = [m for m in STEP_MODULES.get(name, ()) if m in missing]
        if need or budget > left:
            why = f"cannot import {', '.join(need)}" if need else f"{left:.0f} s of the total budget left"
            report.step(name, status=f"skipped: {why}", budget_s=budget)
            report.say(f"[gpu_check] {name}: skipped ({why})")
            failed = True
            continue
        report.step(name, status="running (if this remains, the run was cut off here)", budget_s=budget)
        report.say(f"[gpu_check] {name}: start (budget {budget} s)")
        faulthandler.dump_traceback_later(budget, file=report.log)  # where a slow step spends its time
        watchdog = threading.Timer(2 * budget, _kill, (report, name, budget))
        watchdog.daemon = True
        watchdog.start()
        t0 = time.time()
        try:
            fn = getattr(gpu_check_steps, f"step_{name}", None) or globals()[f"step_{name}"]
            extra = {"report": report, "budget": budget} if name in ("papermill", "nccl", "torchrun") else {}
            numbers = fn(a, device, sizes, data, results, **extra)
            status = "ok" if time.time() - t0 <= budget else "ok, over budget"
        except Exception as e:  # noqa: BLE001 - one failing step must not hide the others
            numbers, failed = {}, True
            status = f"failed: {type(e).__name__}: {str(e).strip()[-300:]}"
            report.log.write(traceback.format_exc())
        finally:
            faulthandler.cancel_dump_traceback_later()
            watchdog.cancel()
        report.step(name, status=status, seconds=round(time.time() - t0, 1), **numbers)
        report.say(f"[gpu_check] {name}: {status} ({time.time() - t0:.0f} s)")
    report.data["status"] = "done"
    report.data["seconds"] = round(time.time() - started, 1)
    report.write()
    report.say(report.markdown())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
