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
watchdog ends the run at twice the budget (recording the step as killed); a step is not started when the total budget (``TOTAL_BUDGET_S``) could not hold
it. The imports are checked first, naming what is missing; a step whose imports are missing is skipped, the others
run. The exit status is 1 when any step failed or was skipped.

Steps:

* ``train_smoke`` — ``Trainer.fit`` on the tiny shapes data (attention): bf16 autocast, ``channels_last``, pinned
  memory and ``non_blocking`` copies, DataLoader workers, the feature cache built on the device; records whether
  the fast path ran (``fast_path``);
* ``encoder`` — ResNet-101 (random weights; the dry run: shapes_cnn) at 256 px, bf16 autocast and ``channels_last``: images/s, inference
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
* ``torchrun`` — two torchrun processes training through the kit's own process group (``captioning.distributed``):
  nccl with two GPUs, else gloo on the CPU (NCCL needs a GPU per process).
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import shlex
import shutil
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

COCO_IMAGES, CPI = 113_287, 5
COURSE = dict(vocab=9490, dim=512, grid=14, channels=2048, batch=32, images=2000, encoder_px=256, encoder_batch=64,
              train_dims=dict(embed_dim=512, attention_dim=512, decoder_dim=512), batch_size=40, workers=2,
              fine_tune_arch="resnet101", fine_tune_grid=14, encoder_arch="resnet101")
TINY = dict(vocab=40, dim=16, grid=3, channels=8, batch=10, images=20, encoder_px=64, encoder_batch=2,
            train_dims=dict(embed_dim=16, attention_dim=16, decoder_dim=24), batch_size=20, workers=0,
            fine_tune_arch="shapes_cnn", fine_tune_grid=2, encoder_arch="shapes_cnn")
STEPS = ("train_smoke", "encoder", "train_step", "beam", "coco_epoch", "fine_tune", "uncached", "rnn", "caption",
         "papermill", "nccl", "torchrun")
# seconds per step on one H100 (the dry run's, on a CPU that other work may share, are ten times these: its times
# mean nothing): faulthandler dumps the tracebacks at the budget, a watchdog ends the run at twice it
BUDGETS = dict(train_smoke=45, encoder=30, train_step=30, beam=30, coco_epoch=5, fine_tune=45, uncached=25, rnn=30,
               caption=15, papermill=80, nccl=30, torchrun=60)
TOTAL_BUDGET_S = 450  # with start-up and the data: under 8 minutes
SUPPORTED_TORCH = ((2, 11), (2, 14))
# what each step imports beyond the kit's core (checked before the steps run)
CORE_MODULES = ("torch", "numpy", "h5py", "PIL", "tqdm", "captioning.solver", "captioning.evaluate",
                "instructor.fastpath")
STEP_MODULES = {"train_smoke": ("nltk",), "fine_tune": ("nltk",), "uncached": ("nltk",), "rnn": ("nltk",),
                "train_step": ("train_speed",), "torchrun": ("nltk",),
                "papermill": ("nltk", "papermill", "nbclient", "nbformat", "jupyter_client", "ipykernel")}

# --prepare-device: the packages the GPU machine lacks (its image has Python 3.12, torch 2.11, torchvision, h5py,
# matplotlib, scikit-image, tqdm, pillow and their dependencies: numpy, scipy, packaging, python-dateutil, six…),
# at the versions the kit is tested with. Listed one by one and downloaded with --no-deps: a resolver would pull
# torch again. pycocoevalcap is left out: its wheel (Java jars for METEOR and SPICE) is ~100 MB, more than one
# device call carries (64 MiB), and the COCO metrics are text on the CPU, with no GPU path to check (the check
# calls test with coco=False). papermill's aiohttp requirement for Python 3.12 is not needed by what it runs here.
DEVICE_WHEELS = (
    "nltk", "click", "joblib", "regex", "defusedxml",
    "papermill", "entrypoints", "pyyaml", "requests", "charset-normalizer", "idna", "urllib3", "certifi", "tenacity",
    "nbclient", "nbformat", "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "attrs", "jupyter-client", "jupyter-core", "platformdirs", "traitlets", "pyzmq", "tornado", "typing-extensions",
    "ipykernel", "comm", "debugpy", "ipython", "ipython-pygments-lexers", "jedi", "parso", "matplotlib-inline",
    "nest-asyncio2", "pexpect", "ptyprocess", "prompt-toolkit", "wcwidth", "psutil", "pygments", "stack-data",
    "asttokens", "executing", "pure-eval",
)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WHEELS_DIR = ".gpu_wheels"  # in .gitignore; what the device command installs from
DEVICE_TARGET = "/tmp/gpu_check_site"


