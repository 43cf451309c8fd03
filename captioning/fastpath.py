"""A faster teacher-forced pass that computes what ``DecoderWithRNN.forward`` / ``DecoderWithAttention.forward``
compute, with the same layers (hence the same weights and gradients), reorganised:

* the image side is computed once per *image* — batches hold all captions of each image (``group``);
* the attention's projection of the encoder output, ``encoder_att(encoder_out)``, is the same at every time step:
  it is computed once, not once per word;
* the LSTM's input projection of the word embeddings is one matrix product for all steps;
* the vocabulary projection ``fc`` runs once over all (caption, step) pairs that are not padding.

The solver uses it only after ``matches`` checked, on the first batch, that it reproduces the decoder's own
``forward`` — a student's decoder that computes something else trains with its own code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from captioning.models import DecoderWithAttention, DecoderWithRNN


def supports(decoder):
    return type(decoder) in (DecoderWithRNN, DecoderWithAttention)


def _lstm_step(gates, c):
    i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTMCell's gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def scores(decoder, encoder_out, captions, caplens, group=1):
    """Same contract as ``solver.decoder_scores`` after grouping.

    Args:
        encoder_out: (B, S, S, C) or (B, P, C), one row per image.
        captions: (B·group, T), the captions of image b at rows b·group … b·group + group − 1.
        caplens: (B·group,).
    Returns: scores (L, V) packed, targets (L,), alphas (B·group, T', P) in length-sorted order or None.
    """
    n_img = encoder_out.size(0)
    enc = encoder_out.reshape(n_img, -1, decoder.encoder_dim)  # (B, P, C)
    lengths, order = caplens.reshape(-1).sort(descending=True)
    img = order // group  # image of each sorted caption
    captions = captions[order]
    decode_lengths = (lengths - 1).tolist()
    steps = max(decode_lengths)
    # how many captions are still running at each step (captions are sorted longest first)
    running = [sum(1 for d in decode_lengths if d > t) for t in range(steps)]

    cell = decoder.decode_step
    w_ih, w_hh = cell.weight_ih, cell.weight_hh
    bias = cell.bias_ih + cell.bias_hh
    emb = decoder.embedding(captions)  # (N, T, E)
    e_dim = emb.size(2)
    gi_words = F.linear(emb[:, :steps], w_ih[:, :e_dim], bias)  # (N, steps, 4D): all steps at once

    alphas = None
    if decoder.has_attention:
        mean = enc.mean(dim=1)
        h, c = decoder.init_h(mean)[img], decoder.init_c(mean)[img]  # (N, D)
        att1 = decoder.attention.encoder_att(enc)[img]  # (N, P, A), once per image
        enc_c = enc[img]  # (N, P, C)
        w_iz = w_ih[:, e_dim:]
        alphas = enc.new_zeros(captions.size(0), steps, enc.size(1))
        hs = []
        for t, n in enumerate(running):
            hh, cc = h[:n], c[:n]
            att2 = decoder.attention.decoder_att(hh).unsqueeze(1)  # (n, 1, A)
            e = decoder.attention.att(F.relu(att1[:n] + att2)).squeeze(2)  # (n, P)
            alpha = F.softmax(e, dim=1)
            z = torch.bmm(alpha.unsqueeze(1), enc_c[:n]).squeeze(1)  # (n, C)
            z = decoder.sigmoid(decoder.f_beta(hh)) * z
            h, c = _lstm_step(gi_words[:n, t] + F.linear(z, w_iz) + F.linear(hh, w_hh), cc)
            hs.append(h)
            alphas[:n, t] = alpha
    else:
        # BatchNorm over one row per caption, as forward() sees it (its batch statistics ignore row order)
        x0 = decoder.bn(decoder.init(enc.mean(dim=1))[img])
        zeros = x0.new_zeros(x0.size(0), decoder.decoder_dim)
        h, c = cell(x0, (zeros, zeros))
        hs = []
        for t, n in enumerate(running):
            h, c = _lstm_step(gi_words[:n, t] + F.linear(h[:n], w_hh), c[:n])
            hs.append(h)
    scores_ = decoder.fc(decoder.dropout(torch.cat(hs, dim=0)))  # (L, V): packed order, step by step
    targets = pack_padded_sequence(captions[:, 1:], decode_lengths, batch_first=True).data
    return scores_, targets, alphas


@torch.no_grad()
def matches(decoder, encoder_out, captions, caplens, rtol=1e-4, atol=1e-5):
    """Does the fast path give the decoder's own ``forward`` scores on this batch (eval mode)?

    Args: encoder_out (B, S, S, C); captions (B, cpi, T); caplens (B, cpi).
    Returns: (ok, reason).
    """
    from captioning.solver import decoder_scores

    was = decoder.training
    decoder.eval()
    try:
        ref, ref_t, ref_a = decoder_scores(decoder, encoder_out.float(), captions, caplens, fast=False)
        got, got_t, got_a = decoder_scores(decoder, encoder_out.float(), captions, caplens, fast=True)
    except Exception as e:  # a decoder of another shape: not ours to speed up
        return False, f"{type(e).__name__}: {e}"
    finally:
        decoder.train(was)
    if ref.shape != got.shape or not torch.equal(ref_t, got_t):
        return False, "different output shapes"
    if not torch.allclose(ref, got, rtol=rtol, atol=atol):
        return False, f"scores differ by up to {(ref - got).abs().max().item():.3g}"
    if (ref_a is None) != (got_a is None) or (ref_a is not None and not torch.allclose(
            ref_a.sum(dim=1), got_a.sum(dim=1), rtol=rtol, atol=atol)):
        return False, "attention weights differ"
    return True, ""
