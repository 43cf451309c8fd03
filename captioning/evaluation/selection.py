"""Which epoch BEST_ keeps: the best epoch of the best stretch of epochs, and how noisy one BLEU-4 value is.

On the shapes recipe's 200 validation images, corpus BLEU-4 moves by a few hundredths from one epoch to the next
(0.55, 0.46, 0.55 on the last three epochs of train2 at seed 0), and keeping the epoch with the highest single value
can keep a lucky one. Training therefore first finds the best *stretch*: the ``best_window`` consecutive epochs
(``cfg["best_window"]``, default 3; 1 is the course's rule) with the highest mean validation BLEU-4; a spike then
counts one third and its neighbours the rest. BEST_ keeps the epoch with the highest single value within that
stretch: a lucky spike between weak epochs does not win, and neither does a dip between good ones (keeping the
centre of the stretch would keep the 0.46 above) (measured: docs/results.md, "The best epoch, robust to
validation noise").

A stretch is judged once its last epoch is validated, so the trainer keeps the states of the last
``best_window - 1`` epochs in memory until then (a continued run has only the checkpoint it continues from).
The first epochs of a run form shorter stretches (epoch 0 and 1, then 0 to 2).
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter

from captioning.checkpoints import save_checkpoint


def smoothed(values, window):
    """Centred moving mean of ``values`` over ``window`` (odd) epochs, the window cut short at both ends.

    Returns a list as long as ``values``; ``window`` 1 returns the values themselves.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the smoothing window must be an odd number >= 1, not {window}")
    half = window // 2
    out = []
    for k in range(len(values)):
        part = values[max(0, k - half) : k + half + 1]
        out.append(sum(part) / len(part))
    return out


def kept_epoch(history):
    """Index of the epoch BEST_ holds by ``history``: the last row flagged ``best`` (None when none is)."""
    flagged = [i for i, h in enumerate(history) if h.get("best")]
    return flagged[-1] if flagged else None


def newly_best(history, window, at_end=False, available=None):
    """Index of the epoch that becomes BEST_ now that ``history`` has its latest row, or None.

    The stretch the latest row completes (centred on the latest minus ``window // 2``) wins when its mean
    validation BLEU-4 is strictly higher than that of every earlier stretch (on a tie the earlier stays); the epoch
    kept is then its highest single value (the earlier on a tie) among the epochs whose weights are ``available``
    (``available(history, index)``; default: all), unless that is already the kept one. ``at_end``: the run is over;
    when no epoch is kept yet (a run shorter than the window's half + 1), the latest is, so that a BEST_ exists
    even when BLEU-4 stays 0.
    """
    kept = kept_epoch(history)
    if at_end:
        return len(history) - 1 if kept is None and history else None
    half = window // 2
    c = len(history) - 1 - half
    if c < 0:
        return None
    s = smoothed([h["bleu4"] for h in history], window)
    if c > 0 and s[c] <= max(s[:c]):
        return None
    stretch = [k for k in range(max(0, c - half), len(history)) if available is None or available(history, k)]
    k = max(stretch, key=lambda i: (history[i]["bleu4"], -i), default=None)
    return None if k == kept else k