# ------------------------------------------------------------------------------------------ --prepare-device
def wheel_requirements(versions=None):
    """``name==version`` for each of DEVICE_WHEELS, at the version installed here (``versions``: {name: version},
    for tests); a package not installed here is a KitError-like SystemExit naming it."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in DEVICE_WHEELS:
        try:
            v = versions[name] if versions is not None else version(name)
        except (PackageNotFoundError, KeyError):
            raise SystemExit(f"--prepare-device: the package {name} is not installed here, so its version is "
                             f"unknown; install the kit (`make install` or `pip install -e .`) first") from None
        out.append(f"{name}=={v}")
    return out


def download_command(dest, requirements, python=sys.executable):
    """The ``pip download`` of the device's wheels: binary wheels for CPython 3.12 on manylinux x86_64, no
    dependency resolution (the list is explicit)."""
    cmd = [python, "-m", "pip", "download", "--dest", str(dest), "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
           "--abi", "none"]
    for platform in DEVICE_PLATFORMS + ("any",):
        cmd += ["--platform", platform]
    return cmd + list(requirements)


def device_command(wheels_dir=WHEELS_DIR, out="$OUT", target=DEVICE_TARGET):
    """The command for the device machine, run in the repository root: install the wheels without the network
    into ``target`` (the image's torch stays the one used), then the check with the repo root and ``target`` on
    PYTHONPATH."""
    return (f"python3 -m pip install --no-index --no-deps --quiet --target {target} {wheels_dir}/*.whl && "
            f"PYTHONPATH=$PWD:{target} python3 benchmarks/gpu_check.py {out}")


def prepare_device(dest=ROOT / WHEELS_DIR):
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = download_command(dest, wheel_requirements())
    print("$ " + shlex.join(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode:
        raise SystemExit(f"pip download failed (exit {r.returncode}); the wheels so far are in {dest}")
    wanted = {n.lower().replace("-", "_") for n in DEVICE_WHEELS}
    got = {w.name.split("-")[0].lower() for w in dest.glob("*.whl")}
    for stale in sorted(w for w in dest.glob("*.whl") if w.name.split("-")[0].lower() not in wanted):
        stale.unlink()  # left from another list: the device installs everything in the folder
    size = sum(w.stat().st_size for w in dest.glob("*.whl"))
    missing = sorted(wanted - got)
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}"
          + (f"; MISSING: {', '.join(missing)}" if missing else ""))
    print("On the device (run tool; carry the wheels folder, it is git-ignored):")
    print(f"  carry: [\"{WHEELS_DIR}\"]")
    print(f"  command: {device_command(out='$OUT')}")
    return 1 if missing or size > 60 * 2**20 else 0


# ------------------------------------------------------------------------------------------------ the report
class Report:
    """gpu_check.json, gpu_check.md and gpu_check.log in OUT, rewritten after every change."""

    def __init__(self, out, dry_run):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self.data = {"dry_run": dry_run, "python": sys.version.split()[0], "steps": {}}

    def say(self, msg):
        print(msg, flush=True)
        self.log.write(msg + "\n")

    def step(self, name, **fields):
        self.data["steps"].setdefault(name, {}).update(fields)
        self.write()

    def write(self):
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=1, default=str)), ("gpu_check.md",
                                                                                                self.markdown())):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.out / name)

    def markdown(self):
        d = self.data
        head = (f"GPU check ({'dry run, CPU' if d['dry_run'] else d.get('gpu')}; torch {d.get('torch')}; "
                f"python {d['python']}; fast path: {d.get('fast_path', {}).get('found')})")
        rows = [head, "", "| step | status | seconds | budget | numbers |", "|---|---|---|---|---|"]
        for name, r in d["steps"].items():
            nums = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("status", "seconds", "budget_s"))
            rows.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {r.get('budget_s', '')} | "
                        f"{nums} |")
        if d.get("preflight", {}).get("missing"):
            rows += ["", f"Missing imports: {d['preflight']['missing']}"]
        return "\n".join(rows)


def preflight(report):
    """Import every module the steps need; the missing ones, each with the error, go into the report."""
    missing = {}
    for name in dict.fromkeys(CORE_MODULES + tuple(m for ms in STEP_MODULES.values() for m in ms)):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an import can fail with more than ImportError
            missing[name] = f"{type(e).__name__}: {e}"
    report.data["preflight"] = {"missing": missing}
    for name, err in missing.items():
        report.say(f"[gpu_check] cannot import {name}: {err}")
    if missing:
        report.say("[gpu_check] the missing packages travel as wheels: run `python3 benchmarks/gpu_check.py "
                   "--prepare-device` on the machine with the kit, and the device command it prints")
    return missing


def torch_support(torch):
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    lo, hi = SUPPORTED_TORCH
    return "supported" if lo <= (major, minor) <= hi else f"not tested (the kit supports {lo} to {hi})"


def find_fast_path():
    """The fast-path plug-in as the kit finds it; from a plain checkout (no entry point installed) the kit's own
    ``instructor.fastpath`` is registered explicitly. Returns {found, how}."""
    from captioning import plugins

    fast = plugins.get("fast_path")
    if fast is not None:
        return {"found": fast.__name__, "how": "installed entry point"}
    if os.environ.get(plugins.DISABLE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return {"found": None, "how": f"{plugins.DISABLE_ENV}=off"}
    from instructor import fastpath

    plugins.register("fast_path", fastpath)
    return {"found": fastpath.__name__, "how": "registered from the checkout (no entry point installed)"}


def _ran_with(trainer):
    return trainer.fast.__name__ if trainer.fast else "the decoder's own forward"


# ----------------------------------------------------------------------------------------------------- steps
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat):
    fn()  # warm-up (kernels, autotuning)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat


def tiny_data(work):
    """The tiny shapes data (40/10/10 images of 64 px) the training steps use: (data_folder, data_name, an image
    file)."""
    from captioning.prepare import create_input_files
    from captioning.shapes import generate_shapes

    raw = os.path.join(work, "raw")
    js = generate_shapes(raw, n_train=40, n_val=10, n_test=10, image_size=64, seed=0)
    s = create_input_files("shapes", js, raw, captions_per_image=5, min_word_freq=1,
                           output_folder=os.path.join(work, "data"), image_size=64, seed=0, workers=1)
    image = next(Path(raw).rglob("test_*.jpg"))
    return os.path.join(work, "data"), s["data_name"], str(image)


def _fit(a, device, sizes, data, out, **cfg):
    """Trainer.fit on the tiny data; returns (result, trainer)."""
    from captioning.solver import Trainer, make_cfg

    base = dict(data_folder=data[0], data_name=data[1], encoder="shapes_cnn", encoder_weights=None,
                encoded_image_size=2, batch_size=sizes["batch_size"], epochs=1, workers=sizes["workers"],
                print_freq=0, output_dir=os.path.join(a.work, out), device=str(device), decoder="attention",
                progress=False, recalibrate_images=16, **sizes["train_dims"])
    trainer = Trainer(make_cfg(dict(base, **cfg)), progress=False)
    return trainer.fit(), trainer


def step_train_smoke(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "smoke")
    row = res["history"][-1]
    results["smoke_checkpoint"] = res["best_checkpoint"]
    return {"train_loss": round(row["train_loss"], 3), "val_bleu4": round(row["bleu4"], 4),
            "fast_path": _ran_with(trainer)}


def step_encoder(a, device, sizes, data, results):
    import torch

    from captioning.encoder import Encoder

    enc = Encoder(14, weights=None, arch=sizes["encoder_arch"]).to(device).eval()
    fast = enc.for_inference()  # what the feature cache encodes with: BatchNorm folded, channels_last
    x = torch.randn(sizes["encoder_batch"], 3, sizes["encoder_px"], sizes["encoder_px"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            fast(x)

    sec = _timed(run, device, 1 if a.dry_run else 10)
    if device.type == "cuda":
        enc = enc.to(memory_format=torch.channels_last)
    enc.fine_tune(True)  # the course's fine-tuning: blocks 2-4 learn
    enc.train()

    def train():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = enc(x).float().mean()
        loss.backward()

    sec_ft = _timed(train, device, 1 if a.dry_run else 5)
    results["encoder"] = {"images_per_s": sizes["encoder_batch"] / sec,
                          "fine_tune_images_per_s": sizes["encoder_batch"] / sec_ft}
    return {"arch": sizes["encoder_arch"], **{k: round(v, 1) for k, v in results["encoder"].items()}}


def _decoder(sizes, device):
    import torch

    from captioning.models import DecoderWithAttention

    cfg = dict(vocab_size=sizes["vocab"], embed_dim=sizes["dim"], decoder_dim=sizes["dim"], attention_dim=sizes["dim"],
               dropout=0.5)
    torch.manual_seed(0)
    return DecoderWithAttention(cfg, encoder_dim=sizes["channels"]).to(device)


def _batch(sizes, device, images):
    import torch

    g = torch.Generator().manual_seed(0)
    enc = torch.randn(images, sizes["grid"], sizes["grid"], sizes["channels"], generator=g).to(device)
    lens = torch.randint(9, 16, (images, CPI), generator=g)
    caps = torch.randint(4, sizes["vocab"], (images, CPI, 17), generator=g)
    return enc, caps.to(device), lens.to(device)


def step_train_step(a, device, sizes, data, results):
    """The two training steps train_speed.py measures on the CPU (the same functions), here on the device."""
    import torch

    from captioning.optim import adam
    from train_speed import course_loss, kit_loss, make_cfg, per_caption, update

    dec = _decoder(sizes, device).train()
    opt = adam(dec.parameters(), 4e-4)
    cfg = make_cfg("attention")
    images = max(1, sizes["batch"] // CPI)
    enc, caps, lens = _batch(sizes, device, images)
    out = {"fast_path": "instructor.fastpath (train_speed.kit_loss calls it directly)"}
    for name, loss_fn, batch in (("kit", kit_loss, (enc, caps, lens)), ("course", course_loss,
                                                                        per_caption(enc, caps, lens))):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(dec, cfg, *batch)
            update(dec, opt, loss.float(), cfg)

        sec = _timed(run, device, 2 if a.dry_run else 20)
        out[f"{name}_step_s"] = sec
        out[f"{name}_captions_per_s"] = round(images * CPI / sec, 1)
    out["speed_up"] = round(out["course_step_s"] / out["kit_step_s"], 2)
    results["train_step"] = dict(out)
    return out


def step_beam(a, device, sizes, data, results):
    import torch

    from captioning.decoding import beam_search

    dec = _decoder(sizes, device).eval()
    word_map = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3}
    n, per = sizes["images"], min(250, sizes["images"])
    enc = torch.randn(per, sizes["grid"] ** 2, sizes["channels"], device=device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(0, n, per):
            beam_search(dec, enc, word_map, beam_size=5, max_len=50, length_penalty=1.0)
    _sync(device)
    sec = time.perf_counter() - t0
    return {"images": n, "decode_s": round(sec, 2), "images_per_s": round(n / sec, 1)}


def step_coco_epoch(a, device, sizes, data, results):
    """Minutes per COCO epoch, extrapolated from the measured steps (no new measurement)."""
    t, e = results.get("train_step", {}), results.get("encoder", {})
    if "kit_step_s" not in t or "images_per_s" not in e:
        raise RuntimeError("needs the train_step and encoder steps")
    batches = COCO_IMAGES / max(1, COURSE["batch"] // CPI)  # the kit's batches hold whole images
    cached = batches * t["kit_step_s"] / 60
    encode = COCO_IMAGES / e["images_per_s"] / 60
    fine_tune = COCO_IMAGES / e["fine_tune_images_per_s"] / 60  # forward + backward through blocks 2-4
    return {"frozen_cached_min": round(cached, 2), "frozen_uncached_min": round(cached + encode, 2),
            "fine_tuned_min": round(cached + fine_tune, 2), "target_frozen_min": 2, "target_fine_tuned_min": 10,
            "note": "at course sizes" if not a.dry_run else "dry run: tiny sizes, the minutes mean nothing"}


def _test(checkpoint, device, max_images=None):
    from captioning.evaluate import evaluate

    r = evaluate(checkpoint, "TEST", beam_size=3, device=str(device), progress=False, coco=False,
                 max_images=max_images)
    return round(r["bleu4"], 4), r["n_images"]


def step_fine_tune(a, device, sizes, data, results):
    """fine_tune_encoder=True for one epoch of the tiny data (ResNet-101 at 64 px on the GPU), then test on that
    checkpoint: the fine-tuned encoder's pixels path, uncached, in training and in evaluate."""
    res, trainer = _fit(a, device, sizes, data, "fine_tune", fine_tune_encoder=True,
                        encoder=sizes["fine_tune_arch"], encoded_image_size=sizes["fine_tune_grid"])
    bleu4, n = _test(res["best_checkpoint"], device)
    return {"encoder": sizes["fine_tune_arch"], "train_loss": round(res["history"][-1]["train_loss"], 3),
            "test_bleu4": bleu4, "test_images": n, "fast_path": _ran_with(trainer)}


def step_uncached(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "uncached", feature_cache=False)
    return {"train_loss": round(res["history"][-1]["train_loss"], 3), "val_bleu4": round(res["history"][-1]["bleu4"], 4),
            "folded_encoder": trainer.folded is not None, "fast_path": _ran_with(trainer)}


def step_rnn(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "rnn", decoder="rnn")
    bleu4, n = _test(res["best_checkpoint"], device)
    return {"train_loss": round(res["history"][-1]["train_loss"], 3), "test_bleu4": bleu4,
            "fast_path": _ran_with(trainer)}


def step_caption(a, device, sizes, data, results):
    from captioning.evaluate import caption_images

    if "smoke_checkpoint" not in results:
        raise RuntimeError("needs train_smoke's checkpoint")
    (res,) = caption_images(results["smoke_checkpoint"], [data[2]], beam_size=3, device=str(device))
    return {"words": len(res["words"]), "attention_maps": None if res["alphas"] is None else len(res["alphas"])}


def _subprocess(cmd, report, budget, env=None):
    """Run ``cmd`` with its output appended to the log; RuntimeError with the log's tail on failure or past
    ``budget`` seconds."""
    report.log.flush()
    try:
        r = subprocess.run(cmd, stdout=report.log, stderr=subprocess.STDOUT, timeout=budget, cwd=ROOT,
                           env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"still running after its budget of {budget} s: stopped (its output is in the log)")
    if r.returncode:
        raise RuntimeError(f"exit status {r.returncode} (its output is in gpu_check.log)")


def _python():
    """This interpreter with its isolation flag (``-S``), if any, for the subprocesses."""
    return [sys.executable] + (["-S"] if sys.flags.no_site else [])


def step_papermill(a, device, sizes, data, results, report=None, budget=None):
    out = os.path.join(a.work, "notebooks")
    settings = {"device": device.type, "threads": 1, "epochs": 1, "shapes_n_train": 40, "shapes_n_val": 10,
                "shapes_n_test": 10, "shapes_image_size": 64, "embed_dim": 16, "attention_dim": 16, "decoder_dim": 16,
                "batch_size": 20, "workers": 0}
    cmd = [*_python(), "-m", "instructor", "notebooks", "--out", out, "--timeout", str(budget), "--only", "train2",
           *(f"{k}={v}" for k, v in settings.items())]
    _subprocess(cmd, report, budget)
    m = json.load(open(os.path.join(out, "train2.metrics.json")))
    from captioning import plugins

    # the kernel finds plug-ins only through installed entry points (gpu_check's registration stays here)
    declared = [ep.value for ep in plugins._declared("fast_path")]
    return {"best_bleu4": m["best_bleu4"], "device": m["cfg"]["device"],
            "fast_path": declared[0] if declared else "the decoder's own forward (no entry point installed)"}


def _torchrun(nproc, child_args, report, budget):
    """torchrun of this script's child mode with ``nproc`` processes (python flags kept: ``--no-python``)."""
    cmd = [*_python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--no-python", *_python(), __file__, *child_args]
    _subprocess(cmd, report, budget)


def step_nccl(a, device, sizes, data, results, report=None, budget=None):
    backend = "gloo" if a.dry_run else "nccl"
    _torchrun(1, ["--child", "all_reduce", backend, a.work], report, budget)
    return {"backend": backend, "all_reduce": "ok"}


def step_torchrun(a, device, sizes, data, results, report=None, budget=None):
    """Two processes train one epoch through captioning.distributed.ProcessGroup (the solver's own)."""
    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    child_device = "cuda" if gpus >= 2 else "cpu"
    out = os.path.join(a.work, "torchrun")
    dims = sizes["train_dims"] if child_device == "cuda" else TINY["train_dims"]  # two CPU processes: keep it small
    _torchrun(2, ["--child", "train", child_device, out, data[0], data[1], json.dumps(dims)], report, budget)
    with open(os.path.join(out, "result.json")) as fh:
        res = json.load(fh)
    return dict(res, device=child_device, backend="nccl" if child_device == "cuda" else "gloo",
                note=None if gpus >= 2 or device.type != "cuda" else "one GPU: NCCL needs a GPU per process, so the "
                                                                     "two processes train on the CPU with gloo")


def child(args):
    """Inside torchrun: ``all_reduce BACKEND WORK`` or ``train DEVICE OUT DATA_FOLDER DATA_NAME DIMS``."""
    import torch

    if args[0] == "all_reduce":
        import torch.distributed as dist

        backend = args[1]
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else \
            torch.device("cpu")
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
    cfg = make_cfg(data_folder=folder, data_name=name, encoder="shapes_cnn", encoder_weights=None,
                   encoded_image_size=2, batch_size=20, epochs=1, workers=0, print_freq=0, output_dir=out,
                   device=device, decoder="attention", progress=False, recalibrate_images=16, **json.loads(dims))
    trainer = Trainer(cfg, progress=False)
    res = trainer.fit()
    if trainer.rank == 0:
        from captioning.atomic import write_json

        write_json({"world": trainer.world, "val_bleu4": round(res["history"][-1]["bleu4"], 4),
                    "val_images": res["history"][-1]["val_images"], "fast_path": _ran_with(trainer)},
                   os.path.join(out, "result.json"))
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
    ap.add_argument("--work", default=None, help="folder for data, checkpoints and notebooks (default: a new "
                                                 "temporary folder; never inside OUT)")
    ap.add_argument("--prepare-device", action="store_true",
                    help=f"download the device's missing wheels into {WHEELS_DIR}/ and print the device command")
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

    report.data.update(torch=torch.__version__, torch_support=torch_support(torch),
                       captioning=str(Path(importlib.import_module("captioning").__file__).parent))
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
            fn = globals()[f"step_{name}"]
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
