"""One prepared GPU check: runs every CUDA path of the kit once and measures what a GPU user meets first, in one go.

    python benchmarks/gpu_check.py OUT            # on a machine with a CUDA GPU (about 8 minutes on one H200)
    python benchmarks/gpu_check.py OUT --dry-run  # every step at tiny sizes on the CPU (part of `make test`)

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (a table: step, status, seconds, numbers). A failing step is
recorded with its error and the others still run; the exit status is 1 when any step failed. Steps:

* ``train_smoke`` — ``fit`` on the tiny shapes data on the device: bf16 autocast, ``channels_last``, pinned memory
  and ``non_blocking`` copies, DataLoader workers, the feature cache built on the device;
* ``encoder`` — ResNet-101 (random weights) at 256 px, bf16 autocast and ``channels_last``: images/s;
* ``train_step`` — the attention decoder at course sizes (vocabulary 9,490, dims 512, 14×14×2048, batches of 32
  captions): the kit's path (whole images per batch, the fast path) and the course procedure (per-caption batches,
  the decoder's own ``forward``), side by side — the same step functions as ``train_speed.py``: captions/s, ratio;
* ``beam`` — beam-5 decoding of 5,000 images (random decoder at course sizes) in batches of 250: images/s;
* ``coco_epoch`` — the COCO epoch extrapolated from those (113,287 images × 5 captions): frozen encoder with the
  feature cache, frozen without it, and fine-tuned (the encoder's forward + backward per image, measured by
  ``encoder``); targets ≤ 2 and ≤ 10 min;
* ``papermill`` — ``python -m instructor notebooks --only train2 device=cuda`` on the tiny shapes data;
* ``torchrun`` — one ``torchrun`` process that joins an nccl process group (gloo with ``--dry-run``) and all-reduces.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import torch

COCO_IMAGES, CPI = 113_287, 5
COURSE = dict(vocab=9490, dim=512, grid=14, channels=2048, batch=32, images=5000, encoder_px=256, encoder_batch=64)
TINY = dict(vocab=40, dim=16, grid=3, channels=8, batch=10, images=20, encoder_px=64, encoder_batch=2)


def _sync(device):
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


def tiny_data(out):
    """The tiny shapes data (40/10/10 images of 64 px) the train, papermill and torchrun steps use."""
    from captioning.prepare import create_input_files
    from captioning.shapes import generate_shapes

    raw = os.path.join(out, "raw")
    js = generate_shapes(raw, n_train=40, n_val=10, n_test=10, image_size=64, seed=0)
    s = create_input_files("shapes", js, raw, captions_per_image=5, min_word_freq=1, output_folder=os.path.join(
        out, "data"), image_size=64, seed=0, workers=1)
    return os.path.join(out, "data"), s["data_name"]


def step_train_smoke(a, device, sizes, data):
    from captioning.solver import fit

    res = fit(data_folder=data[0], data_name=data[1], encoder="shapes_cnn", encoder_weights=None,
              encoded_image_size=2, embed_dim=16, decoder_dim=24, attention_dim=16, batch_size=20, epochs=1,
              workers=2, print_freq=0, output_dir=os.path.join(a.out, "smoke"), device=str(device),
              decoder="attention", progress=False)
    row = res["history"][-1]
    return {"train_loss": round(row["train_loss"], 3), "val_bleu4": round(row["bleu4"], 4)}


def step_encoder(a, device, sizes, data):
    from captioning.encoder import Encoder

    enc = Encoder(14, weights=None, arch="resnet101").to(device).eval()
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
    return {"images_per_s": round(sizes["encoder_batch"] / sec, 1),
            "fine_tune_images_per_s": round(sizes["encoder_batch"] / sec_ft, 1)}


def _decoder(sizes, device):
    from captioning.models import DecoderWithAttention

    cfg = dict(vocab_size=sizes["vocab"], embed_dim=sizes["dim"], decoder_dim=sizes["dim"], attention_dim=sizes["dim"],
               dropout=0.5)
    torch.manual_seed(0)
    return DecoderWithAttention(cfg, encoder_dim=sizes["channels"]).to(device)


def _batch(sizes, device, images):
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(images, sizes["grid"], sizes["grid"], sizes["channels"], generator=g).to(device)
    lens = torch.randint(9, 16, (images, CPI), generator=g)
    caps = torch.randint(4, sizes["vocab"], (images, CPI, 17), generator=g)
    return enc, caps.to(device), lens.to(device)


def step_train_step(a, device, sizes, data):
    """The two training steps train_speed.py measures on the CPU (the same functions), here on the device."""
    from captioning.optim import adam
    from train_speed import course_loss, kit_loss, make_cfg, per_caption, update

    dec = _decoder(sizes, device).train()
    opt = adam(dec.parameters(), 4e-4)
    cfg = make_cfg("attention")
    images = max(1, sizes["batch"] // CPI)
    enc, caps, lens = _batch(sizes, device, images)
    out = {"fast_path": "instructor.fastpath"}  # what kit_loss computes with
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
    return out


def step_beam(a, device, sizes, data):
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
    return {"images": n, "seconds": round(sec, 2), "images_per_s": round(n / sec, 1)}


def step_coco_epoch(a, device, sizes, results):
    """Minutes per COCO epoch, extrapolated from the measured steps (no new measurement but the encoder's backward)."""
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


def step_papermill(a, device, sizes, data):
    out = os.path.join(a.out, "notebooks")
    settings = {"device": device.type, "threads": 1, "epochs": 1, "shapes_n_train": 40, "shapes_n_val": 10,
                "shapes_n_test": 10, "shapes_image_size": 64, "embed_dim": 16, "attention_dim": 16, "decoder_dim": 16,
                "batch_size": 20, "workers": 0}
    cmd = [sys.executable, "-m", "instructor", "notebooks", "--out", out, "--timeout", "900", "--only", "train2",
           *(f"{k}={v}" for k, v in settings.items())]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode:
        raise RuntimeError((r.stderr or r.stdout)[-800:])
    m = json.load(open(os.path.join(out, "train2.metrics.json")))
    return {"best_bleu4": m["best_bleu4"], "device": m["cfg"]["device"]}


def step_torchrun(a, device, sizes, data):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", __file__,
           a.out, "--process-group-child", "gloo" if a.dry_run else "nccl"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode or "all_reduce ok" not in r.stdout:
        raise RuntimeError((r.stderr or r.stdout)[-800:])
    return {"backend": "gloo" if a.dry_run else "nccl", "all_reduce": "ok"}


def process_group_child(backend):
    """Inside torchrun: join the process group, all-reduce a tensor, leave."""
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend)
    t = torch.ones(4, device=device)
    dist.all_reduce(t)
    dist.barrier()
    assert t.sum().item() == 4 * dist.get_world_size()
    dist.destroy_process_group()
    print("all_reduce ok", flush=True)