class BestKeeper:
    """Holds the states of the last ``window - 1`` epochs until their stretch is judged, and writes BEST_.

    ``previous``: the state the run continues from (a loaded checkpoint), or None for a new run.
    """

    def __init__(self, window, best_path, previous=None):
        self.window, self.best_path = window, best_path
        self.recent = {}  # epoch -> state dict (its own copy of the history)
        if previous is not None and window > 1:
            self.recent[previous["epoch"]] = previous

    def remember(self, state):
        """Keep ``state`` (one epoch's checkpoint dict) while its epoch can still become BEST_."""
        if self.window == 1:
            return
        # a copy that later epochs do not change: on the CPU the state's tensors are the live weights and the
        # optimiser's own buffers (``.cpu()`` of a CPU tensor is the tensor itself)
        state = copy.deepcopy(state)
        self.recent[state["epoch"]] = state
        for epoch in [e for e in self.recent if e < state["epoch"] - (self.window - 1)]:
            del self.recent[epoch]

    def has(self, history, k):
        """Are the weights of epoch ``k`` (an index of ``history``) at hand: the latest epoch's, or kept?"""
        return k == len(history) - 1 or history[k]["epoch"] in self.recent

    def mark(self, history, k):
        """Flag epoch ``k`` (an index of ``history``) best, in ``history`` and in its kept state, and return k;
        None (nothing flagged) when k is None or its weights are gone: neither the latest epoch nor kept."""
        if k is None or not self.has(history, k):
            return None
        history[k]["best"] = True
        state = self.recent.get(history[k]["epoch"])
        if state is not None:
            state["history"][-1]["best"] = True
            state["best_bleu4"] = history[k]["bleu4"]
        return k

    def save(self, history, k, latest, latest_path, say=print):
        """Write ``latest`` (the state of the epoch just trained) to ``latest_path`` and, when ``k`` is not None,
        epoch ``k``'s state (marked) as BEST_.

        The order is what lets a run killed between the two writes be continued (``RunFolder.check_best``): the
        latest epoch's BEST_ after the latest checkpoint (repaired from it), an earlier epoch's BEST_ before it
        (its weights exist only here; killed before the latest is written, the run continues from the epoch
        before, which judges the same stretch again).
        """
        late = k is not None and history[k]["epoch"] != latest["epoch"]
        if late:
            save_checkpoint(self.recent[history[k]["epoch"]], self.best_path)
        save_checkpoint(latest, latest_path)
        if k is not None and not late:
            save_checkpoint(latest, self.best_path)
        if k is not None and self.window > 1:
            say(
                f"  BEST_ now holds epoch {history[k]['epoch']} (validation BLEU-4 {history[k]['bleu4']:.4f}), the "
                f"best of the best {self.window} epochs in a row so far"
            )


def epoch_line(row, beam_size, best):
    """The line training prints after each epoch (``row``: its history row; ``best``: it is now BEST_)."""
    return (
        f"Epoch {row['epoch']}: train LOSS - {row['train_loss']:.3f}, TOP-5 ACCURACY - "
        f"{row['train_top5']:.3f} | validation (teacher-forced) LOSS - {row['val_loss']:.3f}, "
        f"TOP-5 ACCURACY - {row['val_top5']:.3f} | validation BLEU-4 (free-running, beam "
        f"{beam_size}) - {row['bleu4']:.4f}{'  * best' if best else ''}"
    )


def bleu4_stats(references, hypothesis):
    """One image's BLEU-4 sufficient statistics, as nltk's ``corpus_bleu`` counts them: clipped n-gram matches
    and n-gram totals for n = 1..4, the hypothesis length and the closest reference length (the shorter on a tie).
    """
    matches, totals = [], []
    for n in range(1, 5):
        hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        most = Counter()
        for ref in references:
            for gram, c in Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)).items():
                most[gram] = max(most[gram], c)
        matches.append(sum(min(c, most[gram]) for gram, c in hyp.items()))
        totals.append(max(1, len(hypothesis) - n + 1))  # nltk counts at least 1 per sentence
    closest = min((len(r) for r in references), key=lambda r: (abs(r - len(hypothesis)), r))
    return matches, totals, len(hypothesis), closest


def corpus_bleu4(stats):
    """Corpus BLEU-4 from per-image ``bleu4_stats``: 0 when some n has no match (nltk's unsmoothed rule)."""
    m = [sum(s[0][n] for s in stats) for n in range(4)]
    t = [sum(s[1][n] for s in stats) for n in range(4)]
    c, r = sum(s[2] for s in stats), sum(s[3] for s in stats)
    if c == 0 or min(m) == 0:
        return 0.0
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(sum(math.log(mi / ti) for mi, ti in zip(m, t)) / 4)


def bootstrap_bleu4(references, hypotheses, samples=1000, seed=0):
    """(corpus BLEU-4, its bootstrap standard error over images): the images are resampled with replacement
    ``samples`` times. The error says how far the value on these images may lie from the value on many more
    images like them; it is not the noise of a difference between two epochs on the same images (another
    quantity: there most captions stay the same).

    references: per image, its reference captions (token lists); hypotheses: per image, one caption.
    """
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses: need as many, > 0")
    stats = [bleu4_stats(r, h) for r, h in zip(references, hypotheses)]
    rng = random.Random(seed)
    values = [corpus_bleu4(rng.choices(stats, k=len(stats))) for _ in range(samples)]
    mean = sum(values) / samples
    return corpus_bleu4(stats), math.sqrt(sum((v - mean) ** 2 for v in values) / (samples - 1))
