"""Training: ``fit(cfg)`` runs epochs of ``train`` and ``validate``, keeps the best checkpoint by validation
BLEU-4 (free-running decoding), decays the learning rate and stops early. The notebooks, the CLI and the demo
all call this.

``cfg`` uses the course's keys (``data_folder``, ``data_name``, ``embed_dim``, ``attention_dim``, ``decoder_dim``,
``dropout``, ``device``, ``epochs``, ``batch_size``, ``workers``, ``encoder_lr``, ``decoder_lr``, ``grad_clip``,
``alpha_c``, ``print_freq``, ``fine_tune_encoder``, ``checkpoint``, ``attention``) plus the ones in
``DEFAULT_CFG`` below; every key can be overridden.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

try:  # instructor edition only: the student edition trains with the student's own forward
    from captioning import fastpath
except ImportError:
    fastpath = None
from captioning.decoding import beam_search
from captioning.datasets import load_word_map  # noqa: F401  (re-exported: evaluate imports it from here)
from captioning.errors import KitError
from captioning.features import ImageCaptions, build_feature_cache, normalize, word_map_path
from captioning.metrics import accuracy, bleu, strip_special
from captioning.models import DecoderWithAttention, DecoderWithRNN, Encoder

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


def word_map_id(word_map):
    """Identity of a word map (sha256 of its canonical JSON), stored in checkpoints."""
    return hashlib.sha256(json.dumps(word_map, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------- models
def build_decoder(cfg, vocab_size, encoder_dim):
    dcfg = dict(cfg, vocab_size=vocab_size)
    if cfg["decoder"] == "rnn":
        return DecoderWithRNN(dcfg, encoder_dim=encoder_dim)
    if cfg["decoder"] == "attention":
        return DecoderWithAttention(dcfg, encoder_dim=encoder_dim)
    from captioning.models import DecoderWithAdaptiveAttention

    return DecoderWithAdaptiveAttention(dcfg, encoder_dim=encoder_dim)


def build_encoder(cfg, state=None, progress=True):
    """The encoder of ``cfg``; random weights are BatchNorm-recalibrated on training images (seeded)."""
    weights = cfg["encoder_weights"]
    torch.manual_seed(cfg["seed"])
    encoder = Encoder(cfg["encoded_image_size"], weights=None if state is not None else weights, arch=cfg["encoder"])
    if state is not None:
        encoder.load_state_dict(state)
    elif weights is None and cfg["recalibrate_images"]:
        data = ImageCaptions(cfg["data_folder"], cfg["data_name"], "TRAIN")
        n = min(cfg["recalibrate_images"], len(data))
        with data._file() as f:
            imgs = f["images"]
            batches = (normalize(torch.from_numpy(imgs[i: min(n, i + 32)])) for i in range(0, n, 32))
            encoder.recalibrate(tqdm(batches, total=math.ceil(n / 32), desc="recalibrating BatchNorm",
                                     disable=not progress))
        data._h5 = None
    encoder.fine_tune(cfg["fine_tune_encoder"])
    return encoder


# --------------------------------------------------------------------------------------------------------- batches
def decoder_scores(decoder, encoder_out, captions, caplens, fast=False):
    """Run a decoder with teacher forcing on a batch grouped by image.

    Args:
        encoder_out: (B, S, S, C) — one row per *image*.
        captions: (B, cpi, T); caplens: (B, cpi).
        fast: use ``fastpath`` (same numbers, image side computed once per image).
    Returns:
        scores: (sum of decode lengths, V) packed predictions; targets: (same,) word indices;
        alphas: (B·cpi, T', P') attention weights or None.
    """
    b, cpi, t = captions.shape
    captions, caplens = captions.reshape(b * cpi, t), caplens.reshape(b * cpi)
    if fast:
        return fastpath.scores(decoder, encoder_out, captions, caplens, group=cpi)
    out = decoder(encoder_out.repeat_interleave(cpi, dim=0), captions, caplens)
    if decoder.has_attention:
        predictions, caps_sorted, decode_lengths, alphas, _ = out
    else:
        (predictions, caps_sorted, decode_lengths, _), alphas = out, None
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(caps_sorted[:, 1:], decode_lengths, batch_first=True).data
    return scores, targets, alphas


def encode_batch(encoder, x, cached, device):
    """A loader batch → encoder output (B, S, S, C) on ``device``.

    x: cached feature maps (B, C, h, w) when ``cached``, else uint8 images (B, 3, H, W).
    """
    x = x.to(device, non_blocking=True)
    if cached:
        return encoder.pool(x.float())
    x = normalize(x)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return encoder(x).float()


def _loss(cfg, scores, targets, alphas):
    loss = F.cross_entropy(scores.float(), targets)
    if alphas is not None and cfg["decoder"] == "attention" and cfg["alpha_c"]:
        # doubly stochastic attention: every region should receive about one unit of attention over the caption
        loss = loss + cfg["alpha_c"] * ((1.0 - alphas.float().sum(dim=1)) ** 2).mean()
    return loss


def adam(params, lr):
    """Adam, fused (one pass over all parameters per step; 4x faster than the per-tensor loop on a CPU) where this
    torch and device have it. The same update rule as ``torch.optim.Adam``'s default, up to float rounding."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def load_optimizer_state(opt, state):
    """``opt.load_state_dict(state)``, keeping ``opt``'s own fused/foreach choice (the checkpoint's would win)."""
    how = [(g.get("fused"), g.get("foreach")) for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, (fused, foreach) in zip(opt.param_groups, how):
        g["fused"], g["foreach"] = fused, foreach
        for p in g["params"] if fused else ():  # the fused kernel keeps its step count on the parameter's device
            st = opt.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


class Runner:
    """Everything one training run holds: models, optimisers, data, and the state to resume."""

    def __init__(self, cfg, progress=True):
        self.cfg = cfg
        self.progress = progress and cfg["progress"]
        self._setup_distributed(cfg)
        self.device = torch.device(cfg["device"])
        self.word_map = load_word_map(cfg["data_folder"], cfg["data_name"])
        self.rev_word_map = {v: k for k, v in self.word_map.items()}
        ckpt = load_checkpoint(cfg["checkpoint"]) if cfg["checkpoint"] else None
        if ckpt is not None:
            check_compatible(ckpt, cfg, self.word_map, cfg["checkpoint"])
        self.encoder = build_encoder(cfg, state=ckpt and ckpt.get("encoder_state"), progress=self.progress)
        self.encoder.fine_tune(cfg["fine_tune_encoder"])
        torch.manual_seed(cfg["seed"] + 1)
        self.decoder = build_decoder(cfg, len(self.word_map), self.encoder.encoder_dim)
        self.encoder.to(self.device)
        self.decoder.to(self.device)
        if self.device.type == "cuda":
            self.encoder.to(memory_format=torch.channels_last)
        self.dec_opt = adam([p for p in self.decoder.parameters() if p.requires_grad], lr=cfg["decoder_lr"])
        self.enc_opt = None
        if cfg["fine_tune_encoder"]:
            self.enc_opt = adam([p for p in self.encoder.parameters() if p.requires_grad], lr=cfg["encoder_lr"])
        self.history, self.start_epoch, self.best_bleu4, self.since_improvement = [], 0, 0.0, 0
        if ckpt is not None:
            self.decoder.load_state_dict(ckpt["decoder_state"])
            load_optimizer_state(self.dec_opt, ckpt["decoder_optimizer"])
            if self.enc_opt is not None and ckpt.get("encoder_optimizer") is not None:
                load_optimizer_state(self.enc_opt, ckpt["encoder_optimizer"])
            self.history = list(ckpt["history"])
            self.start_epoch = ckpt["epoch"] + 1
            self.best_bleu4 = ckpt["best_bleu4"]
            self.since_improvement = ckpt["epochs_since_improvement"]
        self.use_cache = cfg["feature_cache"] == "auto" and not cfg["fine_tune_encoder"]
        self.image_size = ImageCaptions(cfg["data_folder"], cfg["data_name"], "TRAIN").image_shape[-1]
        self.fast = None  # decided on the first batch
        self.kind = DECODER_NAMES[cfg["decoder"]]
        os.makedirs(cfg["output_dir"], exist_ok=True)
        self.ckpt_path = os.path.join(cfg["output_dir"], f"checkpoint_{self.kind}_{cfg['data_name']}.pth.tar")
        self.best_path = os.path.join(cfg["output_dir"], f"BEST_checkpoint_{self.kind}_{cfg['data_name']}.pth.tar")

    # -- data
    def loader(self, split, shuffle, epoch=0, limit=None):
        """Batches of whole images. Under torchrun each rank gets its own shard (rank::world_size)."""
        cfg = self.cfg
        features = None
        if self.use_cache:
            if self.rank == 0:  # one process writes the cache, the others wait and then read it
                features = build_feature_cache(self.encoder, cfg["data_folder"], cfg["data_name"], split,
                                               batch_size=32, device=cfg["device"], progress=self.progress)
            self._barrier()
            if self.rank != 0:
                features = build_feature_cache(self.encoder, cfg["data_folder"], cfg["data_name"], split,
                                               device=cfg["device"], progress=False)
        data = ImageCaptions(cfg["data_folder"], cfg["data_name"], split, features=features, limit=limit)
        gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
        batch_images = max(1, cfg["batch_size"] // data.cpi)
        if self.world > 1:
            order = torch.randperm(len(data), generator=gen).tolist() if shuffle else list(range(len(data)))
            data = torch.utils.data.Subset(data, order[self.rank:: self.world])
            shuffle = False
        return DataLoader(data, batch_size=batch_images, shuffle=shuffle, generator=gen,
                          num_workers=cfg["workers"], pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    # -- torchrun: several processes, one shard of every epoch each, gradients averaged after backward
    def _setup_distributed(self, cfg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            cuda = cfg["device"].startswith("cuda")
            if cuda:
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                cfg["device"] = f"cuda:{local}"
            dist.init_process_group("nccl" if cuda else "gloo")
        if self.rank != 0:
            self.progress = False

    def _barrier(self):
        if self.world > 1:
            dist.barrier()

    def _average_gradients(self, modules):
        if self.world == 1:
            return
        for m in modules:
            for p in m.parameters():
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def _sum(self, *values):
        """Sum numbers over all processes (identity when single-process)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def _gather(self, items):
        if self.world == 1:
            return items
        out = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def encode(self, x):
        return encode_batch(self.encoder, x, self.use_cache, self.device)

    def _decide_fast(self, enc, caps, caplens):
        if self.cfg["fast_decoder"] != "auto" or fastpath is None or not fastpath.supports(self.decoder):
            return False
        ok, why = fastpath.matches(self.decoder, enc[:2], caps[:2], caplens[:2])
        if not ok:
            tqdm.write(f"note: training with the decoder's own forward (the fast path differs: {why})")
        return ok

    # -- one epoch
    def train_epoch(self, epoch):
        cfg = self.cfg
        torch.manual_seed(cfg["seed"] * 1000 + epoch)
        loader = self.loader("TRAIN", shuffle=True, epoch=epoch, limit=cfg["max_train_images"])
        self.encoder.train()
        self.decoder.train()
        tot_loss = tot_top5 = tot_n = tot_caps = 0.0
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch} train", disable=not self.progress, leave=False)
        for i, (x, caps, caplens) in enumerate(bar):
            caps, caplens = caps.to(self.device), caplens.to(self.device)
            with torch.set_grad_enabled(cfg["fine_tune_encoder"]):
                enc = self.encode(x)
            if self.fast is None:
                self.fast = self._decide_fast(enc, caps, caplens)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                scores, targets, alphas = decoder_scores(self.decoder, enc, caps, caplens, fast=self.fast)
            loss = _loss(cfg, scores, targets, alphas)
            if not torch.isfinite(loss):
                raise KitError(f"the training loss became {loss.item()} at epoch {epoch}, batch {i}; training "
                               f"stopped. The last good checkpoint is '{self.ckpt_path}' (if an epoch finished). "
                               f"Lower decoder_lr (now {cfg['decoder_lr']}) or grad_clip (now {cfg['grad_clip']})")
            self.dec_opt.zero_grad(set_to_none=True)
            if self.enc_opt is not None:
                self.enc_opt.zero_grad(set_to_none=True)
            loss.backward()
            self._average_gradients([self.decoder] + ([self.encoder] if self.enc_opt is not None else []))
            if cfg["grad_clip"]:
                for opt in (self.dec_opt, self.enc_opt):
                    if opt is not None:
                        for group in opt.param_groups:
                            torch.nn.utils.clip_grad_value_(group["params"], cfg["grad_clip"])
            self.dec_opt.step()
            if self.enc_opt is not None:
                self.enc_opt.step()
            n = targets.numel()
            top5 = accuracy(scores.detach(), targets, 5)
            tot_loss += loss.item() * n
            tot_top5 += top5 * n
            tot_n += n
            tot_caps += caps.shape[0] * caps.shape[1]
            bar.set_postfix(loss=f"{loss.item():.3f}", top5=f"{top5:.1f}", refresh=False)  # timed redraws only
            if cfg["print_freq"] and (i + 1) % cfg["print_freq"] == 0:
                tqdm.write(f"Epoch: [{epoch}][{i + 1}/{len(loader)}]  Loss {tot_loss / tot_n:.4f}  "
                           f"Top-5 Accuracy {tot_top5 / tot_n:.3f}")
        bar.close()
        seconds = time.time() - t0
        tot_loss, tot_top5, tot_n, tot_caps = self._sum(tot_loss, tot_top5, tot_n, tot_caps)  # all ranks
        return {"train_loss": tot_loss / max(tot_n, 1), "train_top5": tot_top5 / max(tot_n, 1),
                "train_captions": int(tot_caps), "train_seconds": seconds,
                "train_captions_per_s": tot_caps / max(seconds, 1e-9)}

    @torch.no_grad()
    def validate(self, epoch=0, split="VAL", beam_size=None, limit=None):
        """Teacher-forced loss/top-5 and free-running BLEU-1..4 on ``split``; returns a dict."""
        cfg = self.cfg
        beam_size = beam_size or cfg["val_beam_size"]
        loader = self.loader(split, shuffle=False, limit=limit if limit is not None else cfg["max_val_images"])
        self.encoder.eval()
        self.decoder.eval()
        tot_loss = tot_top5 = tot_n = 0.0
        refs, hyps = [], []
        bar = tqdm(loader, desc=f"epoch {epoch} {split.lower()}", disable=not self.progress, leave=False)
        for x, caps, caplens in bar:
            caps, caplens = caps.to(self.device), caplens.to(self.device)
            enc = self.encode(x)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                scores, targets, alphas = decoder_scores(self.decoder, enc, caps, caplens, fast=bool(self.fast))
                loss = _loss(cfg, scores, targets, alphas)
                decoded = beam_search(self.decoder, enc, self.word_map, beam_size, cfg["max_decode_len"])
            n = targets.numel()
            tot_loss += loss.item() * n
            tot_top5 += accuracy(scores.float(), targets, 5) * n
            tot_n += n
            for img_caps, cap in zip(caps.tolist(), decoded):
                refs.append([strip_special(c, self.word_map) for c in img_caps])
                hyps.append(strip_special(cap.tokens, self.word_map))
        bar.close()
        tot_loss, tot_top5, tot_n = self._sum(tot_loss, tot_top5, tot_n)
        refs, hyps = self._gather(refs), self._gather(hyps)  # BLEU over the whole split, on every rank
        out = {"val_loss": tot_loss / max(tot_n, 1), "val_top5": tot_top5 / max(tot_n, 1), "val_images": len(hyps)}
        out.update(bleu(refs, hyps))
        return out

    # -- checkpoints
    def state(self, epoch):
        enc_state = None
        if self.cfg["fine_tune_encoder"] or self.cfg["encoder_weights"] != "imagenet":
            enc_state = {k: v.cpu() for k, v in self.encoder.state_dict().items()}
        cfg = {k: v for k, v in self.cfg.items() if k != "checkpoint"}
        return {
            "format": 1, "kind": self.kind, "decoder_type": self.cfg["decoder"], "epoch": epoch,
            "cfg": cfg, "word_map": self.word_map, "word_map_id": word_map_id(self.word_map),
            "vocab_size": len(self.word_map), "encoder_dim": self.encoder.encoder_dim,
            "image_size": self.image_size,
            "decoder_state": {k: v.cpu() for k, v in self.decoder.state_dict().items()},
            "encoder_state": enc_state,
            "decoder_optimizer": self.dec_opt.state_dict(),
            "encoder_optimizer": self.enc_opt.state_dict() if self.enc_opt is not None else None,
            "history": self.history, "best_bleu4": self.best_bleu4,
            "epochs_since_improvement": self.since_improvement,
        }

    def fit(self):
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg["epochs"]):
            if self.since_improvement >= cfg["patience"]:
                tqdm.write(f"stopping early: no better validation BLEU-4 for {self.since_improvement} epochs")
                break
            if self.since_improvement and self.since_improvement % cfg["lr_decay_every"] == 0:
                for opt in (self.dec_opt, self.enc_opt):
                    if opt is not None:
                        for g in opt.param_groups:
                            g["lr"] *= cfg["lr_decay_factor"]
            row = {"epoch": epoch}
            row.update(self.train_epoch(epoch))
            row.update(self.validate(epoch))
            row["decoder_lr"] = self.dec_opt.param_groups[0]["lr"]
            # the first epoch is always the best so far: a BEST checkpoint exists even if BLEU stays 0
            improved = row["bleu4"] > self.best_bleu4 or not any(h.get("best") for h in self.history)
            self.best_bleu4 = max(row["bleu4"], self.best_bleu4)
            self.since_improvement = 0 if improved else self.since_improvement + 1
            row["best"] = improved
            self.history.append(row)
            if self.rank != 0:  # rank 0 alone reports and writes checkpoints
                continue
            tqdm.write(f"Epoch {epoch}: train LOSS - {row['train_loss']:.3f}, TOP-5 ACCURACY - "
                       f"{row['train_top5']:.3f} | validation (teacher-forced) LOSS - {row['val_loss']:.3f}, "
                       f"TOP-5 ACCURACY - {row['val_top5']:.3f} | validation BLEU-4 (free-running, beam "
                       f"{cfg['val_beam_size']}) - {row['bleu4']:.4f}{'  * best' if improved else ''}")
            state = self.state(epoch)
            save_checkpoint(state, self.ckpt_path)
            if improved:
                save_checkpoint(state, self.best_path)
        self._barrier()
        return {"history": self.history, "checkpoint": self.ckpt_path, "best_checkpoint": self.best_path,
                "best_bleu4": self.best_bleu4}


def fit(cfg=None, progress=True, **overrides):
    """Train a decoder as configured; returns ``{"history", "checkpoint", "best_checkpoint", "best_bleu4"}``."""
    cfg = make_cfg(cfg, **overrides)
    return Runner(cfg, progress=progress).fit()


# ------------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(state, path):
    """Write atomically: a crash mid-save never leaves a truncated checkpoint under the real name."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this kit; never executes code from the file (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise KitError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise KitError(f"'{path}' is not a checkpoint this kit can load safely ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "decoder_state" not in ckpt:
        raise KitError(f"'{path}' is not a checkpoint written by this kit (no 'format'/'decoder_state' entries)")
    return ckpt


def check_compatible(ckpt, cfg, word_map, path):
    if ckpt["decoder_type"] != cfg["decoder"]:
        raise KitError(f"checkpoint '{path}' holds a '{ckpt['decoder_type']}' decoder ({ckpt['kind']}) but cfg asks "
                       f"for '{cfg['decoder']}': set attention/decoder to match, or start without the checkpoint")
    if ckpt["word_map_id"] != word_map_id(word_map):
        raise KitError(f"checkpoint '{path}' was trained with another word map ({ckpt['vocab_size']} words) than "
                       f"{word_map_path(cfg['data_folder'], cfg['data_name'])} ({len(word_map)} words): use the data "
                       f"it was trained on, or start without the checkpoint")
    for key in ("embed_dim", "decoder_dim", "attention_dim", "encoder", "encoded_image_size"):
        if ckpt["cfg"].get(key) != cfg.get(key):
            raise KitError(f"checkpoint '{path}' has {key} = {ckpt['cfg'].get(key)!r} but cfg has {cfg.get(key)!r}")


def models_from_checkpoint(ckpt, device="cpu"):
    """(encoder, decoder, word_map, cfg) in eval mode from a loaded checkpoint."""
    cfg = dict(ckpt["cfg"], checkpoint=None, device=str(device))
    cfg = make_cfg(cfg)
    if ckpt.get("encoder_state") is not None:
        encoder = Encoder(cfg["encoded_image_size"], weights=None, arch=cfg["encoder"])
        encoder.load_state_dict(ckpt["encoder_state"])
    else:
        encoder = Encoder(cfg["encoded_image_size"], weights=cfg["encoder_weights"], arch=cfg["encoder"])
    decoder = build_decoder(cfg, ckpt["vocab_size"], ckpt["encoder_dim"])
    decoder.load_state_dict(ckpt["decoder_state"])
    return encoder.to(device).eval(), decoder.to(device).eval(), ckpt["word_map"], cfg


def history_of(path):
    """The per-epoch metric history stored in a checkpoint."""
    return load_checkpoint(path)["history"]
