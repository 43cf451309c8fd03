"""Figures, returned as matplotlib Figures: shown inline by the notebooks, saved as PNG by the command line."""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
from skimage.transform import resize

from captioning.internals.atomic import atomic_path


def caption_figure(result, max_cols=5, panel=2.6):
    """One panel per word: the image with that word's attention map over it, on one scale for the whole figure.

    ``result`` is one item of ``evaluate.caption_images`` (``pixels`` (S, S, 3) uint8, ``words``, ``alphas``
    (len(words), P) or (len(words), P + 1) for the adaptive decoder, or None). Without attention the figure is the
    image with its caption as the title.

    Every panel uses the same colour scale, from 0 to the largest weight in the figure, with one colour bar that
    names the uniform level 1/P, and each title gives the word's peak weight: a map that is nearly uniform looks
    uniform, not like a focused blob (per-panel min-max scaling made it look like focus). The maps are upsampled
    bilinearly, which never exceeds the grid's own values. For the adaptive decoder each title also gives β, the
    share of the word that came from the visual sentinel (the language model) rather than the image.
    """
    pixels, words, alphas = result["pixels"], result["words"], result["alphas"]
    caption = " ".join(words) if words else "(empty caption)"
    if result.get("warning"):  # an image unlike the training data: said above the caption it explains
        caption = f"WARNING: {result['warning']}\n{caption}"
    if alphas is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.8))
        ax.imshow(pixels)
        ax.set_title(caption, fontsize=10, wrap=True)
        ax.axis("off")
        fig.tight_layout()
        return fig
    n = len(words) + 1  # first panel: the image alone
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    # a long caption (an image unlike the training data) wraps instead of running over the panel titles, and the
    # figure grows by its lines
    heading = "\n".join(textwrap.fill(line, width=int(22 * cols)) for line in caption.split("\n"))
    lines = heading.count("\n") + 1
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 0.9, panel * rows + 0.3 + 0.22 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(pixels)
    axes[0, 0].set_title("input", fontsize=9)
    size = pixels.shape[:2]
    p = alphas.shape[1]
    side = math.isqrt(p)
    has_sentinel = side * side != p
    maps = alphas[:, : side * side].float().numpy().reshape(len(words), side, side)
    top = float(maps.max()) if len(words) else 1.0
    shown = None
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        ax.imshow(pixels)
        shown = ax.imshow(
            resize(maps[i], size, order=1, mode="edge", anti_aliasing=False),
            alpha=0.6,
            cmap="magma",
            vmin=0.0,
            vmax=top,
        )
        title = f"{word}\npeak {maps[i].max():.2f}"
        if has_sentinel:
            title += f"  β={float(alphas[i, -1]):.2f}"
        ax.set_title(title, fontsize=9)
    fig.suptitle(heading, fontsize=11)
    top = 1 - 0.22 * lines / fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1 - 0.7 / fig.get_figwidth(), top))
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01)
        bar.set_label(f"attention weight (uniform: 1/{side * side} = {1 / (side * side):.3f})", fontsize=8)
    return fig


def training_curves(histories, labels=None, window=None):
    """Loss, top-5 accuracy and validation BLEU-4 per epoch for one or more runs, on shared axes.

    histories: list of per-epoch dict lists (the ``history`` stored in checkpoints). The BLEU-4 panel also draws
    the mean over ``window`` epochs centred on each (default: ``cfg["best_window"]``'s default, 3): training keeps
    the best epoch of the stretch where it is highest (``evaluation.selection``); a star marks the kept epoch.
    """
    from captioning.config import DEFAULT_CFG
    from captioning.evaluation.selection import kept_epoch, smoothed

    window = window or DEFAULT_CFG["best_window"]
    if histories and isinstance(histories[0], dict):
        histories = [histories]
    labels = labels or [f"run {i + 1}" for i in range(len(histories))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for hist, label in zip(histories, labels):
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["train_loss"] for r in hist], "-o", label=f"{label} train")
        axes[0].plot(ep, [r["val_loss"] for r in hist], "--o", label=f"{label} val (teacher-forced)")
        axes[1].plot(ep, [r["train_top5"] for r in hist], "-o", label=f"{label} train")
        axes[1].plot(ep, [r["val_top5"] for r in hist], "--o", label=f"{label} val (teacher-forced)")
        bleu4 = [r["bleu4"] for r in hist]
        (line,) = axes[2].plot(ep, bleu4, ":o", alpha=0.5, markersize=3, label=f"{label} val (free-running)")
        whole = len(hist) - window // 2  # the last epochs have no whole window: training does not judge them
        if window > 1 and whole > 0:
            mean = smoothed(bleu4, window)[:whole]
            axes[2].plot(ep[:whole], mean, "-", color=line.get_color(), label=f"{label} mean over {window} epochs")
        k = kept_epoch(hist)
        if k is not None:
            axes[2].plot([ep[k]], [bleu4[k]], "*", color=line.get_color(), markersize=13, label=f"{label} kept (BEST_)")
    for ax, title in zip(axes, ("loss", "top-5 accuracy (%)", "BLEU-4")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path):
    """Save a figure as PNG (atomically) and free it. The PNG is read back whole before it is renamed into place:
    a write lost on the way (a full disk) raises OSError and leaves whatever was at ``path`` as it was."""
    from PIL import Image

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
            try:
                with Image.open(tmp) as im:
                    im.load()  # decodes every row: a truncated or damaged PNG raises here
            except (SyntaxError, ValueError) as e:  # how Pillow reports some broken PNG chunks
                raise OSError(f"the PNG read back is damaged ({e})") from None
    finally:
        plt.close(fig)
    return path
