"""Peak memory of ``prepare`` and of a training epoch as the dataset grows 4x: it should stay flat.

    python benchmarks/memory.py [--threads N] [--prep-n 200] [--train-n 100] [--image-size 128]
    python benchmarks/memory.py --prep-n 2000 --train-n 1000          # bigger (the training part takes long)

Each measured step runs in a fresh Python subprocess started by this script, for a dataset of N and of 4N images:

* prepare   — ``create_input_files`` on generated shapes images (--prep-n and 4x that many images in all, 80 %
              train / 10 % val / 10 % test, --image-size px; workers = all CPUs, the default);
* cache     — what a training run does before its first batch with a frozen random encoder: ``Trainer(cfg)``
              (ResNet-101 built and BatchNorm-recalibrated on --recal-images images) and the feature cache of the
              TRAIN split (``build_feature_cache``: every training image encoded once);
* epoch     — ``Trainer.train_epoch(0)``: one training epoch of the attention decoder on the cached features,
              in the same process right after the cache step.

cfg as in ``instructor/demo.py`` (encoder_weights None, encoded_image_size = image_size // 32, embed 256,
attention 256, decoder 384, batch_size 64, workers 0) with epochs 1; the training part uses --train-n and 4x that
many training images (10 val / 10 test), smaller than prepare's because encoding runs at a few images/s on a CPU.

How it is measured: the child reads its own peak resident set size, VmHWM in /proc/self/status, after each step;
between the cache and the epoch steps it resets the peak by writing "5" to /proc/self/clear_refs (Linux >= 4.0),
so the epoch row is the epoch's own peak (where the reset is refused, the row is the peak of both steps and says so).
prepare's decoding workers are child processes of the child: their largest peak is getrusage(RUSAGE_CHILDREN).
ru_maxrss, read by the child after the pool is shut down. A "baseline" child only imports the modules, for scale.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (from shapes / prepare) in the output
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import THREADS_HELP, load_note, setup, table


def vm_hwm_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def demo_cfg(data_folder, data_name, out, image_size, recal):
    return {
        "data_folder": data_folder,
        "data_name": data_name,
        "encoder_weights": None,
        "encoded_image_size": image_size // 32,
        "epochs": 1,
        "batch_size": 64,
        "embed_dim": 256,
        "decoder_dim": 384,
        "attention_dim": 256,
        "dropout": 0.3,
        "decoder_lr": 2e-3,
        "seed": 0,
        "print_freq": 0,
        "output_dir": out,
        "overwrite": True,
        "device": "cpu",
        "workers": 0,
        "decoder": "attention",
        "recalibrate_images": recal,
        "progress": False,
    }


# ------------------------------------------------------------------------------------------------- children
def child(a):
    out = {}
    if a.child == "baseline-prepare":
        import captioning.data.prepare  # noqa: F401

        out["main"] = vm_hwm_mb()
    elif a.child == "baseline-train":
        import torch

        torch.set_num_threads(a.threads)
        import captioning.solver  # noqa: F401

        out["main"] = vm_hwm_mb()
    elif a.child == "prepare":
        from captioning.data.prepare import create_input_files

        t = time.perf_counter()
        info = create_input_files(
            "shapes", a.json, a.raw, min_word_freq=1, image_size=a.image_size, output_folder=a.data
        )
        out.update(
            main=vm_hwm_mb(),
            workers=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            seconds=time.perf_counter() - t,
            images=info["n_train"] + info["n_val"] + info["n_test"],
            data=sum(f.stat().st_size for f in Path(a.data).glob("*.hdf5")) / 2**20,
        )
    elif a.child == "train":
        import torch

        torch.set_num_threads(a.threads)
        from captioning.data.features import build_feature_cache
        from captioning.solver import Trainer, make_cfg

        info = json.loads((Path(a.data) / "info.json").read_text())
        name = info["data_name"]
        cfg = make_cfg(demo_cfg(a.data, name, a.out, a.image_size, a.recal_images))
        t = time.perf_counter()
        runner = Trainer(cfg, progress=False)
        build_feature_cache(
            runner.encoder, cfg["data_folder"], cfg["data_name"], "TRAIN", batch_size=32, device="cpu", progress=False
        )
        out.update(cache=vm_hwm_mb(), cache_seconds=time.perf_counter() - t)
        out["reset"] = reset_peak()
        t = time.perf_counter()
        row = runner.train_epoch(0)
        out.update(
            epoch=vm_hwm_mb(),
            epoch_seconds=time.perf_counter() - t,
            images=info["n_train"],
            loss=row["train_loss"],
            data=sum(f.stat().st_size for f in Path(a.data).glob("**/TRAIN_*.hdf5")) / 2**20,
        )
    print("RESULT " + json.dumps(out), flush=True)


def run_child(kind, threads, **kw):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--threads", str(threads)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"child {kind} failed")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# --------------------------------------------------------------------------------------------------- parent
def make_raw(tmp, name, n_train, n_val, n_test, size):
    from captioning.data.shapes import generate_shapes

    raw = tmp / f"raw_{name}"
    return raw, generate_shapes(raw, n_train=n_train, n_val=n_val, n_test=n_test, image_size=size, seed=0)


def prepare_quietly(json_path, raw, data, size):
    from captioning.data.prepare import create_input_files

    info = create_input_files("shapes", json_path, raw, min_word_freq=1, image_size=size, output_folder=data)
    (Path(data) / "info.json").write_text(json.dumps(info))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--prep-n", type=int, default=200, help="images prepared in the small case (large: 4x)")
    p.add_argument("--train-n", type=int, default=100, help="training images in the small case (large: 4x)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--recal-images", type=int, default=64, help="images for BatchNorm recalibration")
    p.add_argument("--skip", default="", help="'prepare' or 'train' to skip a part")
    for hidden in ("child", "json", "raw", "data", "out"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    threads = setup(a.threads, "peak memory of prepare and of a training epoch, N vs 4N images")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_p = run_child("baseline-prepare", threads)
        base_t = run_child("baseline-train", threads)
        if "prepare" not in a.skip:
            res = {}
            for k in (1, 4):
                n = a.prep_n * k
                nv = max(1, n // 10)
                raw, js = make_raw(tmp, f"prep{k}", n - 2 * nv, nv, nv, a.image_size)
                for f in (raw / "images").iterdir():  # warm page cache, as for any later reader
                    f.read_bytes()
                res[k] = run_child(
                    "prepare", threads, json=js, raw=raw, data=tmp / f"prep{k}_data", image_size=a.image_size
                )
            r1, r4 = res[1], res[4]
            rows.append(
                ["python + import captioning.data.prepare (baseline)", "", "", f"{base_p['main']:.0f}", "", "", ""]
            )
            data = f"{r1['data']:.0f} / {r4['data']:.0f}"
            rows.append(
                [
                    "prepare, main process",
                    f"{r1['images']} / {r4['images']}",
                    data,
                    f"{r1['main']:.0f}",
                    f"{r4['main']:.0f}",
                    f"{r4['main'] - r1['main']:+.0f}",
                    f"{r4['main'] / r1['main']:.2f}",
                ]
            )
            rows.append(
                [
                    "prepare, largest decoding worker",
                    f"{r1['images']} / {r4['images']}",
                    data,
                    f"{r1['workers']:.0f}",
                    f"{r4['workers']:.0f}",
                    f"{r4['workers'] - r1['workers']:+.0f}",
                    f"{r4['workers'] / r1['workers']:.2f}",
                ]
            )
            print(f"prepare took {r1['seconds']:.1f} s / {r4['seconds']:.1f} s", flush=True)
        if "train" not in a.skip:
            res = {}
            for k in (1, 4):
                n = a.train_n * k
                raw, js = make_raw(tmp, f"train{k}", n, 10, 10, a.image_size)
                data = tmp / f"train{k}_data"
                prepare_quietly(js, raw, data, a.image_size)
                res[k] = run_child(
                    "train",
                    threads,
                    data=data,
                    out=tmp / f"ckpt{k}",
                    image_size=a.image_size,
                    recal_images=a.recal_images,
                )
            r1, r4 = res[1], res[4]
            rows.append(
                ["python + import torch, captioning.solver (baseline)", "", "", f"{base_t['main']:.0f}", "", "", ""]
            )
            data = f"{r1['data']:.0f} / {r4['data']:.0f}"
            rows.append(
                [
                    "Trainer + feature cache (encode TRAIN once)",
                    f"{r1['images']} / {r4['images']}",
                    data,
                    f"{r1['cache']:.0f}",
                    f"{r4['cache']:.0f}",
                    f"{r4['cache'] - r1['cache']:+.0f}",
                    f"{r4['cache'] / r1['cache']:.2f}",
                ]
            )
            label = "training epoch (cached features)" + (
                "" if r1["reset"] and r4["reset"] else " [peak NOT reset: includes the cache step]"
            )
            rows.append(
                [
                    label,
                    f"{r1['images']} / {r4['images']}",
                    data,
                    f"{r1['epoch']:.0f}",
                    f"{r4['epoch']:.0f}",
                    f"{r4['epoch'] - r1['epoch']:+.0f}",
                    f"{r4['epoch'] / r1['epoch']:.2f}",
                ]
            )
            print(
                f"training children: cache step {r1['cache_seconds']:.0f} s / {r4['cache_seconds']:.0f} s, "
                f"epoch {r1['epoch_seconds']:.1f} s / {r4['epoch_seconds']:.1f} s",
                flush=True,
            )
    print()
    print(
        table(
            [
                "step",
                "images N / 4N",
                "data on disk N / 4N (MB)",
                "peak RSS N (MB)",
                "peak RSS 4N (MB)",
                "4N - N (MB)",
                "4N / N",
            ],
            rows,
        )
    )
    print(
        "data on disk: prepare = the three IMAGES .hdf5 it wrote; training = TRAIN images .hdf5 + feature cache. "
        "A step that held its data in memory would grow by about the difference of that column."
    )
    print(
        "peak RSS = VmHWM of the child process (/proc/self/status), reset between the cache and epoch steps via "
        "/proc/self/clear_refs; workers = getrusage(RUSAGE_CHILDREN).ru_maxrss in the prepare child; "
        "each row's N and 4N ran in separate fresh subprocesses; MB = 2^20 bytes"
    )
    print(f"total {time.perf_counter() - t0:.0f} s; {load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
