"""The GPU check's steps that run in its own process (``gpu_check.py`` runs them, each within its budget, and
writes the report after each): training, the encoder, a decoder step and beam search at course sizes, a COCO epoch
extrapolated, fine-tuning, an uncached epoch, the decoder without attention, caption."""

from __future__ import annotations

import os
import time
from pathlib import Path

COCO_IMAGES, CPI = 113_287, 5
COURSE = dict(
    vocab=9490,
    dim=512,
    grid=14,
    channels=2048,
    batch=32,
    images=2000,
    encoder_px=256,
    encoder_batch=64,
    train_dims=dict(embed_dim=512, attention_dim=512, decoder_dim=512),
    batch_size=40,
    workers=2,
    fine_tune_arch="resnet101",
    fine_tune_grid=14,
    encoder_arch="resnet101",
)
TINY = dict(
    vocab=40,
    dim=16,
    grid=3,
    channels=8,
    batch=10,
    images=20,
    encoder_px=64,
    encoder_batch=2,
    train_dims=dict(embed_dim=16, attention_dim=16, decoder_dim=24),
    batch_size=20,
    workers=0,
    fine_tune_arch="shapes_cnn",
    fine_tune_grid=2,
    encoder_arch="shapes_cnn",
)


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
    from captioning.data.prepare import create_input_files
    from captioning.data.shapes import generate_shapes

    raw = os.path.join(work, "raw")
    js = generate_shapes(raw, n_train=40, n_val=10, n_test=10, image_size=64, seed=0)
    s = create_input_files(
        "shapes",
        js,
        raw,
        captions_per_image=5,
        min_word_freq=1,
        output_folder=os.path.join(work, "data"),
        image_size=64,
        seed=0,
        workers=1,
    )
    image = next(Path(raw).rglob("test_*.jpg"))
    return os.path.join(work, "data"), s["data_name"], str(image)


def _fit(a, device, sizes, data, out, **cfg):
    """Trainer.fit on the tiny data; returns (result, trainer)."""
    from captioning.solver import Trainer, make_cfg

    base = dict(
        data_folder=data[0],
        data_name=data[1],
        encoder="shapes_cnn",
        encoder_weights=None,
        encoded_image_size=2,
        batch_size=sizes["batch_size"],
        epochs=1,
        workers=sizes["workers"],
        print_freq=0,
        output_dir=os.path.join(a.work, out),
        device=str(device),
        decoder="attention",
        progress=False,
        recalibrate_images=16,
        **sizes["train_dims"],
    )
    trainer = Trainer(make_cfg(dict(base, **cfg)), progress=False)
    return trainer.fit(), trainer


def step_train_smoke(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "smoke")
    row = res["history"][-1]
    results["smoke_checkpoint"] = res["best_checkpoint"]
    return {
        "train_loss": round(row["train_loss"], 3),
        "val_bleu4": round(row["bleu4"], 4),
        "fast_path": _ran_with(trainer),
    }


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
    results["encoder"] = {
        "images_per_s": sizes["encoder_batch"] / sec,
        "fine_tune_images_per_s": sizes["encoder_batch"] / sec_ft,
    }
    return {"arch": sizes["encoder_arch"], **{k: round(v, 1) for k, v in results["encoder"].items()}}


def _decoder(sizes, device):
    import torch

    from captioning.models import DecoderWithAttention

    cfg = dict(
        vocab_size=sizes["vocab"],
        embed_dim=sizes["dim"],
        decoder_dim=sizes["dim"],
        attention_dim=sizes["dim"],
        dropout=0.5,
    )
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
    from train_speed import course_loss, kit_loss, make_cfg, per_caption, update

    from captioning.internals.optim import adam

    dec = _decoder(sizes, device).train()
    opt = adam(dec.parameters(), 4e-4)
    cfg = make_cfg("attention")
    images = max(1, sizes["batch"] // CPI)
    enc, caps, lens = _batch(sizes, device, images)
    out = {"fast_path": "instructor.fastpath (train_speed.kit_loss calls it directly)"}
    for name, loss_fn, batch in (
        ("kit", kit_loss, (enc, caps, lens)),
        ("course", course_loss, per_caption(enc, caps, lens)),
    ):

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
    return {
        "frozen_cached_min": round(cached, 2),
        "frozen_uncached_min": round(cached + encode, 2),
        "fine_tuned_min": round(cached + fine_tune, 2),
        "target_frozen_min": 2,
        "target_fine_tuned_min": 10,
        "note": "at course sizes" if not a.dry_run else "dry run: tiny sizes, the minutes mean nothing",
    }


def _test(checkpoint, device, max_images=None):
    from captioning.evaluation.evaluate import evaluate

    r = evaluate(checkpoint, "TEST", beam_size=3, device=str(device), progress=False, coco=False, max_images=max_images)
    return round(r["bleu4"], 4), r["n_images"]


def step_fine_tune(a, device, sizes, data, results):
    """fine_tune_encoder=True for one epoch of the tiny data (ResNet-101 at 64 px on the GPU), then test on that
    checkpoint: the fine-tuned encoder's pixels path, uncached, in training and in evaluate."""
    res, trainer = _fit(
        a,
        device,
        sizes,
        data,
        "fine_tune",
        fine_tune_encoder=True,
        encoder=sizes["fine_tune_arch"],
        encoded_image_size=sizes["fine_tune_grid"],
    )
    bleu4, n = _test(res["best_checkpoint"], device)
    return {
        "encoder": sizes["fine_tune_arch"],
        "train_loss": round(res["history"][-1]["train_loss"], 3),
        "test_bleu4": bleu4,
        "test_images": n,
        "fast_path": _ran_with(trainer),
    }


def step_uncached(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "uncached", feature_cache=False)
    last = res["history"][-1]
    return {
        "train_loss": round(last["train_loss"], 3),
        "val_bleu4": round(last["bleu4"], 4),
        "folded_encoder": trainer.folded is not None,
        "fast_path": _ran_with(trainer),
    }


def step_rnn(a, device, sizes, data, results):
    res, trainer = _fit(a, device, sizes, data, "rnn", decoder="rnn")
    bleu4, n = _test(res["best_checkpoint"], device)
    return {
        "train_loss": round(res["history"][-1]["train_loss"], 3),
        "test_bleu4": bleu4,
        "fast_path": _ran_with(trainer),
    }


def step_caption(a, device, sizes, data, results):
    from captioning.evaluation.evaluate import caption_images

    if "smoke_checkpoint" not in results:
        raise RuntimeError("needs train_smoke's checkpoint")
    (res,) = caption_images(results["smoke_checkpoint"], [data[2]], beam_size=3, device=str(device))
    return {"words": len(res["words"]), "attention_maps": None if res["alphas"] is None else len(res["alphas"])}
