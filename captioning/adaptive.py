"""``DecoderWithAdaptiveAttention`` — Knowing When to Look (Lu et al. 2017): a visual sentinel lets the model decide,
per word, how much to look at the image at all. Reference code beside the course's two decoders (not a TODO);
train it with ``decoder="adaptive"``. Shapes as in ``models.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DecoderWithAdaptiveAttention(nn.Module):
    """Knowing When to Look (Lu et al. 2017).

    Regions v_i = relu(encode_regions(a_i)) (P, D); global v_g = relu(encode_global(mean a)) (E,). The LSTM reads
    [word ; v_g]. A sentinel s = g ⊙ tanh(c_t) with gate g = σ(sentinel_x(x_t) + sentinel_h(h_{t-1})) stores what
    the language model knows. Attention, computed from the *new* h_t, spans the P regions plus the sentinel:
    α̂ = softmax([att(tanh(att_v(v_i) + att_g(h_t)))_i ; att(tanh(att_s(s) + att_g(h_t)))]), β = α̂_{P+1} is how
    much the word relies on the sentinel rather than the image, and ĉ = β·s + (1 − β)·c_visual = β·s + Σ α̂_i v_i.
    Scores = fc(dropout(ĉ + h_t)).

    Same constructor / ``forward`` / ``one_step`` conventions as ``DecoderWithAttention``; its alphas have P + 1
    columns, the last being β.
    """

    has_attention = True

    def __init__(self, cfg, encoder_dim=2048):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.embed_dim, self.decoder_dim = cfg["embed_dim"], cfg["decoder_dim"]
        self.attention_dim, self.vocab_size = cfg["attention_dim"], cfg["vocab_size"]
        e, d, a = self.embed_dim, self.decoder_dim, self.attention_dim
        self.embedding = nn.Embedding(self.vocab_size, e)
        self.encode_regions = nn.Linear(encoder_dim, d)
        self.encode_global = nn.Linear(encoder_dim, e)
        self.init_h = nn.Linear(encoder_dim, d)
        self.init_c = nn.Linear(encoder_dim, d)
        self.decode_step = nn.LSTMCell(2 * e, d)
        self.sentinel_x = nn.Linear(2 * e, d)
        self.sentinel_h = nn.Linear(d, d, bias=False)
        self.att_v = nn.Linear(d, a)
        self.att_s = nn.Linear(d, a)
        self.att_g = nn.Linear(d, a)
        self.att = nn.Linear(a, 1)
        self.fc = nn.Linear(d, self.vocab_size)
        self.dropout = nn.Dropout(p=cfg["dropout"])
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.fc.bias.data.fill_(0)
        self.fc.weight.data.uniform_(-0.1, 0.1)

    def init_hidden_state(self, encoder_out):
        """encoder_out (B, S, S, C) or (B, P, C) → h, c (B, D)."""
        mean = encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim).mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def _project(self, encoder_out):
        """encoder_out (N, P, C) → regions v (N, P, D), their attention projection (N, P, A), global v_g (N, E)."""
        v = F.relu(self.encode_regions(encoder_out))
        v_g = F.relu(self.encode_global(encoder_out.mean(dim=1)))
        return v, self.att_v(v), v_g

    def _step(self, embeddings, v, v_att, v_g, h, c):
        x = torch.cat([embeddings, v_g], dim=1)  # (N, 2E)
        gate = torch.sigmoid(self.sentinel_x(x) + self.sentinel_h(h))
        h, c = self.decode_step(x, (h, c))
        s = gate * torch.tanh(c)  # visual sentinel (N, D)
        g = self.att_g(h)  # (N, A)
        z = self.att(torch.tanh(v_att + g.unsqueeze(1))).squeeze(2)  # (N, P)
        z_s = self.att(torch.tanh(self.att_s(s) + g))  # (N, 1)
        alpha_hat = F.softmax(torch.cat([z, z_s], dim=1), dim=1)  # (N, P + 1)
        beta = alpha_hat[:, -1:]
        context = beta * s + (v * alpha_hat[:, :-1].unsqueeze(2)).sum(dim=1)  # (N, D)
        preds = self.fc(self.dropout(context + h))
        return preds, alpha_hat, h, c

    def one_step(self, embeddings, encoder_out, h, c):
        """embeddings (N, E), encoder_out (N, P, C), h, c (N, D) → preds (N, V), alpha_hat (N, P + 1), h, c."""
        v, v_att, v_g = self._project(encoder_out)
        return self._step(embeddings, v, v_att, v_g, h, c)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """As ``DecoderWithAttention.forward``; alphas are (B, max(decode_lengths), P + 1)."""
        batch_size = encoder_out.size(0)
        encoder_out = encoder_out.reshape(batch_size, -1, self.encoder_dim)
        caption_lengths, sort_ind = caption_lengths.reshape(-1).sort(dim=0, descending=True)
        encoder_out, encoded_captions = encoder_out[sort_ind], encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)
        h, c = self.init_hidden_state(encoder_out)
        v, v_att, v_g = self._project(encoder_out)  # once per image, not per word
        decode_lengths = (caption_lengths - 1).tolist()
        steps = max(decode_lengths)
        predictions = encoder_out.new_zeros(batch_size, steps, self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, steps, encoder_out.size(1) + 1)
        for t in range(steps):
            n = sum(1 for length in decode_lengths if length > t)
            preds, alpha, h, c = self._step(embeddings[:n, t], v[:n], v_att[:n], v_g[:n], h[:n], c[:n])
            predictions[:n, t], alphas[:n, t] = preds, alpha
        return predictions, encoded_captions, decode_lengths, alphas, sort_ind
