"""Caption generation without teacher forcing: beam search batched over many images, greedy = beam 1.

Built only on a decoder's ``init_hidden_state`` / ``embedding`` / ``one_step``, so it runs any decoder of
``models.py`` — a student's too. The instructor edition decodes the kit's own attention decoders with
``fastpath.BeamStep`` instead of ``one_step`` (the same numbers, checked on a probe at every call; the encoder
projection once per image instead of once per beam and word). Semantics follow the course's reference beam
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

from captioning.errors import KitError

try:  # instructor edition only: the student edition decodes with the student's own one_step
    from captioning import fastpath
except ImportError:
    fastpath = None


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
        fast: in the instructor edition, decode the kit's own attention decoders with a step that projects each
            image once instead of at every word (``fastpath.BeamStep``), after checking that it gives
            ``one_step``'s numbers; False: always ``one_step``. Any other decoder always runs its ``one_step``.
        length_penalty: α ≥ 0. Finished captions are ranked by summed log-probability / (words + 1)**α. 0 (the
            course) favours short captions, since every word lowers the sum; 1 ranks by mean log-probability. The
            search itself (which beams survive) does not depend on α, only the choice among finished captions.

    Returns: list of N :class:`Caption`.
    """
    if not length_penalty >= 0:
        raise KitError(f"length_penalty must be a number >= 0 (0: the course's summed log-probability), "
                       f"got {length_penalty!r}")
    n_img = encoder_out.size(0)
    enc = encoder_out.reshape(n_img, -1, encoder_out.size(-1))  # (N, P, C)
    k, start, end = beam_size, word_map["<start>"], word_map["<end>"]
    dev = enc.device
    vocab = None

    h, c = decoder.init_hidden_state(enc)  # (N, D): same for every beam of an image
    h, c = h.repeat_interleave(k, 0), c.repeat_interleave(k, 0)  # (N·k, D)
    fast_step = fastpath.beam_step(decoder, enc, k) if fast and fastpath is not None else None
    # one_step reads the encoder output of every beam: (N·k, P, C); the fast step keeps one per image
    enc_k = enc.repeat_interleave(k, 0) if decoder.has_attention and fast_step is None else None
    # only beam 0 is live at the start: the k beams of an image are identical, so they must not all be expanded
    scores = torch.full((n_img, k), float("-inf"), device=dev)
    scores[:, 0] = 0
    seqs = torch.full((n_img, k, 1), start, dtype=torch.long, device=dev)
    alphas = None  # (N, k, t, P')
    width = torch.full((n_img,), k, dtype=torch.long, device=dev)  # beams still open per image

    # the best finished caption so far of each image (only the best matters for the answer)
    best_score = torch.full((n_img,), float("-inf"), device=dev)
    best_rank = torch.full((n_img,), float("-inf"), device=dev)  # best_score / length**length_penalty
    best_seq = torch.full((n_img, max_len + 2), end, dtype=torch.long, device=dev)
    best_len = torch.zeros(n_img, dtype=torch.long, device=dev)
    best_alpha = None

    rows = torch.arange(n_img, device=dev)  # original index of each image still decoding
    results = [None] * n_img

    for t in range(max_len):
        logp, alpha, h, c = _step(decoder, seqs[:, :, -1].reshape(-1), enc_k, h, c, fast_step)
        vocab = logp.size(1)
        n = rows.numel()
        cand = (scores.unsqueeze(2) + logp.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_ids = cand.topk(k, dim=1)  # (n, k), best first
        beam_ids, word_ids = top_ids // vocab, top_ids % vocab
        # an image whose beam narrowed to w keeps only its w best candidates
        valid = (torch.arange(k, device=dev).unsqueeze(0) < width.unsqueeze(1)) & torch.isfinite(top_scores)
        is_end = (word_ids == end) & valid

        new_seqs = torch.cat([seqs.gather(1, beam_ids.unsqueeze(2).expand(-1, -1, seqs.size(2))),
                              word_ids.unsqueeze(2)], dim=2)  # (n, k, t + 2)
        if alpha is not None:
            a = alpha.view(n, k, -1)
            a = a.gather(1, beam_ids.unsqueeze(2).expand(-1, -1, a.size(2))).unsqueeze(2)  # (n, k, 1, P')
            new_alphas = a if alphas is None else torch.cat(
                [alphas.gather(1, beam_ids[:, :, None, None].expand(-1, -1, *alphas.shape[2:])), a], dim=2)
        else:
            new_alphas = None

        # retire finished candidates: keep the best finished one per image
        end_scores = torch.where(is_end, top_scores, torch.full_like(top_scores, float("-inf")))
        fin_score, fin_j = end_scores.max(dim=1)  # (n,): all candidates of this step have t + 1 tokens
        fin_rank = fin_score / float(t + 1) ** length_penalty if length_penalty else fin_score
        better = fin_rank > best_rank[rows]
        if better.any():
            idx = rows[better]
            seq = new_seqs[better].gather(1, fin_j[better, None, None].expand(-1, 1, new_seqs.size(2))).squeeze(1)
            best_score[idx] = fin_score[better]
            best_rank[idx] = fin_rank[better]
            best_seq[idx, : seq.size(1)] = seq
            best_len[idx] = seq.size(1)
            if new_alphas is not None:
                if best_alpha is None:
                    best_alpha = torch.zeros(n_img, max_len + 1, new_alphas.size(3), device=dev)
                al = new_alphas[better].gather(
                    1, fin_j[better, None, None, None].expand(-1, 1, *new_alphas.shape[2:])).squeeze(1)
                best_alpha[idx, : al.size(1)] = al.float()

        width = width - is_end.sum(dim=1)
        live = valid & ~is_end
        scores = torch.where(live, top_scores, torch.full_like(top_scores, float("-inf")))
        seqs, alphas = new_seqs, new_alphas
        flat_beams = (torch.arange(n, device=dev).unsqueeze(1) * k + beam_ids).reshape(-1)
        h, c = h[flat_beams], c[flat_beams]

        done = (width <= 0) | ~live.any(dim=1)
        if t == max_len - 1:
            done = torch.ones_like(done)
        if done.any():
            unfinished = done & torch.isinf(best_score[rows])
            for j in unfinished.nonzero().flatten().tolist():  # never reached <end>: best open beam
                i = rows[j].item()
                b = scores[j].argmax().item()
                toks = seqs[j, b, 1:].tolist()
                results[i] = Caption(toks, scores[j, b].item(), False,
                                     None if alphas is None else alphas[j, b].float().cpu())
            keep = ~done
            rows, scores, seqs, width = rows[keep], scores[keep], seqs[keep], width[keep]
            if alphas is not None:
                alphas = alphas[keep]
            keep_k = keep.repeat_interleave(k)
            h, c = h[keep_k], c[keep_k]
            if enc_k is not None:
                enc_k = enc_k[keep_k]
            if fast_step is not None:
                fast_step.keep(keep)
            if rows.numel() == 0:
                break

    for i in range(n_img):
        if isinstance(results[i], Caption):
            continue
        length = best_len[i].item()
        toks = best_seq[i, 1: length - 1].tolist()  # drop <start> and <end>
        al = None if best_alpha is None else best_alpha[i, : length - 2].cpu()
        results[i] = Caption(toks, best_score[i].item(), True, al)
    return results


def decode_words(tokens, rev_word_map):
    """Word indices → list of words, skipping the special tokens."""
    skip = {"<start>", "<end>", "<pad>"}
    return [rev_word_map[t] for t in tokens if rev_word_map[t] not in skip]
