"""Training: ``fit(cfg)`` runs epochs of ``train`` and ``validate``, keeps the best checkpoint by validation
BLEU-4 (free-running decoding), decays the learning rate and stops early. The notebooks and the CLI call this.

The settings and their defaults are ``captioning.config.DEFAULT_CFG`` (the course's keys plus the kit's own);
every key can be overridden. Under ``torchrun`` each process trains on its shard (``captioning.internals.distributed``).
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioning.adaptive import DecoderWithAdaptiveAttention, look_cost
from captioning.checkpoints import RunFolder, load_weights, word_map_id
from captioning.config import DECODER_NAMES, make_cfg, make_output_dir
from captioning.data.features import build_feature_cache, recalibrate_once
from captioning.datasets import ImageCaptions, load_word_map, normalize
from captioning.decoding import beam_search
from captioning.encoder import Encoder
from captioning.evaluation.metrics import accuracy, bleu, strip_special
from captioning.evaluation.selection import BestKeeper, epoch_line, newly_best
from captioning.internals import plugins, threads
from captioning.internals.distributed import ProcessGroup
from captioning.internals.errors import KitError
from captioning.internals.locks import data_lock, training_lock
from captioning.internals.optim import adam, load_optimizer_state, resume_learning_rate
from captioning.internals.precision import bf16_training
from captioning.internals.reuse import reuse_linear_outputs
from captioning.models import DecoderWithAttention, DecoderWithRNN

# A training loss this many times above ln(V) (a uniform guess) and the first epoch's mean has diverged: stop.
DIVERGED = 10


def build_decoder(cfg, vocab_size, encoder_dim):
    cls = {"rnn": DecoderWithRNN, "attention": DecoderWithAttention}.get(cfg["decoder"], DecoderWithAdaptiveAttention)
    return cls(dict(cfg, vocab_size=vocab_size), encoder_dim=encoder_dim)


def build_encoder(cfg, state=None, progress=True):
    """The encoder of ``cfg``; random weights are BatchNorm-recalibrated on training images (seeded)."""
    weights = cfg["encoder_weights"]
    torch.manual_seed(cfg["seed"])
    encoder = Encoder(cfg["encoded_image_size"], weights=None if state is not None else weights, arch=cfg["encoder"])
    if state is not None:
        encoder.load_state_dict(state)
    elif weights is None and cfg["recalibrate_images"]:
        recalibrate_once(encoder, cfg["data_folder"], cfg["data_name"], cfg["recalibrate_images"], progress)
    encoder.fine_tune(cfg["fine_tune_encoder"])
    return encoder


def decoder_scores(decoder, encoder_out, captions, caplens, fast=None):
    """Run a decoder with teacher forcing on a batch grouped by image.

    Args:
        encoder_out: (B, S, S, C) — one row per *image*; captions: (B, cpi, T); caplens: (B, cpi).
        fast: a ``fast_path`` plug-in (``captioning.internals.plugins``) to compute the same numbers with, or None.
    Returns:
        scores: (sum of decode lengths, V) packed predictions; targets: (same,) word indices;
        alphas: (B·cpi, T', P') attention weights or None.
    """
    b, cpi, t = captions.shape
    captions, caplens = captions.reshape(b * cpi, t), caplens.reshape(b * cpi)
    if fast is not None:
        return fast.scores(decoder, encoder_out, captions, caplens, group=cpi)
    with reuse_linear_outputs(decoder):  # the decoder's own code, without re-projecting the same rows per word
        out = decoder(encoder_out.repeat_interleave(cpi, dim=0), captions, caplens)
    if decoder.has_attention:
        predictions, caps_sorted, decode_lengths, alphas, _ = out
    else:
        (predictions, caps_sorted, decode_lengths, _), alphas = out, None
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(caps_sorted[:, 1:], decode_lengths, batch_first=True).data
    return scores, targets, alphas


def encode_batch(encoder, x, cached, device):
    """A loader batch → encoder output (B, S, S, C) on ``device``; x: cached feature maps (B, C, h, w) when
    ``cached``, else uint8 images (B, 3, H, W)."""
    x = x.to(device, non_blocking=True)
    if cached:
        return encoder.pool(x.float())
    x = normalize(x)
    if device.type == "cuda" or encoder.folded:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return encoder(x).float()


def _loss(cfg, scores, targets, alphas, decoder):
    loss = F.cross_entropy(scores.float(), targets)
    if alphas is not None and cfg["decoder"] == "attention" and cfg["alpha_c"]:
        # doubly stochastic attention: every region should receive about one unit of attention over the caption
        loss = loss + cfg["alpha_c"] * ((1.0 - alphas.float().sum(dim=1)) ** 2).mean()
    return loss + look_cost(decoder, alphas)


class Trainer:
    """Everything one training run holds: models, optimisers, data, and the state to resume."""

    def __init__(self, cfg, progress=True):
        self.cfg = cfg
        self.progress = progress and cfg["progress"]
        self.group = ProcessGroup(cfg)  # may set cfg["device"] to this process's GPU
        self.world, self.rank = self.group.world, self.group.rank
        if self.rank != 0:
            self.progress = False
        self.device = torch.device(cfg["device"])
        self.word_map = load_word_map(cfg["data_folder"], cfg["data_name"])
        self.rev_word_map = {v: k for k, v in self.word_map.items()}
        self.kind = DECODER_NAMES[cfg["decoder"]]
        make_output_dir(cfg)
        self.run = RunFolder(cfg, self.kind, self.word_map, say=tqdm.write if self.rank == 0 else (lambda text: None))
        self.ckpt_path, self.best_path, self.code_id = self.run.ckpt_path, self.run.best_path, self.run.code_id
        if self.rank == 0:
            self.run.remove_stale()
        ckpt, self.source = self.run.starting_point()  # continuing the run in output_dir, or refused
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
            load_weights(self.decoder, ckpt["decoder_state"], "decoder", self.source)
            load_optimizer_state(self.dec_opt, ckpt["decoder_optimizer"])
            if self.enc_opt is not None and ckpt.get("encoder_optimizer") is not None:
                load_optimizer_state(self.enc_opt, ckpt["encoder_optimizer"])
            for opt, key in ((self.dec_opt, "decoder_lr"), (self.enc_opt, "encoder_lr")):
                resume_learning_rate(opt, key, ckpt["cfg"].get(key), cfg[key])
            self.history = list(ckpt["history"])
            self.start_epoch = ckpt["epoch"] + 1
            self.best_bleu4 = ckpt["best_bleu4"]
            self.since_improvement = ckpt["epochs_since_improvement"]
            if self.rank == 0:
                self.run.check_best(ckpt, self.source, self.best_bleu4)
            if self.start_epoch >= cfg["epochs"]:
                self.run.nothing_left(ckpt, self.best_bleu4)
        self.keeper = BestKeeper(cfg["best_window"], self.best_path, previous=ckpt)
        self.use_cache = cfg["feature_cache"] == "auto" and not cfg["fine_tune_encoder"]
        self.folded = None  # frozen without the cache: the encoder's inference copy, made on the first batch
        self.image_size = ImageCaptions(cfg["data_folder"], cfg["data_name"], "TRAIN").image_shape[-1]
        self.fast = False  # decided on the first batch: the fast-path plug-in or None
        self.bf16 = bf16_training(cfg["precision"], self.device)  # the training steps under autocast (precision.py)

    def loader(self, split, shuffle, epoch=0, limit=None):
        """Batches of whole images. Under torchrun each rank gets its own shard (rank::world_size)."""
        cfg = self.cfg
        features = None
        if self.use_cache:
            # every rank asks; the cache's file lock lets the first build it while the others wait and then read
            # it. Not a barrier of the process group: a COCO cache takes longer than NCCL's timeout.
            features = build_feature_cache(
                self.encoder, cfg["data_folder"], cfg["data_name"], split, device=cfg["device"], progress=self.progress
            )
        data = ImageCaptions(cfg["data_folder"], cfg["data_name"], split, features=features, limit=limit)
        gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
        batch_images = max(1, cfg["batch_size"] // data.cpi)
        if self.world > 1:
            order = torch.randperm(len(data), generator=gen).tolist() if shuffle else list(range(len(data)))
            data = torch.utils.data.Subset(data, order[self.rank :: self.world])
            shuffle = False
        return DataLoader(
            data,
            batch_size=batch_images,
            shuffle=shuffle,
            generator=gen,
            num_workers=cfg["workers"],
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def encode(self, x):
        encoder = self.encoder
        if not (self.use_cache or self.cfg["fine_tune_encoder"]):
            # the folded copy gives the same features faster; the frozen weights never change, so one copy serves
            self.folded = self.folded or self.encoder.for_inference()
            encoder = self.folded
        return encode_batch(encoder, x, self.use_cache, self.device)

    def _decide_fast(self, enc, caps, caplens):
        """The fast-path plug-in when there is one and it reproduces this decoder's scores, else None."""
        fast = plugins.get("fast_path") if self.cfg["fast_decoder"] == "auto" else None
        if fast is None or not fast.supports(self.decoder):
            return None
        ok, why = plugins.fast_path_matches(decoder_scores, fast, self.decoder, enc[:2], caps[:2], caplens[:2])
        if not ok:
            tqdm.write(f"note: training with the decoder's own forward (the fast path differs: {why})")
        return fast if ok else None

    def _opts(self):
        return [opt for opt in (self.dec_opt, self.enc_opt) if opt is not None]

    # -- one epoch
    def train_epoch(self, epoch):
        cfg = self.cfg
        torch.manual_seed(cfg["seed"] * 1000 + epoch)
        loader = self.loader("TRAIN", shuffle=True, epoch=epoch, limit=cfg["max_train_images"])
        self.encoder.train()
        self.decoder.train()
        tot_loss = tot_top5 = tot_n = tot_caps = 0.0
        first = self.history[0]["train_loss"] if self.history else 0.0
        limit = DIVERGED * max(math.log(len(self.word_map)), first)
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch} train", disable=not self.progress, leave=False)
        for i, (x, caps, caplens) in enumerate(bar):
            threads.adapt()  # fewer CPU threads while other processes compete for the cores (threads.py)
            caps, caplens = caps.to(self.device), caplens.to(self.device)
            with torch.set_grad_enabled(cfg["fine_tune_encoder"]):
                enc = self.encode(x)
            if self.fast is False:
                self.fast = self._decide_fast(enc, caps, caplens)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                scores, targets, alphas = decoder_scores(self.decoder, enc, caps, caplens, fast=self.fast)
            loss = _loss(cfg, scores, targets, alphas, self.decoder)
            if not torch.isfinite(loss) or loss.item() > limit:
                raise KitError(
                    f"training diverged: the loss became {loss.item():.4g} at epoch {epoch}, batch {i} "
                    f"(the limit is {limit:.3g}: {DIVERGED}x the larger of ln(vocabulary size) and the "
                    f"first epoch's mean loss); training stopped, this epoch is not saved. The last good "
                    f"checkpoint is '{self.ckpt_path}' (if an epoch finished). Lower decoder_lr (now "
                    f"{cfg['decoder_lr']}) or grad_clip (now {cfg['grad_clip']})"
                )
            for opt in self._opts():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            self.group.average_gradients([self.decoder] + ([self.encoder] if self.enc_opt is not None else []))
            for group in [g for o in self._opts() for g in o.param_groups] if cfg["grad_clip"] else ():
                torch.nn.utils.clip_grad_value_(group["params"], cfg["grad_clip"])
            for opt in self._opts():
                opt.step()
            n = targets.numel()
            top5 = accuracy(scores.detach(), targets, 5)
            tot_loss += loss.item() * n
            tot_top5 += top5 * n
            tot_n += n
            tot_caps += caps.shape[0] * caps.shape[1]
            bar.set_postfix(loss=f"{loss.item():.3f}", top5=f"{top5:.1f}", refresh=False)  # timed redraws only
            if cfg["print_freq"] and (i + 1) % cfg["print_freq"] == 0:
                tqdm.write(
                    f"Epoch: [{epoch}][{i + 1}/{len(loader)}]  Loss {tot_loss / tot_n:.4f}  "
                    f"Top-5 Accuracy {tot_top5 / tot_n:.3f}"
                )
        bar.close()
        seconds = time.time() - t0
        tot_loss, tot_top5, tot_n, tot_caps = self.group.sum(tot_loss, tot_top5, tot_n, tot_caps, device=self.device)
        return {
            "train_loss": tot_loss / max(tot_n, 1),
            "train_top5": tot_top5 / max(tot_n, 1),
            "train_captions": int(tot_caps),
            "train_seconds": seconds,
            "train_captions_per_s": tot_caps / max(seconds, 1e-9),
            "train_bf16": self.bf16,  # precision.py: bf16 autocast, or fp32
        }

    @torch.no_grad()
    def validate(self, epoch=0, split="VAL", beam_size=None, limit=None):
        """Teacher-forced loss/top-5 and free-running BLEU-1..4 on ``split``; returns a dict."""
        cfg = self.cfg
        beam_size, lp = beam_size or cfg["val_beam_size"], cfg["length_penalty"]
        loader = self.loader(split, shuffle=False, limit=limit if limit is not None else cfg["max_val_images"])
        self.encoder.eval()
        self.decoder.eval()
        tot_loss = tot_top5 = tot_n = 0.0
        refs, hyps = [], []
        bar = tqdm(loader, desc=f"epoch {epoch} {split.lower()}", disable=not self.progress, leave=False)
        for x, caps, caplens in bar:
            threads.adapt()
            caps, caplens = caps.to(self.device), caplens.to(self.device)
            enc = self.encode(x)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16 and self.device.type == "cuda"):
                scores, targets, alphas = decoder_scores(self.decoder, enc, caps, caplens, fast=self.fast or None)
                loss = _loss(cfg, scores, targets, alphas, self.decoder)
                decoded = beam_search(
                    self.decoder, enc, self.word_map, beam_size, cfg["max_decode_len"], length_penalty=lp
                )
            n = targets.numel()
            tot_loss += loss.item() * n
            tot_top5 += accuracy(scores.float(), targets, 5) * n
            tot_n += n
            for img_caps, cap in zip(caps.tolist(), decoded):
                refs.append([strip_special(c, self.word_map) for c in img_caps])
                hyps.append(strip_special(cap.tokens, self.word_map))
        bar.close()
        tot_loss, tot_top5, tot_n = self.group.sum(tot_loss, tot_top5, tot_n, device=self.device)
        refs, hyps = self.group.gather(refs), self.group.gather(hyps)  # BLEU over the whole split, on every rank
        self.captions = refs, hyps  # the last validation's, for its bootstrap error (benchmarks/best_epoch_noise.py)
        out = {"val_loss": tot_loss / max(tot_n, 1), "val_top5": tot_top5 / max(tot_n, 1), "val_images": len(hyps)}
        out.update(bleu(refs, hyps))
        return out

    # -- checkpoints
    def state(self, epoch):
        enc_state = None
        if self.cfg["fine_tune_encoder"] or self.cfg["encoder_weights"] != "imagenet":
            enc_state = {k: v.cpu() for k, v in self.encoder.state_dict().items()}
        cfg = {k: v for k, v in self.cfg.items() if k not in ("checkpoint", "overwrite")}
        for key in ("data_folder", "output_dir"):  # readable from any working directory
            cfg[key] = os.path.abspath(cfg[key])
        return {
            "format": 1,
            "kind": self.kind,
            "decoder_type": self.cfg["decoder"],
            "epoch": epoch,
            "code_id": self.code_id,
            "cfg": cfg,
            "word_map": self.word_map,
            "word_map_id": word_map_id(self.word_map),
            "vocab_size": len(self.word_map),
            "encoder_dim": self.encoder.encoder_dim,
            "image_size": self.image_size,
            "decoder_state": {k: v.cpu() for k, v in self.decoder.state_dict().items()},
            "encoder_state": enc_state,
            "decoder_optimizer": self.dec_opt.state_dict(),
            "encoder_optimizer": self.enc_opt.state_dict() if self.enc_opt is not None else None,
            "history": self.history,
            "best_bleu4": self.best_bleu4,
            "epochs_since_improvement": self.since_improvement,
        }

    def _keep_best(self, k, epoch):
        """Flag history row k (None: none) best, print epoch's line (None: after the last), write the checkpoints."""
        k = self.keeper.mark(self.history, k)  # None when k's weights are gone (a continued run)
        self.best_bleu4 = self.best_bleu4 if k is None else self.history[k]["bleu4"]
        if epoch is None and k is None:
            return
        state = self.state(self.history[-1]["epoch"])
        self.keeper.remember(state)  # on every rank: all flag the same epochs
        if self.rank != 0:  # rank 0 alone reports and writes checkpoints
            return
        if epoch is not None:
            tqdm.write(epoch_line(self.history[-1], self.cfg["val_beam_size"], k == len(self.history) - 1))
        self.keeper.save(self.history, k, state, self.ckpt_path, say=tqdm.write)

    def fit(self):
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg["epochs"]):
            if self.since_improvement >= cfg["patience"]:
                tqdm.write(f"stopping early: no better validation BLEU-4 for {self.since_improvement} epochs")
                break
            if self.since_improvement and self.since_improvement % cfg["lr_decay_every"] == 0:
                for g in [g for o in self._opts() for g in o.param_groups]:
                    g["lr"] *= cfg["lr_decay_factor"]
            row = {"epoch": epoch}
            row.update(self.train_epoch(epoch))
            row.update(self.validate(epoch))
            row["decoder_lr"] = self.dec_opt.param_groups[0]["lr"]
            # the schedule (lr decay, early stopping) follows the raw BLEU-4, as in the course; BEST_ the smoothed
            top = max((h["bleu4"] for h in self.history), default=None)
            self.since_improvement = 0 if top is None or row["bleu4"] > top else self.since_improvement + 1
            self.history.append(dict(row, best=False))
            self._keep_best(newly_best(self.history, cfg["best_window"], available=self.keeper.has), epoch)
        if self.history and cfg["best_window"] > 1:  # a run too short for a whole window: its last epoch
            self._keep_best(newly_best(self.history, cfg["best_window"], at_end=True), None)
        self.group.barrier()
        return {
            "history": self.history,
            "checkpoint": self.ckpt_path,
            "best_checkpoint": self.best_path if os.path.isfile(self.best_path) else None,
            "best_bleu4": self.best_bleu4,
        }


