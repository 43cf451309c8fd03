"""Part (c) of ``train_speed.py``: a whole training step from prepared files (data loading, encoder, decoder,
loss, update), kit vs the course's per-caption procedure. Run through ``train_speed.py``."""

from __future__ import annotations

import copy
import json
import os
import tempfile

import h5py
import numpy as np
import torch
from _common import Timer, table
from torch.utils.data import DataLoader, Dataset
from train_speed import COCO_CAPTIONS, course_loss, decoder_sizes, kit_loss, make_batches, make_cfg, update

from captioning.datasets import ImageCaptions, normalize
from captioning.internals.optim import adam
from captioning.models import DecoderWithAttention, Encoder


# ------------------------------------------------------------------------------------------------ part (c)
class PerCaption(Dataset):
    """The tutorial's CaptionDataset: one item per caption, the image of caption i is image i // cpi."""

    def __init__(self, images_path, captions, caplens):
        self.images_path, self.captions, self.caplens = images_path, captions, caplens
        self.cpi = captions.size(1)
        self._h5 = None

    def __len__(self):
        return self.captions.size(0) * self.cpi

    def __getitem__(self, i):
        if self._h5 is None:
            self._h5 = h5py.File(self.images_path, "r")
        img, k = i // self.cpi, i % self.cpi
        return torch.from_numpy(self._h5["images"][img]), self.captions[img, k], self.caplens[img, k : k + 1]


def write_prepared(folder, name, n_img, cpi, vocab, seed):
    """Synthetic prepared TRAIN files (uint8 256×256 images, captions, lengths) and an fp16 feature cache.

    Pixel and feature values are random: the cost of reading, encoding and decoding does not depend on them.
    """
    rng = np.random.default_rng(seed)
    images_path = os.path.join(folder, f"TRAIN_IMAGES_{name}.hdf5")
    with h5py.File(images_path, "w") as h:
        h.attrs["captions_per_image"] = cpi
        h.create_dataset(
            "images", data=rng.integers(0, 256, (n_img, 3, 256, 256), dtype=np.uint8), chunks=(1, 3, 256, 256)
        )
    ((_, caps, lens),) = make_batches(1, n_img, cpi, vocab, seed)
    with open(os.path.join(folder, f"TRAIN_CAPTIONS_{name}.json"), "w") as fh:
        json.dump(caps.reshape(n_img * cpi, -1).tolist(), fh)
    with open(os.path.join(folder, f"TRAIN_CAPLENS_{name}.json"), "w") as fh:
        json.dump(lens.reshape(-1).tolist(), fh)
    feat_path = os.path.join(folder, f"TRAIN_FEATURES_{name}.hdf5")
    with h5py.File(feat_path, "w") as h:
        d = h.create_dataset("features", shape=(n_img, 2048, 8, 8), dtype="float16", chunks=(1, 2048, 8, 8))
        for i in range(n_img):
            d[i] = rng.random((2048, 8, 8), dtype=np.float32).astype(np.float16)
    return images_path, feat_path, caps, lens


