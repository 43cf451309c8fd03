"""Pretrain the small ``shapes_cnn`` encoder on the shapes data's object boxes: the offline stand-in for
ImageNet weights, so that a CPU demo gets an encoder that knows shapes.

Why: ImageNet weights cannot be downloaded here, and a random-weights ResNet-101 tells the shapes apart no better
than the majority guess (``benchmarks/random_encoder.py``), which caps the demo's BLEU-4 near 0.25. Like ImageNet
pretraining, this uses labels other than the captions: every cell of the encoder's S×S grid is classified as the
shape, colour, shape-colour pair and size of the object covering the cell's centre (or "none"), and the whole
image as dark or light (from its mean brightness). The per-cell losses weight every object equally (each of its
cells by 1 / its number of cells): with a plain mean over cells a large square outweighs a small star tenfold, and
the encoder read small shapes and colours poorly (the attention then named a small star a circle). Only the TRAIN split is used; the VAL split gives the
accuracies reported.

Input: a prepared images HDF5 (``images`` (N, 3, H, W) uint8 and ``objects``, written by ``prepare`` when the
Karpathy JSON has boxes). Output: a ``ShapesCNN`` state dict (.pth) for ``Encoder(arch="shapes_cnn",
weights=path)``, written atomically.
"""

from __future__ import annotations

import json
import os
import time

import h5py
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from captioning.data.shapes import COLORS, SHAPES, cells_in_box
from captioning.datasets import normalize, split_paths
from captioning.internals.atomic import atomic_path, write_json
from captioning.internals.backbones import ShapesCNN
from captioning.internals.errors import KitError

SIZES = ("small", "large")
STRIDE = ShapesCNN.STRIDE
# per-cell heads, trained on the cells an object covers; "object" (is there one?) is trained on every cell
HEADS = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}
NONE = -1
N_PAIRS = len(SHAPES) * len(COLORS)


def cell_targets(objects, image_size, grid):
    """Objects with pixel boxes → LongTensor (3, grid, grid): shape, colour and size index per cell, -1 = none.

    A cell belongs to an object when the cell's centre lies inside the object's box (the rule the pointing game
    uses too).
    """
    target = torch.full((len(HEADS), grid, grid), NONE, dtype=torch.long)
    for o in objects:
        inside = torch.from_numpy(cells_in_box(o["bbox"], image_size, grid))
        for h, (key, names) in enumerate(HEADS.items()):
            value = o.get(key)
            if value not in names:
                raise KitError(f"object {o!r:.80}: '{key}' must be one of {', '.join(names)}")
            target[h][inside] = names.index(value)
    return target


def cell_weights(objects, image_size, grid):
    """Objects with pixel boxes → FloatTensor (grid, grid): 1 / (cells the object covers) on each object's cells,
    0 elsewhere. Weighting the per-cell losses with it makes every object count equally, so that a small star
    (one or two cells) is learnt as well as a large square (twenty)."""
    weight = torch.zeros(grid, grid)
    for o in objects:
        inside = torch.from_numpy(cells_in_box(o["bbox"], image_size, grid))
        if inside.any():
            weight[inside] = 1.0 / float(inside.sum())
    return weight


def _load(data_folder, data_name, split, limit=None):
    path = split_paths(data_folder, data_name, split)[0]
    if not os.path.isfile(path):
        raise KitError(
            f"prepared images file '{path}' does not exist: run `python -m captioning prepare …` first "
            f"(check data_folder / data_name)"
        )
    with h5py.File(path, "r") as f:
        if "objects" not in f:
            raise KitError(
                f"'{path}' has no object boxes: the encoder can only be pretrained on data whose "
                f'Karpathy JSON lists "objects" (the built-in shapes data does)'
            )
        n = f["images"].shape[0] if limit is None else min(int(limit), f["images"].shape[0])
        images = torch.from_numpy(f["images"][:n])
        objects = [json.loads(v) for v in f["objects"][:n]]
    size = images.shape[-1]
    if size % STRIDE:
        raise KitError(
            f"'{path}' holds {size} px images: the shapes_cnn encoder needs a multiple of {STRIDE} px; "
            f"prepare with another image_size"
        )
    grid = size // STRIDE
    targets = torch.stack([cell_targets(o, size, grid) for o in objects])  # (N, 3, g, g)
    weights = torch.stack([cell_weights(o, size, grid) for o in objects])  # (N, g, g)
    dark = (images.float().mean(dim=(1, 2, 3)) < 127.5).long()  # (N,) 1 = dark background
    return images, targets, weights, dark


class _Probe(nn.Module):
    """ShapesCNN + 1×1 conv heads per cell + a brightness head on the mean feature (discarded after training)."""

    def __init__(self):
        super().__init__()
        self.net = ShapesCNN()
        self.cells = nn.Conv2d(256, 1 + sum(len(v) for v in HEADS.values()) + N_PAIRS, 1)
        self.tone = nn.Linear(256, 2)

    def forward(self, x):
        fmap = self.net(x)  # (B, 256, g, g)
        return self.cells(fmap), self.tone(fmap.mean(dim=(2, 3)))


