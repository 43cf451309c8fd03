"""The adaptive decoder's "when to look" figure (Lu et al. 2017, Fig. 1 style): a caption's words side by side with
β, the share of each word that came from the visual sentinel (the language model) rather than the image.

A low bar is a word the decoder read off the image; a high bar is one the language model supplied. Returned as a
matplotlib Figure, like ``figures.caption_figure``, whose per-word attention maps it accompanies.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np


def beta_figure(words, betas, visual_words=None, title=None, ax=None, width_per_word=0.55):
    """One bar per generated word, its height β ∈ [0, 1], the word written under it.

    Args:
        words: the caption's words (list of str), without ``<start>``/``<end>``.
        betas: β per word, a sequence, array or tensor of shape (len(words),) — e.g. the last column of an
            adaptive decoder's alphas, (len(words), P + 1)[:, -1].
        visual_words: optional set of words drawn in another colour (e.g. the shapes data's shape and colour
            words), so that the reader sees whether the image was used where it should be.
        title: figure title (default: the caption).
        ax: draw into this Axes instead of a new figure.
        width_per_word: inches of figure width per word (new figure only).

    Returns: the matplotlib Figure. ValueError when the lengths differ or a β is not a number in [0, 1].
    """
    words = [str(w) for w in words]
    try:
        beta = np.asarray(betas.detach().cpu() if hasattr(betas, "detach") else betas, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be numbers, one per word; got {type(betas).__name__}") from None
    if beta.size != len(words):
        raise ValueError(
            f"betas has {beta.size} values but words has {len(words)}: give one β per word (the last "
            f"column of the adaptive decoder's alphas)"
        )
    bad = [i for i, b in enumerate(beta) if not (math.isfinite(b) and 0.0 <= b <= 1.0)]
    if bad:
        raise ValueError(
            f"betas[{bad[0]}] = {beta[bad[0]]!r} (word {words[bad[0]]!r}): β is a share, a number in "
            f"[0, 1]; pass the sentinel column of the adaptive decoder's alphas"
        )
    visual_words = set(visual_words or ())
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, width_per_word * len(words) + 1.2), 2.6))
    else:
        fig = ax.figure
    x = np.arange(len(words))
    colours = ["tab:orange" if w in visual_words else "tab:blue" for w in words]
    ax.bar(x, beta, width=0.7, color=colours)
    for xi, b in zip(x, beta):
        ax.text(xi, b + 0.02, f"{b:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels(
        words, rotation=45 if len(words) > 10 else 0, ha="right" if len(words) > 10 else "center", fontsize=9
    )
    ax.set_ylim(0, 1.12)
    ax.set_xlim(-0.6, max(len(words), 1) - 0.4)
    ax.set_ylabel("β (sentinel)\n1 = not looking", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    if visual_words:
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color="tab:orange", label="visual words"), Patch(color="tab:blue", label="others")],
            fontsize=7,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    ax.set_title(" ".join(words) if title is None else title, fontsize=10)
    fig.tight_layout()
    return fig


def caption_beta_figure(res):
    """:func:`beta_figure` of one ``caption_images`` result of the adaptive decoder, its shape and colour words
    (``metrics.word_class``) drawn in orange: what caption.ipynb shows and the demo saves beside the maps."""
    from captioning.evaluation.metrics import word_class

    visual = {w for w in res["words"] if word_class(w) == "shape/colour"}
    return beta_figure(res["words"], res["alphas"][:, -1], visual)