STEPS = ("train_smoke", "encoder", "train_step", "beam", "coco_epoch", "papermill", "torchrun")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for gpu_check.json, gpu_check.md and the runs' files")
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--process-group-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.process_group_child:
        return process_group_child(a.process_group_child)
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: run on the GPU machine, or use --dry-run to check the script on a CPU")
    device = torch.device("cpu" if a.dry_run else "cuda")
    sizes = TINY if a.dry_run else COURSE
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1) if a.dry_run else torch.get_num_threads())
    data = tiny_data(a.out)
    results, report = {}, {"dry_run": a.dry_run, "torch": torch.__version__, "steps": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    for name in a.steps.split(","):
        t0 = time.time()
        try:
            fn = globals()[f"step_{name}"]
            results[name] = fn(a, device, sizes, results if name == "coco_epoch" else data)
            status = "ok"
        except Exception as e:  # noqa: BLE001 - one failing step must not hide the others
            status = f"failed: {type(e).__name__}: {str(e).strip()[-300:]}"
            traceback.print_exc()
        report["steps"][name] = {"status": status, "seconds": round(time.time() - t0, 1), **results.get(name, {})}
        print(f"[gpu_check] {name}: {status} ({time.time() - t0:.0f} s)", flush=True)
    from captioning.atomic import write_json, write_text

    write_json(report, os.path.join(a.out, "gpu_check.json"))
    rows = ["| step | status | seconds | numbers |", "|---|---|---|---|"]
    for name, r in report["steps"].items():
        nums = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("status", "seconds"))
        rows.append(f"| {name} | {r['status']} | {r['seconds']} | {nums} |")
    write_text("\n".join([f"GPU check ({'dry run, CPU' if a.dry_run else report.get('gpu')}; torch {torch.__version__})",
                          ""] + rows) + "\n", os.path.join(a.out, "gpu_check.md"))
    print("\n".join(rows))
    return 1 if any(r["status"] != "ok" for r in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