def _weighted_ce(logits, target, weight):
    """Cross-entropy over the cells, each weighted (0 where target is NONE); every object counts equally. A batch
    without objects gives 0 (the clamp; no ``if``, which would read a value from the GPU at every batch)."""
    ce = F.cross_entropy(logits, target.clamp(min=0), reduction="none")  # (B, g, g)
    return (ce * weight).sum() / weight.sum().clamp(min=1e-12)


def _pair_target(targets):
    """(B, 3, g, g) targets → (B, g, g) shape-colour pair index per cell, NONE off objects."""
    on_object = targets[:, 0] != NONE
    return torch.where(on_object, targets[:, 0] * len(COLORS) + targets[:, 1], torch.full_like(targets[:, 0], NONE))


def _loss(logits, tone_logits, targets, weights, dark):
    """The summed pretraining loss, computed on the device without reading any value back."""
    on_object = targets[:, 0] != NONE  # (B, g, g)
    weights = weights * on_object  # an object's cells that another object covers are not its own
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], on_object.float())
    start = 1
    for h, (_key, names) in enumerate(HEADS.items()):
        loss = loss + _weighted_ce(logits[:, start : start + len(names)], targets[:, h], weights)
        start += len(names)
    # shape and colour jointly as well: the cells then code which colour goes with which shape, so that their mean
    # (all the decoder without attention sees) still tells "a red circle and a blue square" from the reverse
    loss = loss + _weighted_ce(logits[:, start : start + N_PAIRS], _pair_target(targets), weights)
    return loss + F.cross_entropy(tone_logits, dark)


def _losses_and_hits(logits, tone_logits, targets, weights, dark):
    """Summed loss and, per head, (correct, counted): object cells for shape/colour/size/shape_color, all cells
    for "object", images for "background"."""
    on_object = targets[:, 0] != NONE  # (B, g, g)
    hits = {"object": (int(((logits[:, 0] > 0) == on_object).sum()), int(on_object.numel()))}
    start = 1
    for h, (key, names) in enumerate(HEADS.items()):
        pred = logits[:, start : start + len(names)].argmax(dim=1)
        start += len(names)
        hits[key] = (int((pred == targets[:, h])[on_object].sum()), int(on_object.sum()))
    pair = _pair_target(targets)
    hits["shape_color"] = (
        int((logits[:, start : start + N_PAIRS].argmax(dim=1) == pair)[on_object].sum()),
        int(on_object.sum()),
    )
    hits["background"] = (int((tone_logits.argmax(1) == dark).sum()), int(dark.numel()))
    return _loss(logits, tone_logits, targets, weights, dark), hits


def train_step(model, opt, images, targets, weights, dark, flip, device):
    """One pretraining update on ``device``: images uint8 (B, 3, H, W), targets (B, 3, g, g), weights (B, g, g),
    dark (B,) as ``_load`` gives them (CPU); ``flip`` mirrors images and labels together. Returns the loss (a
    0-dim tensor on the device; the caller reads it, once per batch)."""
    x = normalize(images.to(device, non_blocking=True))
    t, w, d = targets.to(device), weights.to(device), dark.to(device)
    if flip:
        x, t, w = x.flip(-1), t.flip(-1), w.flip(-1)
    logits, tone = model(x)
    loss = _loss(logits, tone, t, w, d)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def pretrain_encoder(
    data_folder, data_name, out, epochs=4, batch_size=32, lr=2e-3, seed=0, progress=True, max_images=None, device="cpu"
):
    """Train ``ShapesCNN`` on the TRAIN split's boxes (on ``device``), save its state dict to ``out``; returns a
    summary dict.

    The summary holds ``path``, ``seconds`` and ``val_accuracy`` (per head: the share of object cells of the
    VAL split whose shape / colour / size is predicted right, and of images whose background tone is).
    """
    from captioning.config import _int, _number, _optional, check_value

    # checked before any work: epochs=0 used to write an untrained encoder as if it were pretrained
    for key, value, rule in (
        ("epochs", epochs, _int(1)),
        ("batch_size", batch_size, _int(1)),
        ("lr", lr, _number(0, lo_open=True)),
        ("seed", seed, _int(0, 2**32 - 1)),
        ("max_images", max_images, _optional(_int(1))),
    ):
        check_value(key, value, rule)
    torch.manual_seed(seed)
    images, targets, weights, dark = _load(data_folder, data_name, "TRAIN", max_images)
    device = torch.device(device)
    model = _Probe().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = images.size(0)
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    bar = tqdm(total=steps, desc="pretraining shapes_cnn", disable=not progress)
    model.train()
    for _epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            flip = bool(torch.rand((), generator=gen) < 0.5)  # CPU-side generator: mirror image and labels
            loss = train_step(model, opt, images[idx], targets[idx], weights[idx], dark[idx], flip, device)
            if not torch.isfinite(loss):  # checked after the step: a diverged model is never saved
                raise KitError(f"pretraining shapes_cnn: the loss became {loss.item()}; lower lr (now {lr})")
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # shown at the next timed redraw
    bar.close()
    seconds = time.time() - t0

    model.eval()
    v_images, v_targets, v_weights, v_dark = _load(data_folder, data_name, "VAL")
    totals = {}
    with torch.no_grad():
        for i in range(0, v_images.size(0), 64):
            logits, tone = model(normalize(v_images[i : i + 64].to(device)))
            _, hits = _losses_and_hits(
                logits, tone, *(t[i : i + 64].to(device) for t in (v_targets, v_weights, v_dark))
            )
            for k, (c, m) in hits.items():
                tc, tm = totals.get(k, (0, 0))
                totals[k] = (tc + c, tm + m)
    val_accuracy = {k: (c / m if m else None) for k, (c, m) in totals.items()}

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({k: v.cpu() for k, v in model.net.state_dict().items()}, tmp)
    return {"path": out, "seconds": seconds, "epochs": epochs, "train_images": n, "val_accuracy": val_accuracy}


