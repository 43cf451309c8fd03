"""Caption generation without teacher forcing: beam search batched over many images, greedy = beam 1.

Built only on a decoder's ``init_hidden_state`` / ``embedding`` / ``one_step``, so it runs any decoder of
``models.py`` — a student's too. With the ``fast_path`` plug-in installed (``captioning.internals.plugins``; none in the
student edition) the kit's own attention decoders run its step instead of ``one_step`` (the same numbers, checked on a
probe at every call; the encoder projection once per image instead of once per beam and word). Semantics follow the course's reference beam
search: at each step the k best continuations of an image are kept among all (beam × word) candidates; a candidate
that is ``<end>`` becomes a finished caption and the image's beam narrows by one; the answer is the finished
caption with the highest summed log-probability (optionally divided by length**``length_penalty``, which the
course does not do). Two fixes: if nothing reaches ``<end>`` within ``max_len`` steps the best unfinished beam is
returned (the reference crashed), and all images are decoded together, retiring finished ones from the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from captioning.internals import plugins
from captioning.internals.errors import KitError
from captioning.internals.reuse import reuse_linear_outputs

ONE_STEP_BYTES = 64 * 2**20  # the most encoder output, copied per beam, that one_step reads at once


@dataclass
class Caption:
    """One decoded caption.

    tokens: word indices without ``<start>``/``<end>``; score: summed log-probability (``<end>`` included when
    finished); finished: reached ``<end>``; alphas: (len(tokens), P) attention of each word, or None for a decoder
    without attention (the adaptive decoder gives P + 1 columns, the last being the sentinel share β).
    """

    tokens: list
    score: float
    finished: bool
    alphas: torch.Tensor | None = None


def _step(decoder, words, encoder_out, h, c, fast_step=None):
    """(N,) previous words → log-probabilities (N, V), alpha (N, P') or None, h, c."""
    emb = decoder.embedding(words)
    if fast_step is not None:
        preds, alpha, h, c = fast_step(emb, h, c)
    elif decoder.has_attention:
        preds, alpha, h, c = decoder.one_step(emb, encoder_out, h, c)
    else:
        (preds, h, c), alpha = decoder.one_step(emb, h, c), None
    return F.log_softmax(preds.float(), dim=1), alpha, h, c


@torch.no_grad()
def beam_search(decoder, encoder_out, word_map, beam_size=5, max_len=50, fast=True, length_penalty=0.0):
    """Decode N images at once.

    Args:
        decoder: a decoder of ``models.py`` (put it in eval mode first).
        encoder_out: (N, S, S, C) or (N, P, C) encoder features of N images.
        word_map: dict word → index with ``<start>`` and ``<end>``.
        beam_size: k; 1 is greedy decoding.
        max_len: most decoding steps per caption (a finished caption has at most max_len - 1 words).
        fast: with the ``fast_path`` plug-in installed, decode the kit's own attention decoders with its step (each
            image projected once instead of at every word), after checking that it gives ``one_step``'s numbers;
            False: always ``one_step``. Any other decoder always runs its ``one_step``.
        length_penalty: α ≥ 0. Finished captions are ranked by summed log-probability / (words + 1)**α. 0 (the
            course) favours short captions, since every word lowers the sum; 1 ranks by mean log-probability. The
            search itself (which beams survive) does not depend on α, only the choice among finished captions.

    Returns: list of N :class:`Caption`.
    """
    if not 0 <= length_penalty < float("inf"):  # inf divided every score to 0 or nan: any caption could win
        raise KitError(
            f"length_penalty must be a number >= 0 (0: the course's summed log-probability), got {length_penalty!r}"
        )
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise KitError(f"beam_size = {beam_size!r} is not allowed: beam_size must be an integer >= 1 (1: greedy)")
    n_img = encoder_out.size(0)
    enc = encoder_out.reshape(n_img, -1, encoder_out.size(-1))  # (N, P, C)
    k = beam_size
    fast = plugins.get("fast_path") if fast else None
    fast_step = fast.beam_step(decoder, enc, k) if fast is not None else None
    if decoder.has_attention and fast_step is None:
        # one_step reads the encoder output of every beam, (N·k, P, C), and makes temporaries as large: decode
        # in chunks of images whose copy fits ONE_STEP_BYTES (8 images at course sizes), not all N at once
        chunk = max(1, ONE_STEP_BYTES // (k * enc[0].numel() * enc.element_size()))
        if chunk < n_img:
            return [
                cap
                for lo in range(0, n_img, chunk)
                for cap in beam_search(
                    decoder, enc[lo : lo + chunk], word_map, beam_size, max_len, False, length_penalty
                )
            ]
    search = _Search(n_img, k, word_map["<start>"], word_map["<end>"], max_len, length_penalty, enc.device)
    h, c = decoder.init_hidden_state(enc)  # (N, D): same for every beam of an image
    h, c = h.repeat_interleave(k, 0), c.repeat_interleave(k, 0)  # (N·k, D)
    # the fast step keeps one encoder output per image
    enc_k = enc.repeat_interleave(k, 0) if decoder.has_attention and fast_step is None else None
    with reuse_linear_outputs(decoder):  # one_step re-projects enc_k at every word: once, until rows drop
        for t in range(max_len):
            logp, alpha, h, c = _step(decoder, search.seqs[:, :, -1].reshape(-1), enc_k, h, c, fast_step)
            flat_beams = search.advance(t, logp, alpha)
            h, c = h[flat_beams], c[flat_beams]
            keep = search.retire_done(last=t == max_len - 1)
            if keep is not None:  # some images are done: drop their rows everywhere
                keep_k = keep.repeat_interleave(k)
                h, c = h[keep_k], c[keep_k]
                if enc_k is not None:
                    enc_k = enc_k[keep_k]
                if fast_step is not None:
                    fast_step.keep(keep)
                if search.rows.numel() == 0:
                    break
    return search.results()


class _Search:
    """The state of a beam search over N images, k beams each: the open beams of the images still decoding
    (``rows``: their original indices; ``scores`` (n, k), ``seqs`` (n, k, t + 1), ``alphas`` (n, k, t, P') or None,
    ``width`` (n,) beams still open) and the best finished caption so far of every image."""

    def __init__(self, n_img, k, start, end, max_len, length_penalty, dev):
        self.k, self.end, self.max_len, self.length_penalty, self.dev = k, end, max_len, length_penalty, dev
        # only beam 0 is live at the start: the k beams of an image are identical, so they must not all be expanded
        self.scores = torch.full((n_img, k), float("-inf"), device=dev)
        self.scores[:, 0] = 0
        self.seqs = torch.full((n_img, k, 1), start, dtype=torch.long, device=dev)
        self.alphas = None
        self.width = torch.full((n_img,), k, dtype=torch.long, device=dev)
        self.rows = torch.arange(n_img, device=dev)
        self.best_score = torch.full((n_img,), float("-inf"), device=dev)
        self.best_rank = torch.full((n_img,), float("-inf"), device=dev)  # best_score / length**length_penalty
        self.best_seq = torch.full((n_img, max_len + 2), end, dtype=torch.long, device=dev)
        self.best_len = torch.zeros(n_img, dtype=torch.long, device=dev)
        self.best_alpha = None
        self.results_ = [None] * n_img

    def advance(self, t, logp, alpha):
        """One step: logp (n·k, V) and alpha (n·k, P') or None of the open beams. Keeps the k best continuations
        of each image, retires those that are ``<end>``; returns the flat index (n·k,) of each new beam's parent."""
        k, dev, n = self.k, self.dev, self.rows.numel()
        vocab = logp.size(1)
        cand = (self.scores.unsqueeze(2) + logp.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_ids = cand.topk(k, dim=1)  # (n, k), best first
        beam_ids, word_ids = top_ids // vocab, top_ids % vocab
        # an image whose beam narrowed to w keeps only its w best candidates
        valid = (torch.arange(k, device=dev).unsqueeze(0) < self.width.unsqueeze(1)) & torch.isfinite(top_scores)
        is_end = (word_ids == self.end) & valid
        new_seqs = torch.cat(
            [self.seqs.gather(1, beam_ids.unsqueeze(2).expand(-1, -1, self.seqs.size(2))), word_ids.unsqueeze(2)], dim=2
        )  # (n, k, t + 2)
        new_alphas = None
        if alpha is not None:
            a = alpha.view(n, k, -1)
            a = a.gather(1, beam_ids.unsqueeze(2).expand(-1, -1, a.size(2))).unsqueeze(2)  # (n, k, 1, P')
            new_alphas = (
                a
                if self.alphas is None
                else torch.cat(
                    [self.alphas.gather(1, beam_ids[:, :, None, None].expand(-1, -1, *self.alphas.shape[2:])), a], dim=2
                )
            )
        self._keep_best_finished(t, top_scores, is_end, new_seqs, new_alphas)
        self.width = self.width - is_end.sum(dim=1)
        self.live = valid & ~is_end
        self.scores = torch.where(self.live, top_scores, torch.full_like(top_scores, float("-inf")))
        self.seqs, self.alphas = new_seqs, new_alphas
        return (torch.arange(n, device=dev).unsqueeze(1) * k + beam_ids).reshape(-1)

    def _keep_best_finished(self, t, top_scores, is_end, new_seqs, new_alphas):
        rows = self.rows
        end_scores = torch.where(is_end, top_scores, torch.full_like(top_scores, float("-inf")))
        fin_score, fin_j = end_scores.max(dim=1)  # (n,): all candidates of this step have t + 1 tokens
        fin_rank = fin_score / float(t + 1) ** self.length_penalty if self.length_penalty else fin_score
        better = fin_rank > self.best_rank[rows]
        if not better.any():
            return
        idx = rows[better]
        seq = new_seqs[better].gather(1, fin_j[better, None, None].expand(-1, 1, new_seqs.size(2))).squeeze(1)
        self.best_score[idx] = fin_score[better]
        self.best_rank[idx] = fin_rank[better]
        self.best_seq[idx, : seq.size(1)] = seq
        self.best_len[idx] = seq.size(1)
        if new_alphas is not None:
            if self.best_alpha is None:
                self.best_alpha = torch.zeros(
                    self.best_score.numel(), self.max_len + 1, new_alphas.size(3), device=self.dev
                )
            al = (
                new_alphas[better]
                .gather(1, fin_j[better, None, None, None].expand(-1, 1, *new_alphas.shape[2:]))
                .squeeze(1)
            )
            self.best_alpha[idx, : al.size(1)] = al.float()

    def retire_done(self, last):
        """Drop the images that are done (no open beam, or ``last`` step); returns the keep mask (n,) or None."""
        done = (self.width <= 0) | ~self.live.any(dim=1)
        if last:
            done = torch.ones_like(done)
        if not done.any():
            return None
        unfinished = done & torch.isinf(self.best_score[self.rows])
        for j in unfinished.nonzero().flatten().tolist():  # never reached <end>: best open beam
            b = self.scores[j].argmax().item()
            self.results_[self.rows[j].item()] = Caption(
                self.seqs[j, b, 1:].tolist(),
                self.scores[j, b].item(),
                False,
                None if self.alphas is None else self.alphas[j, b].float().cpu(),
            )
        keep = ~done
        self.rows, self.scores, self.seqs, self.width = (
            self.rows[keep],
            self.scores[keep],
            self.seqs[keep],
            self.width[keep],
        )
        if self.alphas is not None:
            self.alphas = self.alphas[keep]
        return keep

    def results(self):
        """One :class:`Caption` per image: its best finished caption, or its best open beam if none finished."""
        for i, res in enumerate(self.results_):
            if res is None:
                length = self.best_len[i].item()
                toks = self.best_seq[i, 1 : length - 1].tolist()  # drop <start> and <end>
                al = None if self.best_alpha is None else self.best_alpha[i, : length - 2].cpu()
                self.results_[i] = Caption(toks, self.best_score[i].item(), True, al)
        return self.results_


def decode_words(tokens, rev_word_map):
    """Word indices → list of words, skipping the special tokens."""
    skip = {"<start>", "<end>", "<pad>"}
    return [rev_word_map[t] for t in tokens if rev_word_map[t] not in skip]


def words_and_alphas(tokens, alphas, rev_word_map):
    """(words, alphas) of a caption for display: the words of :func:`decode_words` and, when ``alphas``
    ((len(tokens), P') or None) is given, only the rows of the kept words, so that word k keeps the map of the
    step that produced it even if a special token stood before it."""
    skip = {"<start>", "<end>", "<pad>"}
    keep = [i for i, t in enumerate(tokens) if rev_word_map[t] not in skip]
    words = [rev_word_map[tokens[i]] for i in keep]
    return words, None if alphas is None else alphas[keep]
