"""The training settings: ``DEFAULT_CFG`` (every key a user can set, with its default) and ``make_cfg``.

``cfg`` uses the course's keys (``data_folder``, ``data_name``, ``embed_dim``, ``attention_dim``, ``decoder_dim``,
``dropout``, ``device``, ``epochs``, ``batch_size``, ``workers``, ``encoder_lr``, ``decoder_lr``, ``grad_clip``,
``alpha_c``, ``print_freq``, ``fine_tune_encoder``, ``checkpoint``, ``attention``) plus the kit's own below.
"""

from __future__ import annotations

import math
import os

import torch

from captioning.adaptive import DESIGNS
from captioning.internals.errors import KitError

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
    "adaptive_design": "paper",  # the adaptive decoder's design, one of adaptive.DESIGNS ("paper": Lu et al. 2017)
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
    "overwrite": False,  # True: train from epoch 0 even where output_dir holds a run (by default continued or refused)
    "output_dir": "outputs",
    "feature_cache": "auto",  # "auto": cache encoder features when the encoder is frozen; False: never
    "fast_decoder": "auto",  # "auto": fast training path when it matches the decoder's forward; False: never
    # the decoder's training steps in bf16 mixed precision (torch.autocast): "auto" on a GPU only, "fp32": never,
    # "bf16": also on a CPU (internals/precision.py: faster where the CPU has native bf16, at a cost measured there)
    "precision": "auto",
    "patience": 20,  # stop after this many epochs without a better validation BLEU-4
    # BEST_ keeps the epoch with the highest validation BLEU-4 averaged over this many epochs centred on it (odd;
    # 1: the single value, as in the course): one lucky epoch is not kept (captioning/evaluation/selection.py)
    "best_window": 3,
    "lr_decay_every": 8,  # multiply learning rates by lr_decay_factor after each such run of epochs without gain
    "lr_decay_factor": 0.8,
    "val_beam_size": 1,  # free-running decoding for validation BLEU (1 = greedy)
    # beam search's ranking of finished captions, log-prob / (words + 1)**length_penalty (0: the course's summed
    # log-prob). Kept in the checkpoint: `test` and `caption` use it unless given --length-penalty
    "length_penalty": 0.0,
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
            if k not in DEFAULT_CFG and k not in (
                "vocab_size",
                "start_epoch",
                "epochs_since_improvement",
                "best_bleu4",
            ):
                raise KitError(f"unknown cfg key '{k}'; known keys: {', '.join(sorted(DEFAULT_CFG))}")
            out[k] = v
    check_cfg(out)
    if out["decoder"] is None:
        out["decoder"] = "attention" if out["attention"] else "rnn"
    out["attention"] = out["decoder"] != "rnn"
    out["device"] = check_device(out["device"])
    return out


def check_device(device, setting="device"):
    """``device`` as a string when PyTorch can use it here, else a KitError naming ``setting`` and the value
    (``device=gpu`` used to end in a traceback from deep inside PyTorch)."""
    ok, allowed = RULES["device"]
    if not ok(device):
        raise KitError(f"setting {setting} = {device!r} is not allowed: {setting} must be {allowed}")
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KitError(f"cfg['device'] = {device!r} but PyTorch sees no CUDA GPU here; use 'cpu'")
    return device


# What each key allows: (test, what to tell the user). Checked before any work starts, so that a typo in a value
# stops the run at once with the key's name instead of as a traceback (or a silent run) minutes later.
def _int(lo, hi=None, why=""):
    """An integer >= lo (and <= hi); ``why`` says what the upper bound protects."""
    text = f"an integer >= {lo}" + ("" if hi is None else f" and <= {hi}{why}")
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)), text


def _number(lo, hi=None, lo_open=False, hi_open=False):
    def ok(v):  # never NaN or infinite: `length_penalty=inf` ranked every caption alike
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))

    text = f"a number {'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and {'<' if hi_open else '<='} {hi}")
    return ok, text


def _optional(rule):
    ok, text = rule
    return (lambda v: v is None or ok(v)), f"None or {text}"


def _one_of(*choices):
    return (lambda v: v in choices and type(v) in {type(c) for c in choices}), "one of " + ", ".join(
        repr(c) for c in choices
    )


def _device_ok(v):
    if not isinstance(v, (str, torch.device)) or str(v) == "":
        return False
    try:
        return torch.device(str(v)).type in ("cpu", "cuda", "mps")
    except (RuntimeError, ValueError):  # e.g. "gpu": not a device PyTorch knows
        return False