def full_step(args):
    vocab, cpi = args.vocab, 5
    n_img = max(32, (args.cached_batches + 1) * (args.batch_size // cpi))
    cfg = make_cfg("attention")
    dcfg = decoder_sizes(args)
    print(
        f"(c) full training step, frozen encoder, attention decoder as in (a); {n_img} synthetic 256x256 "
        f"images x {cpi} captions on disk"
    )
    torch.manual_seed(0)
    decoders = {k: DecoderWithAttention(dcfg, encoder_dim=2048) for k in ("kit", "reenc_kit")}
    decoders["course"] = copy.deepcopy(decoders["kit"])
    decoders["reenc_kit"].load_state_dict(decoders["kit"].state_dict())
    opts = {
        k: (torch.optim.Adam(d.parameters(), lr=4e-4) if k == "course" else adam(d.parameters(), lr=4e-4))
        for k, d in decoders.items()
    }
    torch.manual_seed(0)
    encoder = Encoder(14, weights=None)  # random ResNet-101, frozen (fine_tune(False) in the constructor)
    with tempfile.TemporaryDirectory() as tmp:
        name = "bench_5_cap_per_img_5_min_word_freq"
        images_path, feat_path, caps_all, lens_all = write_prepared(tmp, name, n_img, cpi, vocab, seed=2)
        with h5py.File(images_path, "r") as h:  # random weights: recalibrate BatchNorm once (not timed; it
            # is also the ResNet's warm-up, at the same batch size)
            encoder.recalibrate([normalize(torch.from_numpy(h["images"][: args.encode_batch_size]))])
        encoder.eval()
        gen = torch.Generator().manual_seed(0)
        cached = DataLoader(
            ImageCaptions(tmp, name, "TRAIN", features=feat_path),
            batch_size=args.batch_size // cpi,
            shuffle=True,
            generator=gen,
            num_workers=0,
        )
        per_cap = DataLoader(
            PerCaption(images_path, caps_all, lens_all),
            batch_size=args.encode_batch_size,
            shuffle=True,
            generator=gen,
            num_workers=0,
        )

        t_cached, t_kitdec = Timer(), Timer()
        n_cached = 0
        t_enc, t_rk, t_course = Timer(), Timer(), Timer()
        n_enc = 0
        it_cached, it_cap = iter(cached), iter(per_cap)

        def cached_step(timed):
            nonlocal n_cached
            with t_cached if timed else Timer():
                x, caps, lens = next(it_cached)
                enc = encoder.pool(x.float())  # (B, 14, 14, 2048) from the (B, 2048, 8, 8) fp16 maps
                with t_kitdec if timed else Timer():
                    update(decoders["kit"], opts["kit"], kit_loss(decoders["kit"], cfg, enc, caps, lens), cfg)
            if timed:
                n_cached += caps.numel() // caps.size(-1)

        def reencode_step(timed):
            nonlocal n_enc
            with t_enc if timed else Timer():
                img, caps, lens = next(it_cap)
                if timed:
                    with torch.no_grad():
                        enc = encoder(normalize(img))  # (b, 14, 14, 2048), one row per caption
                else:  # warm-up of the two decoder steps only (the ResNet was warmed by recalibrate)
                    enc = torch.rand(img.size(0), 14, 14, 2048)
            # the same kit decoder step, one encoder row per caption (group 1)
            with t_rk if timed else Timer():
                d = decoders["reenc_kit"]
                update(d, opts["reenc_kit"], kit_loss(d, cfg, enc, caps.unsqueeze(1), lens), cfg)
            # the course decoder step on the same batch
            with t_course if timed else Timer():
                d = decoders["course"]
                update(d, opts["course"], course_loss(d, cfg, enc, caps, lens), cfg)
            if timed:
                n_enc += caps.size(0)

        cached_step(False)
        reencode_step(False)
        per_round = -(-args.cached_batches // args.encode_batches)
        for _ in range(args.encode_batches):
            reencode_step(True)
            for _ in range(per_round):
                if t_cached.count < args.cached_batches:
                    cached_step(True)

    cps = {
        "kit": n_cached / t_cached.seconds,
        "reenc_kit": n_enc / (t_enc.seconds + t_rk.seconds),
        "course": n_enc / (t_enc.seconds + t_course.seconds),
    }
    hours = {k: COCO_CAPTIONS / v / 3600 for k, v in cps.items()}
    rows = [
        [
            "kit: cached fp16 (2048,8,8) + pool + kit decoder step",
            f"{args.batch_size // cpi}x{cpi}",
            t_cached.count,
            f"{t_cached.seconds / t_cached.count:.3f}",
            f"{cps['kit']:.1f}",
            "1.00x",
            f"{hours['kit']:.1f}",
        ],
        [
            "re-encode each caption (ResNet-101, 256 px) + same kit decoder step",
            f"{args.encode_batch_size}",
            t_enc.count,
            f"{(t_enc.seconds + t_rk.seconds) / t_enc.count:.3f}",
            f"{cps['reenc_kit']:.1f}",
            f"{cps['kit'] / cps['reenc_kit']:.1f}x",
            f"{hours['reenc_kit']:.1f}",
        ],
        [
            "course: re-encode each caption + course decoder step",
            f"{args.encode_batch_size}",
            t_enc.count,
            f"{(t_enc.seconds + t_course.seconds) / t_enc.count:.3f}",
            f"{cps['course']:.1f}",
            f"{cps['kit'] / cps['course']:.1f}x",
            f"{hours['course']:.1f}",
        ],
    ]
    print(
        table(
            [
                "full training step",
                "batch",
                "timed batches",
                "s/batch",
                "captions/s",
                "kit is faster by",
                "COCO epoch (h)",
            ],
            rows,
        )
    )
    print(
        f"where the time goes, per caption: cached read + pool + kit decoder "
        f"{1000 * t_cached.seconds / n_cached:.0f} ms (decoder step alone {1000 * t_kitdec.seconds / n_cached:.0f} ms);"
        f" re-encoding: read + ResNet-101 {1000 * t_enc.seconds / n_enc:.0f} ms "
        f"({n_enc / t_enc.seconds:.1f} img/s), kit decoder at 1 row per caption {1000 * t_rk.seconds / n_enc:.0f} ms, "
        f"course decoder {1000 * t_course.seconds / n_enc:.0f} ms"
    )
    print(
        f"COCO epoch = {COCO_CAPTIONS:,} captions (113,287 training images x 5) at the measured captions/s "
        f"on this CPU with {torch.get_num_threads()} threads"
    )
    print(flush=True)
