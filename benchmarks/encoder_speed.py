"""How fast the frozen encoder turns images into features, and what importing it costs, side by side in one run.

* encoder throughput: ResNet-101 (random weights, BatchNorm recalibrated on the batch so the statistics are not
  trivial) on batches of ``--batch`` images of 256 px, images per second for the plain module, for the same module
  with ``channels_last`` input and weights, and for ``Encoder.for_inference()`` (BatchNorm folded into the convs,
  ``channels_last``), which is what the feature cache, ``test`` and the uncached frozen training use, and that
  copy under bf16 autocast (the GPU's setting), and two other fp32 routes on the folded copy (TorchScript
  freezing, oneDNN tensors) that the kit does not use. The largest difference from the plain module's output is
  printed beside each;
* pooling a cached batch of 8×8 maps to the 14×14 grid: ``nn.AdaptiveAvgPool2d`` plus the copy to (B, S, S, C)
  against ``Encoder.pool`` (the same windows as one matrix product);
* BatchNorm recalibration of a random encoder (what a first run without ImageNet weights pays once):
  ``Encoder.recalibrate`` on ``--recal-images`` images in batches of 32, against the same batch-statistics pass
  in the module's own (NCHW) layout, seconds and the largest difference of the running statistics;
* import cost: a fresh interpreter importing torch alone, torch + torchvision, and the kit's encoder module
  (which builds its ResNet itself and imports torchvision only for ImageNet weights or other backbones), each
  ``--reps`` times, median wall seconds.

    .venv/bin/python benchmarks/encoder_speed.py [--threads 2] [--batch 8] [--seconds 6] [--reps 5] [--recal-images 128]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import load_note, setup  # noqa: E402


def images_per_second(fn, x, seconds):
    import torch

    with torch.no_grad():
        fn(x)  # warm-up: oneDNN picks its kernels on the first call
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def import_seconds(code, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def other_fp32_routes(fast, x, x_cl):
    """Rows for two other fp32 routes to a faster CPU encoder, applied to the folded copy: TorchScript freezing
    with oneDNN weight prepacking, and oneDNN's own tensor layout. Not used by the kit; kept to show the ceiling."""
    import copy
    import warnings

    import torch

    rows = []
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(fast.resnet, x_cl)))
        rows.append(("folded, then torch.jit.freeze + optimize_for_inference", frozen, x_cl))
    except Exception as e:  # TorchScript may be gone from a later torch
        print(f"torch.jit route skipped: {type(e).__name__}: {e}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils import mkldnn

            net = mkldnn.to_mkldnn(copy.deepcopy(fast.resnet))
        rows.append(("folded, then torch.utils.mkldnn tensors", lambda t: net(t.to_mkldnn()).to_dense(), x))
    except Exception as e:
        print(f"mkldnn route skipped: {type(e).__name__}: {e}")
    return rows


def recalibration_rows(n_images, size):
    """Seconds of ``Encoder.recalibrate`` (channels_last inside) and of a plain NCHW pass giving the same running
    statistics, on one fresh random ResNet-101 each, and the largest relative difference of their buffers."""
    import copy

    import torch

    from captioning.encoder import Encoder

    torch.manual_seed(0)
    enc = Encoder(14, weights=None, arch="resnet101")
    plain = copy.deepcopy(enc.resnet)
    batches = [torch.randn(min(32, n_images - i), 3, size, size) for i in range(0, n_images, 32)]
    with torch.no_grad():  # warm-up of both layouts' kernels on one small batch
        enc.resnet.train()(batches[0][:2].contiguous(memory_format=torch.channels_last))
        plain.train()(batches[0][:2])

    def plain_pass():
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            for x in batches:
                plain(x)

    t0 = time.perf_counter()
    plain_pass()
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc.recalibrate(batches)
    t_kit = time.perf_counter() - t0
    got = dict(enc.resnet.named_buffers())
    diff = max(
        ((got[k].float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-12)).item()
        for k, v in plain.named_buffers()
        if v.is_floating_point()
    )
    return [
        ("batch statistics in the module's NCHW layout", t_plain, diff),
        ("Encoder.recalibrate (channels_last inside)", t_kit, diff),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2, as the CLI on 2 cores)")
    ap.add_argument("--batch", type=int, default=8, help="images per pass (8; the CPU feature cache takes 4)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant")
    ap.add_argument("--reps", type=int, default=5, help="fresh interpreters per import row")
    ap.add_argument(
        "--recal-images",
        type=int,
        default=128,
        help="images of the recalibration rows (128, the recalibrate_images default)",
    )
    a = ap.parse_args(argv)
    setup(a.threads, "frozen encoder: throughput and import cost")
    import torch

    from captioning.encoder import Encoder

    torch.manual_seed(0)
    enc = Encoder(14, weights=None, arch="resnet101")
    x = torch.randn(a.batch, 3, a.size, a.size)
    enc.recalibrate([x])
    enc.eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = enc.backbone(x)
    fast = enc.for_inference()
    rows = [("plain (fp32)", lambda t: enc.backbone(t), x)]
    rows.append(("folded BatchNorm + channels_last: Encoder.for_inference()", lambda t: fast.backbone(t), x_cl))

    def bf16(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fast.backbone(t).float()

    rows.extend(other_fp32_routes(fast, x, x_cl))
    rows.append(("folded under bf16 autocast (not used on the CPU: see the difference)", bf16, x_cl))
    results = []
    for name, fn, inp in rows:
        with torch.no_grad():
            diff = ((fn(inp) - ref).abs().max() / ref.abs().max()).item()
        results.append((name, images_per_second(fn, inp, a.seconds), diff))
    # channels_last alone, last: converting the module in place changes `enc` for nothing after it
    enc.resnet.to(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = ((enc.backbone(x_cl) - ref).abs().max() / ref.abs().max()).item()
    results.insert(1, ("channels_last only", images_per_second(lambda t: enc.backbone(t), x_cl, a.seconds), diff))
    base = results[0][1]
    print(f"ResNet-101, batches of {a.batch} at {a.size} px, {torch.get_num_threads()} threads")
    print("| variant | images/s | vs plain | max relative difference |")
    print("|---|---|---|---|")
    for name, ips, diff in results:
        print(f"| {name} | {ips:.1f} | {ips / base:.2f}x | {diff:.1e} |")

    # pooling the cached 8x8 map to the 14x14 grid happens for every batch of a cached epoch and of beam search
    fmap = torch.randn(32, 2048, 8, 8).half()
    pool_rows = [
        (
            "nn.AdaptiveAvgPool2d, then (B, S, S, C) contiguous",
            lambda t: enc.adaptive_pool(t.float()).permute(0, 2, 3, 1).contiguous(),
        ),
        ("Encoder.pool (one matrix product)", enc.pool),
    ]
    ref_pool = pool_rows[0][1](fmap)
    print(f"\npooling a cached batch: (32, 2048, 8, 8) fp16 -> (32, 14, 14, 2048) fp32, {a.seconds:g} s each")
    print("| pooling | ms per batch | vs the pooling op | max difference |")
    print("|---|---|---|---|")
    base_ms = None
    for name, fn in pool_rows:
        ms = 1000 * fmap.shape[0] / images_per_second(fn, fmap, a.seconds)
        base_ms = base_ms or ms
        print(f"| {name} | {ms:.1f} | {base_ms / ms:.2f}x | {(fn(fmap) - ref_pool).abs().max().item():.1e} |")

    print(f"\nBatchNorm recalibration of a random ResNet-101: {a.recal_images} images of {a.size} px, batches of 32")
    print("| pass | s | vs NCHW | max relative difference of the statistics |")
    print("|---|---|---|---|")
    recal = recalibration_rows(a.recal_images, a.size)
    for name, secs, diff in recal:
        print(f"| {name} | {secs:.1f} | {recal[0][1] / secs:.2f}x | {diff:.1e} |")

    print(f"\nimport cost, fresh interpreter, median of {a.reps} (wall s, interpreter start included)")
    print("| import | s |")
    print("|---|---|")
    for code in ("import torch", "import torch, torchvision", "import torch, captioning.encoder"):
        print(f"| `{code}` | {import_seconds(code, a.reps):.2f} |")
    print("\n" + load_note())


if __name__ == "__main__":
    main()
