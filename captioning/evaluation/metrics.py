"""Scores: top-k accuracy for training logs, BLEU-1..4 (nltk ``corpus_bleu``, all references per image), and the
adaptive decoder's β by word class.

nltk is imported on the first BLEU, not with this module: the kit (training, the fast path, the GPU check's
imports) then loads on a machine without nltk, and only computing BLEU needs it."""

from __future__ import annotations

import sys
import warnings


def _import_corpus_bleu():
    """nltk's ``corpus_bleu``, imported without scipy.stats.

    Importing any part of nltk runs its package ``__init__``, which imports ``scipy.stats`` for collocation
    statistics the kit never uses: 0.7 of the 0.9 s that nltk adds to the start of every ``train`` and ``test``
    (``python -X importtime -m captioning test …``). nltk falls back to a stub when scipy is missing, so scipy.stats
    is hidden for the duration of the import; a later ``import scipy.stats`` in the same process works as usual.
    """
    if "nltk" in sys.modules or "scipy.stats" in sys.modules:
        from nltk.translate.bleu_score import corpus_bleu

        return corpus_bleu
    sys.modules["scipy.stats"] = None  # a None entry makes `import scipy.stats` raise ImportError
    try:
        from nltk.translate.bleu_score import corpus_bleu
    finally:
        del sys.modules["scipy.stats"]
    return corpus_bleu


_corpus_bleu = None


def corpus_bleu(*args, **kwargs):
    """nltk's ``corpus_bleu``, imported on first use."""
    global _corpus_bleu
    if _corpus_bleu is None:
        _corpus_bleu = _import_corpus_bleu()
    return _corpus_bleu(*args, **kwargs)


SPECIAL = ("<start>", "<end>", "<pad>")

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0, 0, 0),
    "bleu2": (0.5, 0.5, 0, 0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def accuracy(scores, targets, k=5):
    """Percentage of rows whose target is among the k highest scores. scores (N, V), targets (N,)."""
    _, ind = scores.topk(k, dim=1)
    correct = ind.eq(targets.view(-1, 1)).any(dim=1)
    return correct.float().mean().item() * 100.0


def strip_special(tokens, word_map):
    """Drop ``<start>``, ``<end>`` and ``<pad>`` indices from a list of word indices."""
    special = {word_map[w] for w in SPECIAL if w in word_map}
    return [t for t in tokens if t not in special]


def bleu(references, hypotheses):
    """Corpus BLEU-1..4.

    Args:
        references: per image, a list of reference captions, each a list of tokens (words or indices) without
            special tokens.
        hypotheses: per image, one generated caption (list of tokens).
    Returns: dict ``bleu1`` … ``bleu4`` in [0, 1].
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        return {k: 0.0 for k in BLEU_WEIGHTS}
    with warnings.catch_warnings():  # nltk warns when a short corpus has no 4-gram match; 0 is the right score
        warnings.simplefilter("ignore", UserWarning)
        return {k: float(corpus_bleu(references, hypotheses, weights=w)) for k, w in BLEU_WEIGHTS.items()}


# The shapes vocabulary's word classes, for β: the words that name what is in the image, and the words no image
# decides. Everything else (sizes, counts, relations, the background's tone, "picture") is "other".
FUNCTION_WORDS = ("a", "an", "the", "of", "to", "with", "and", "is", "are", "there", "on")
CLASSES = ("shape/colour", "function", "other")


def word_class(word):
    """ "shape/colour" (a shape, its plural or a colour of the shapes data), "function" or "other"."""
    from captioning.data.shapes import COLORS, PLURAL, SHAPES

    if word in SHAPES or word in PLURAL.values() or word in COLORS:
        return "shape/colour"
    return "function" if word in FUNCTION_WORDS else "other"


def beta_by_class(captions, alphas):
    """Mean β of generated words by :func:`word_class`.

    Args: captions: per image, its words (list of str); alphas: per image, the (len(words), P + 1) maps of the
        adaptive decoder (the last column is β), or None.
    Returns: {class: {"beta": mean β or None, "n": words}} for each of ``CLASSES``.
    """
    sums = {k: [0.0, 0] for k in CLASSES}
    for words, al in zip(captions, alphas):
        if al is None:
            continue
        for word, beta in zip(words, al[:, -1].tolist()):
            s = sums[word_class(word)]
            s[0], s[1] = s[0] + beta, s[1] + 1
    return {k: {"beta": s / n if n else None, "n": n} for k, (s, n) in sums.items()}