ENCODER_FILE = "shapes_cnn.pth"


def ensure_encoder(data_folder, data_name, epochs, seed=0, images=None, progress=True):
    """The recipe's encoder for the prepared shapes data in ``data_folder``: ``data_folder/shapes_cnn.pth``,
    pretrained on the boxes of its first ``images`` TRAIN images (all when None) on first use and found afterwards;
    returns the ``pretrain_encoder`` summary with ``status`` "pretrained" or "found".

    ``shapes_cnn.json`` beside it records the settings and the TRAIN images file it was trained on; when either
    differs (other ``epochs``, ``seed`` or ``images``, regenerated data) the encoder is pretrained again. The stamp
    is written after the weights, so an interrupted pretraining is redone, never used.
    """
    path = os.path.join(data_folder, ENCODER_FILE)
    stamp_path = os.path.splitext(path)[0] + ".json"
    path_images = split_paths(data_folder, data_name, "TRAIN")[0]
    st = os.stat(path_images) if os.path.isfile(path_images) else None
    wanted = {
        "loss": "per-object",
        "epochs": epochs,
        "seed": seed,
        "max_images": images,
        "images": os.path.basename(path_images),
        "images_size": st and st.st_size,
        "images_mtime_ns": st and st.st_mtime_ns,
    }
    if os.path.isfile(path) and os.path.isfile(stamp_path):
        try:
            with open(stamp_path) as fh:
                stamp = json.load(fh)
        except (OSError, ValueError):
            stamp = {}  # unreadable: pretrain again
        if {k: stamp.get(k) for k in wanted} == wanted and "summary" in stamp:
            return dict(stamp["summary"], path=path, status="found")
    print(
        f"pretraining the shapes_cnn encoder on the TRAIN boxes ({epochs} epochs; once, then cached in {path})",
        flush=True,
    )
    summary = pretrain_encoder(
        data_folder, data_name, path, epochs=epochs, seed=seed, progress=progress, max_images=images
    )
    write_json(dict(wanted, summary={k: v for k, v in summary.items() if k != "path"}), stamp_path)
    return dict(summary, status="pretrained")


def register(sub):
    p = sub.add_parser(
        "pretrain-encoder",
        help="pretrain the small shapes_cnn encoder on the shapes boxes",
        description=__doc__.split("\n\n")[0].replace("``", ""),  # --help prints it as plain text
    )
    p.add_argument("--data-folder", required=True, help="folder of the prepared files")
    p.add_argument("--data-name", required=True, help="e.g. shapes_5_cap_per_img_5_min_word_freq")
    p.add_argument("--out", required=True, help="where to write the .pth state dict")
    from captioning.internals.arguments import AT_LEAST_1, FINITE_ABOVE_0, checked

    p.add_argument("--epochs", type=checked(AT_LEAST_1), default=4)
    p.add_argument("--batch-size", type=checked(AT_LEAST_1), default=32)
    p.add_argument("--lr", type=checked(FINITE_ABOVE_0, float), default=2e-3)
    p.add_argument("--seed", type=checked(((lambda v: 0 <= v < 2**32), "an integer >= 0 and <= 4294967295")), default=0)
    p.set_defaults(func=_cli)


def _cli(args):
    res = pretrain_encoder(
        args.data_folder,
        args.data_name,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    acc = ", ".join(f"{k} {v:.3f}" for k, v in res["val_accuracy"].items() if v is not None)
    print(f"wrote {res['path']} ({res['seconds']:.0f} s). VAL accuracy on object cells: {acc}")
    print(f"train with: encoder=shapes_cnn encoder_weights={res['path']} encoded_image_size=<image_size // {STRIDE}>")
    return 0