def fit(cfg=None, progress=True, **overrides):
    """Train a decoder as configured; returns ``{"history", "checkpoint", "best_checkpoint", "best_bleu4"}``."""
    cfg = make_cfg(cfg, **overrides)
    make_output_dir(cfg)
    with training_lock(cfg), data_lock(cfg["data_folder"], cfg["data_name"]):  # no other train, nor prepare
        return Trainer(cfg, progress=progress).fit()


def models_from_checkpoint(ckpt, device="cpu", path="the checkpoint"):
    """(encoder, decoder, word_map, cfg) in eval mode from a loaded checkpoint (``path`` names it in errors)."""
    cfg = dict(ckpt["cfg"], checkpoint=None, device=str(device))
    cfg = make_cfg(cfg)
    if ckpt.get("encoder_state") is not None:
        with torch.device("meta"):  # shapes only: the weights are the checkpoint's (no random init to overwrite)
            encoder = Encoder(cfg["encoded_image_size"], weights=None, arch=cfg["encoder"])
        load_weights(encoder, ckpt["encoder_state"], "encoder", path, assign=True)
    else:
        encoder = Encoder(cfg["encoded_image_size"], weights=cfg["encoder_weights"], arch=cfg["encoder"])
    decoder = build_decoder(cfg, ckpt["vocab_size"], ckpt["encoder_dim"])
    load_weights(decoder, ckpt["decoder_state"], "decoder", path)
    return encoder.to(device).eval(), decoder.to(device).eval(), ckpt["word_map"], cfg