_STR = ((lambda v: isinstance(v, str) and v != ""), "a non-empty string")
_BOOL = ((lambda v: isinstance(v, bool)), "True or False")
# becomes part of file names (WORDMAP_{data_name}.json, checkpoints): a path in it would read or write elsewhere
_NAME = (
    (lambda v: isinstance(v, str) and v not in ("", ".", "..") and not any(c in v for c in "/\\\0")),
    "a plain name without / or \\ (it is part of file names), e.g. shapes_5_cap_per_img_5_min_word_freq",
)
# Upper bounds where a typo would take all the memory (embed_dim=100000000, encoded_image_size=1000: killed by the
# kernel at 22 GB, without a message) rather than train: far above what the course or any recipe uses.
_DIM = _int(1, 8192, " (the course uses 512; memory grows with its square)")
RULES = {
    "data_folder": _STR,
    "data_name": _NAME,
    "embed_dim": _DIM,
    "attention_dim": _DIM,
    "decoder_dim": _DIM,
    "dropout": _number(0, 1, hi_open=True),
    "init_state": (
        _one_of("mean", "learned")[0],
        "'mean' (h0/c0 from the mean feature, as in the course) or "
        "'learned' (the attention decoder's h0/c0 do not depend on the image)",
    ),
    "decoder": _one_of(None, "rnn", "attention", "adaptive"),
    "attention": _BOOL,
    "encoder": _STR,
    "adaptive_design": _one_of(*DESIGNS),
    "encoder_weights": _optional(_STR),
    "encoded_image_size": _int(
        1,
        64,
        " (the side of the grid the decoder attends over, 14 in the course; a 256 px "
        "image gives ResNet an 8x8 map, and memory grows with its square)",
    ),
    "recalibrate_images": _int(0),
    "device": (_device_ok, "a device PyTorch knows: 'cpu', 'cuda', 'cuda:1', 'mps'"),
    "seed": _int(0, 2**32 - 1),
    "epochs": _int(1),
    "batch_size": _int(1),
    "workers": _int(0),
    "encoder_lr": _number(0, lo_open=True),
    "decoder_lr": _number(0, lo_open=True),
    "grad_clip": _optional(_number(0)),
    "alpha_c": _number(0),
    "print_freq": _optional(_int(0)),
    "fine_tune_encoder": _BOOL,
    "checkpoint": _optional(_STR),
    "overwrite": _BOOL,
    "output_dir": _STR,
    "feature_cache": _one_of("auto", False),
    "fast_decoder": _one_of("auto", False),
    "precision": _one_of("auto", "fp32", "bf16"),
    "patience": _int(1),
    "best_window": ((lambda v: _int(1, 9)[0](v) and v % 2 == 1), "an odd integer from 1 to 9 (1: no smoothing)"),
    "lr_decay_every": _int(1),
    "lr_decay_factor": _number(0, 1, lo_open=True),
    "val_beam_size": _int(1),
    "length_penalty": _number(0),
    "max_decode_len": _int(2),
    "max_train_images": _optional(_int(1)),
    "max_val_images": _optional(_int(1)),
    "progress": _BOOL,
}


def make_output_dir(cfg):
    """Create ``cfg["output_dir"]`` and make sure files can be written in it; a KitError naming the setting when
    it cannot be created (e.g. under a file) or is read-only (which used to surface as a traceback from the lock
    file)."""
    import tempfile

    try:
        os.makedirs(cfg["output_dir"], exist_ok=True)
    except OSError as e:
        raise KitError(
            f"setting output_dir = {cfg['output_dir']!r}: cannot create that folder ({e.strerror or e}); "
            f"choose another output_dir"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=cfg["output_dir"], prefix=".write-test-"):
            pass
    except OSError as e:
        raise KitError(
            f"setting output_dir = {cfg['output_dir']!r}: cannot write in that folder ({e.strerror or e}); "
            f"choose another output_dir, or make it writable"
        ) from None


def check_value(key, value, rule):
    """``value`` when ``rule`` (a pair of ``RULES``, e.g. ``_int(1)``) allows it, else a KitError naming ``key``,
    the value and what is allowed: for the arguments of ``test``, ``caption`` and ``pretrain-encoder``."""
    ok, allowed = rule
    if not ok(value):
        raise KitError(f"{key} = {value!r} is not allowed: {key} must be {allowed}")
    return value


def check_cfg(cfg):
    """KitError naming the first key whose value is not allowed (its value and what is allowed)."""
    for key, (ok, allowed) in RULES.items():
        if key in cfg and not ok(cfg[key]):
            raise KitError(f"setting {key} = {cfg[key]!r} is not allowed: {key} must be {allowed}")
