"""The training settings: ``DEFAULT_CFG`` (every key a user can set, with its default) and ``make_cfg``.

``cfg`` uses the course's keys (``data_folder``, ``data_name``, ``embed_dim``, ``attention_dim``, ``decoder_dim``,
``dropout``, ``device``, ``epochs``, ``batch_size``, ``workers``, ``encoder_lr``, ``decoder_lr``, ``grad_clip``,
``alpha_c``, ``print_freq``, ``fine_tune_encoder``, ``checkpoint``, ``attention``) plus the kit's own below.
"""
from __future__ import annotations

import torch

from captioning.errors import KitError

DEFAULT_CFG = {
    # data
    "data_folder": "data/shapes_prepared",
    "data_name": "shapes_5_cap_per_img_5_min_word_freq",
    # model
    "embed_dim": 512,
    "attention_dim": 512,
    "decoder_dim": 512,
    "dropout": 0.5,
    "init_state": "mean",  # attention decoder's h0/c0: "mean" feature (course) or "learned" (image only via attention)
    "decoder": None,  # "rnn" | "attention" | "adaptive"; None: from `attention`
    "attention": False,
    "encoder": "resnet101",
    "encoder_weights": "imagenet",  # "imagenet", a local .pth, or None (random, BatchNorm recalibrated)
    "encoded_image_size": 14,
    "recalibrate_images": 128,  # training images used to recalibrate BatchNorm of a random encoder
    # training
    "device": "cuda" if torch.cuda.is_available() else "cpu",
    "seed": 0,
    "epochs": 10,
    "batch_size": 32,  # captions per batch (rounded to whole images: batch_size // captions_per_image images)
    "workers": 2,
    "encoder_lr": 1e-4,
    "decoder_lr": 4e-4,
    "grad_clip": 5.0,
    "alpha_c": 1.0,
    "print_freq": 100,
    "fine_tune_encoder": False,
    "checkpoint": None,  # resume from this checkpoint
    "output_dir": "outputs",
    "feature_cache": "auto",  # "auto": cache encoder features when the encoder is frozen; False: never
    "fast_decoder": "auto",  # "auto": fast training path when it matches the decoder's forward; False: never
    "patience": 20,  # stop after this many epochs without a better validation BLEU-4
    "lr_decay_every": 8,  # multiply learning rates by lr_decay_factor after each such run of epochs without gain
    "lr_decay_factor": 0.8,
    "val_beam_size": 1,  # free-running decoding for validation BLEU (1 = greedy)
    "max_decode_len": 50,
    "max_train_images": None,  # use only the first N training images (quick runs)
    "max_val_images": None,
    "progress": True,
}

DECODER_NAMES = {"rnn": "NoAttention", "attention": "Attention", "adaptive": "AdaptiveAttention"}


# --------------------------------------------------------------------------------------------------------- config
def make_cfg(cfg=None, **overrides):
    """DEFAULT_CFG updated with ``cfg`` and ``overrides``; unknown keys are an error (a typo would be ignored)."""
    out = dict(DEFAULT_CFG)
    for src in (cfg or {}), overrides:
        for k, v in src.items():
            if k not in DEFAULT_CFG and k not in ("vocab_size", "start_epoch", "epochs_since_improvement",
                                                  "best_bleu4"):
                raise KitError(f"unknown cfg key '{k}'; known keys: {', '.join(sorted(DEFAULT_CFG))}")
            out[k] = v
    if out["decoder"] is None:
        out["decoder"] = "attention" if out["attention"] else "rnn"
    if out["decoder"] not in DECODER_NAMES:
        raise KitError(f"cfg['decoder'] = {out['decoder']!r}: choose 'rnn', 'attention' or 'adaptive'")
    out["attention"] = out["decoder"] != "rnn"
    if out["init_state"] not in ("mean", "learned"):
        raise KitError(f"cfg['init_state'] = {out['init_state']!r}: choose 'mean' (h0/c0 from the mean feature, as "
                       f"the course) or 'learned' (the attention decoder's h0/c0 do not depend on the image)")
    out["device"] = str(out["device"])
    if out["device"].startswith("cuda") and not torch.cuda.is_available():
        raise KitError(f"cfg['device'] = {out['device']!r} but PyTorch sees no CUDA GPU here; use 'cpu'")
    return out
