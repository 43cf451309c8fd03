"""``DecoderWithAdaptiveAttention`` — Knowing When to Look (Lu et al. 2017): a visual sentinel lets the model decide,
per word, how much to look at the image at all. Reference code beside the course's two decoders (not a TODO);
train it with ``decoder="adaptive"``. Shapes as in ``models.py``.

cfg ``adaptive_design`` picks the design (``DESIGNS``); "paper" is Lu et al.'s and the default, so checkpoints
written before the key existed load as they were trained. Why the others exist (docs/results.md, "Adaptive
attention that knows when to look"): in the paper's design the LSTM reads the global feature with every word, so
its memory — and the sentinel made from it — already knows what the mean feature says about the image. On the
shapes data that is everything a caption names, and the model learns never to look (β = 1 on every shape word).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DESIGNS = {
    "paper": "Lu et al. 2017: h0/c0 from the mean feature, the LSTM reads [word ; v_g], sentinel from its memory",
    "sentinel_bias": "paper, plus a learned bias on the sentinel's score that starts at SENTINEL_BIAS (β starts ~0)",
    "global_dropout": "paper, but in training the image's mean feature (v_g, h0/c0) is dropped for half the captions",
    "word_sentinel": "paper, but the sentinel is made from the previous word only: it cannot carry the image",
    "look": "the LSTM reads [word ; what it attended at the previous word], not v_g; h0/c0 learned: the image "
    "reaches the language model only through attention, so the sentinel knows only what was looked at",
    "look_word": "look, with the sentinel made from the previous word only",
    "look_anneal": "look, with the sentinel's score held down at the start of training (β annealed from 0 over "
    "ANNEAL_STEPS batches), so that the regions learn before the sentinel can take every word",
}
SENTINEL_BIAS = -4.0  # sentinel_bias: with P = 64 regions of equal score the sentinel starts at β ≈ 3e-4, not 1/65
GLOBAL_DROP = 0.5
# look_anneal: the sentinel's score starts ANNEAL_START lower (β ≈ 0) and rises linearly to no offset over this many
# training batches (about one epoch of the shapes recipe). Without it `look` measured β = 1.00 on every word after 2
# epochs: the sentinel, the language model, lowers the loss first, and a softmax column near 0 gets no gradient.
ANNEAL_START, ANNEAL_STEPS = -10.0, 150  # global_dropout: share of training captions decoded without the mean feature


def check_design(design):
    if design not in DESIGNS:
        raise ValueError(f"adaptive_design {design!r}: choose one of {', '.join(map(repr, DESIGNS))}")
    return design


class DecoderWithAdaptiveAttention(nn.Module):
    """Knowing When to Look (Lu et al. 2017), in the variants of ``DESIGNS`` (cfg ``adaptive_design``).

    "paper": regions v_i = relu(encode_regions(a_i)) (P, D); global v_g = relu(encode_global(mean a)) (E,). The LSTM
    reads x_t = [word ; v_g]. A sentinel s = g ⊙ tanh(c_t) with gate g = σ(sentinel_x(x_t) + sentinel_h(h_{t-1}))
    stores what the language model knows. Attention, computed from the *new* h_t, spans the P regions plus the
    sentinel: α̂ = softmax([att(tanh(att_v(v_i) + att_g(h_t)))_i ; att(tanh(att_s(s) + att_g(h_t)))]), β = α̂_{P+1}
    is how much the word relies on the sentinel rather than the image, and ĉ = β·s + Σ α̂_i v_i.
    Scores = fc(dropout(ĉ + h_t)).

    The variants change only where the image and the sentinel come from:

    * "look", "look_word": x_t = [word ; feed(Σ α̂_i v_i of the previous word)] (zero before the first word) and
      h0/c0 are learned constants: the LSTM knows of the image only what it attended. The cell state passed
      between steps (``c`` of ``init_hidden_state`` / ``one_step``) is then (N, 2D): the LSTM's cell, then the
      attended regions of the previous word — beam search only selects rows of it.
    * "word_sentinel", "look_word": s = tanh(sentinel_w(word)), from the previous word's embedding alone.
    * "sentinel_bias": a learned scalar added to the sentinel's score, initialised at ``SENTINEL_BIAS``.
    * "look_anneal": "look", plus a fixed offset on the sentinel's score, ``ANNEAL_START`` rising linearly to 0 over
      the first ``ANNEAL_STEPS`` training batches (counted in the buffer ``trained_batches``).
    * "global_dropout": in training mode each caption's mean feature is zeroed with probability ``GLOBAL_DROP``.

    Same constructor / ``forward`` / ``one_step`` conventions as ``DecoderWithAttention``; its alphas have P + 1
    columns, the last being β.
    """

    has_attention = True

    def __init__(self, cfg, encoder_dim=2048):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.embed_dim, self.decoder_dim = cfg["embed_dim"], cfg["decoder_dim"]
        self.attention_dim, self.vocab_size = cfg["attention_dim"], cfg["vocab_size"]
        self.design = check_design(cfg.get("adaptive_design", "paper"))
        self.feedback = self.design in ("look", "look_word", "look_anneal")  # the LSTM reads what it attended
        self.word_sentinel = self.design in ("word_sentinel", "look_word")
        e, d, a = self.embed_dim, self.decoder_dim, self.attention_dim
        self.embedding = nn.Embedding(self.vocab_size, e)
        self.encode_regions = nn.Linear(encoder_dim, d)
        if self.feedback:
            self.feed = nn.Linear(d, e)
        else:
            self.encode_global = nn.Linear(encoder_dim, e)
        self.init_h = nn.Linear(encoder_dim, d)
        self.init_c = nn.Linear(encoder_dim, d)
        self.decode_step = nn.LSTMCell(2 * e, d)
        if self.word_sentinel:
            self.sentinel_w = nn.Linear(e, d)
        else:
            self.sentinel_x = nn.Linear(2 * e, d)
            self.sentinel_h = nn.Linear(d, d, bias=False)
        if self.design == "sentinel_bias":
            self.sentinel_bias = nn.Parameter(torch.tensor(SENTINEL_BIAS))
        if self.design == "look_anneal":  # in the checkpoint: a continued run resumes the schedule where it was
            self.register_buffer("trained_batches", torch.zeros((), dtype=torch.long))
        self.att_v = nn.Linear(d, a)
        self.att_s = nn.Linear(d, a)
        self.att_g = nn.Linear(d, a)
        self.att = nn.Linear(a, 1)
        self.fc = nn.Linear(d, self.vocab_size)
        self.dropout = nn.Dropout(p=cfg["dropout"])
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.fc.bias.data.fill_(0)
        self.fc.weight.data.uniform_(-0.1, 0.1)

    def _global(self, encoder_out):
        """encoder_out (N, P, C) → the mean feature (N, C) the design lets the LSTM see: zero for "look" designs
        (h0/c0 are then the layers' biases), zeroed for a random half of the rows in training for
        "global_dropout"."""
        mean = encoder_out.mean(dim=1)
        if self.feedback:
            return torch.zeros_like(mean)
        if self.design == "global_dropout" and self.training:
            keep = torch.rand(mean.size(0), 1, device=mean.device) >= GLOBAL_DROP
            return mean * keep
        return mean

    def init_hidden_state(self, encoder_out, mean=None):
        """encoder_out (B, S, S, C) or (B, P, C) → h (B, D), c (B, D), or (B, 2D) for the "look" designs (the
        cell, then zeros: nothing attended yet). ``mean``: the (B, C) feature of ``_global``, when already drawn."""
        if mean is None:
            mean = self._global(encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim))
        h, c = self.init_h(mean), self.init_c(mean)
        return h, torch.cat([c, torch.zeros_like(c)], dim=1) if self.feedback else c

    def _project(self, encoder_out, mean=None):
        """encoder_out (N, P, C) → regions v (N, P, D), their attention projection (N, P, A), global v_g (N, E) or
        None for the "look" designs."""
        v = F.relu(self.encode_regions(encoder_out))
        if self.feedback:
            return v, self.att_v(v), None
        v_g = F.relu(self.encode_global(self._global(encoder_out) if mean is None else mean))
        return v, self.att_v(v), v_g

    def _step(self, embeddings, v, v_att, v_g, h, c):
        if self.feedback:
            c, seen = c[:, : self.decoder_dim], c[:, self.decoder_dim :]
            x = torch.cat([embeddings, self.feed(seen)], dim=1)  # (N, 2E)
        else:
            x = torch.cat([embeddings, v_g], dim=1)  # (N, 2E)
        if not self.word_sentinel:
            gate = torch.sigmoid(self.sentinel_x(x) + self.sentinel_h(h))
        h, c = self.decode_step(x, (h, c))
        s = torch.tanh(self.sentinel_w(embeddings)) if self.word_sentinel else gate * torch.tanh(c)  # (N, D)
        g = self.att_g(h)  # (N, A)
        z = self.att(torch.tanh(v_att + g.unsqueeze(1))).squeeze(2)  # (N, P)
        z_s = self.att(torch.tanh(self.att_s(s) + g))  # (N, 1)
        if self.design == "sentinel_bias":
            z_s = z_s + self.sentinel_bias
        elif self.design == "look_anneal":
            z_s = z_s + ANNEAL_START * max(0.0, 1.0 - int(self.trained_batches) / ANNEAL_STEPS)
        alpha_hat = F.softmax(torch.cat([z, z_s], dim=1), dim=1)  # (N, P + 1)
        beta = alpha_hat[:, -1:]
        visual = (v * alpha_hat[:, :-1].unsqueeze(2)).sum(dim=1)  # (N, D), already weighted by 1 - β
        preds = self.fc(self.dropout(beta * s + visual + h))
        if self.feedback:
            c = torch.cat([c, visual], dim=1)
        return preds, alpha_hat, h, c

    def one_step(self, embeddings, encoder_out, h, c):
        """embeddings (N, E), encoder_out (N, P, C), h (N, D), c (N, D) or (N, 2D) ("look" designs) → preds (N, V),
        alpha_hat (N, P + 1), h, c."""
        v, v_att, v_g = self._project(encoder_out)
        return self._step(embeddings, v, v_att, v_g, h, c)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """As ``DecoderWithAttention.forward``; alphas are (B, max(decode_lengths), P + 1)."""
        batch_size = encoder_out.size(0)
        if self.design == "look_anneal" and self.training:
            self.trained_batches += 1
        encoder_out = encoder_out.reshape(batch_size, -1, self.encoder_dim)
        caption_lengths, sort_ind = caption_lengths.reshape(-1).sort(dim=0, descending=True)
        encoder_out, encoded_captions = encoder_out[sort_ind], encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)
        mean = self._global(encoder_out)  # drawn once, so that h0/c0 and v_g agree under global_dropout
        h, c = self.init_hidden_state(encoder_out, mean)
        v, v_att, v_g = self._project(encoder_out, mean)  # once per image, not per word
        decode_lengths = (caption_lengths - 1).tolist()
        steps = max(decode_lengths)
        predictions = encoder_out.new_zeros(batch_size, steps, self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, steps, encoder_out.size(1) + 1)
        for t in range(steps):
            n = sum(1 for length in decode_lengths if length > t)
            preds, alpha, h, c = self._step(
                embeddings[:n, t], v[:n], v_att[:n], None if v_g is None else v_g[:n], h[:n], c[:n]
            )
            predictions[:n, t], alphas[:n, t] = preds, alpha
        return predictions, encoded_captions, decode_lengths, alphas, sort_ind
