"""``DecoderWithAdaptiveAttention`` — Knowing When to Look (Lu et al. 2017): a visual sentinel lets the model decide,
per word, how much to look at the image at all. Reference code beside the course's two decoders (not a TODO);
train it with ``decoder="adaptive"``. Shapes as in ``models.py``.

cfg ``adaptive_design`` picks the design (``DESIGNS``); "paper" is Lu et al.'s and the default, so checkpoints
written before the key existed load as they were trained. Why the others exist (docs/results.md, "Adaptive
attention that knows when to look"): in the paper's design the LSTM reads the global feature with every word, so
its memory — and the sentinel made from it — already knows what the mean feature says about the image. On the
shapes data that is everything a caption names, and the model learns never to look (β = 1 on every shape word).
The "sat" designs are the attention decoder with the sentinel as one more region; they point at what they name,
and with a price on looking ("sat*cost*") they leave some words to the sentinel. "sat_logcost_late" comes closest
to the paper's pattern (function words to the sentinel at every seed, the attention decoder's BLEU-4 and maps), but
the shape and colour words still give the sentinel about 0.4 of the attention (docs/results.md, "Adaptive
attention: a price whose pull does not fade").
"""

from __future__ import annotations

import math

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
    "where": "the LSTM reads [word ; where it attended at the previous word] (a position code, not the regions' "
    "content), h0/c0 learned: it knows which objects it has named but not what they are, so naming one means looking",
    "where_raw": "where, with the attention decoder's regions: scores relu(W a_i + W h), content the raw features a_i",
    "where_anneal": "where, with β annealed from 0 as in look_anneal",
    "where_raw_anneal": "where_raw, with β annealed from 0 as in look_anneal",
    "sat": "the attention decoder (Show, Attend and Tell, h0/c0 learned) with a sentinel among its regions: the "
    "gated context fed to the LSTM is Σ α̂_i a_i + β·W s, s the sentinel of the previous step; scores = fc(h_t)",
    "sat_anneal": "sat, with β annealed from 0 as in look_anneal",
    "sat_cost": "sat, with a price on looking: the loss adds LOOK_COST × the mean share of attention on the "
    "regions (1 − β), so that a word reads the image only where that lowers the loss by more",
    "sat_cost_anneal": "sat_cost, with β annealed from 0 as in look_anneal (the regions learn before the price of "
    "looking can make every word read the sentinel)",
    "sat_cost_ramp": "sat_cost, with the price of looking rising from 0 over ANNEAL_STEPS batches: the regions "
    "become worth their price before it is charged in full, and β is never held down",
    "sat_word_cost_ramp": "sat_cost_ramp, with the attention's query made from h_{t-1} and the word just read (the "
    "attention decoder's query never sees that word): whether the next word names something follows from it",
    "sat_out_cost_ramp": "sat_cost_ramp, with the context also read at the output (Show, Attend and Tell's deep "
    "output: scores = fc(h + W z)), so a look serves the word it is made for directly, not only through the memory",
    "sat_cost_grow": "sat_cost_ramp, with the price still rising after ANNEAL_STEPS batches, to GROW_MAX × LOOK_COST "
    "at GROW_MAX × ANNEAL_STEPS: the looks that lower the loss least (function words) are the first to go",
    "sat_out_cost_grow": "sat_out_cost_ramp with sat_cost_grow's price",
    "sat_logcost_ramp": "sat_cost_ramp with the price on −log β instead of 1 − β: the price's pull on the sentinel's "
    "score is LOOK_COST × (1 − β), never vanishing, where 1 − β's is LOOK_COST × β (1 − β), which fades when β nears 0 "
    "and leaves a decoder that looks at every word (measured: β ≈ 0.1 on function words at one seed of three) there",
    "sat_logcost_late": "sat_logcost_ramp with the price charged only after ANNEAL_STEPS batches of plain sat (then "
    "ramped in over as many): −log β pulls from the first batch, so at one seed of three it took the sentinel "
    "before the regions were worth anything (collapse to the language model at LOG_COST 0.02–0.06)",
    "sat_hard_logcost_late": "sat_logcost_late with the look a yes or no: in training a draw with probability "
    "1 − β feeds the LSTM the regions (their attention renormalised) or the sentinel, never a mix, with the "
    "probability's gradient passed straight through; in eval it looks where β < 0.5. Under soft attention a decoder "
    "can take β = 0.4 and scale the regions' 0.6 back up (measured: sat_logcost_late, β 0.38–0.44 on visual words)",
    "sat_select": "sat without the attention decoder's gate sigmoid(f_beta(h)): the sentinel is the only way not to "
    "read the image, so a word that does not need the image reads the LSTM's own memory instead",
}
SENTINEL_BIAS = -4.0  # sentinel_bias: with P = 64 regions of equal score the sentinel starts at β ≈ 3e-4, not 1/65
GLOBAL_DROP = 0.5  # global_dropout: share of training captions decoded without the mean feature
# look_anneal: the sentinel's score starts ANNEAL_START lower (β ≈ 0) and rises linearly to no offset over this many
# training batches (about one epoch of the shapes recipe). Without it `look` measured β = 1.00 on every word after 2
# epochs: the sentinel, the language model, lowers the loss first, and a softmax column near 0 gets no gradient.
ANNEAL_START, ANNEAL_STEPS = -10.0, 150
# where designs: the attended position is coded by the expected Fourier features sin/cos(kπx), sin/cos(kπy),
# k = 1..WHERE_FREQS, of the cell centres under the attention (4·WHERE_FREQS numbers, whatever the grid size)
WHERE_FREQS = 8
# sat_cost: nats per word charged for reading the image with all of the attention (β = 0). Naming a shape or colour
# from the image saves more than a nat; a function word the language model predicts saves far less. Screened on VAL
# (sat_cost_anneal, seed 0): 0.1 made every word read the sentinel, 0.03 left every word reading the image.
LOOK_COST = 0.06
# sat_logcost_ramp: nats per word × −log β. Looking with 95 % of the attention then costs about what it costs at
# LOOK_COST, but the pull on the sentinel's score stays LOG_COST × (1 − β) however small β is
LOG_COST = 0.03
SCHEDULED = ("_ramp", "_grow", "_late")  # design suffixes whose price follows the count of trained batches
GROW_MAX = 2.0  # sat*_cost_grow: the price's final multiple of LOOK_COST, reached after GROW_MAX × ANNEAL_STEPS batches


def where_code(num_pixels, device=None, dtype=None):
    """The position code of each of the P = S² cells, row by row: (P, 4·WHERE_FREQS)."""
    side = math.isqrt(num_pixels)
    if side * side != num_pixels:
        raise ValueError(f"the where designs need a square grid of regions; got P = {num_pixels}")
    centre = (torch.arange(side, device=device, dtype=dtype or torch.float32) + 0.5) / side * 2 - 1
    y, x = centre.repeat_interleave(side), centre.repeat(side)
    k = torch.arange(1, WHERE_FREQS + 1, device=device, dtype=centre.dtype) * math.pi
    return torch.cat(
        [torch.sin(x[:, None] * k), torch.cos(x[:, None] * k), torch.sin(y[:, None] * k), torch.cos(y[:, None] * k)],
        dim=1,
    )


def look_cost(decoder, alphas):
    """The loss term of a decoder on its attention: alphas (B, T, P + 1), rows past a caption's end all zero, or None
    → for the "sat*cost*" designs LOOK_COST × the mean of 1 − β ("_logcost": of −log β) over the decoded words, a
    scalar tensor (for "_ramp" the weight rises from 0 over the first ANNEAL_STEPS training batches, for "_grow" on
    to GROW_MAX times that, for "_late" over the next ANNEAL_STEPS after them); else 0."""
    design = getattr(decoder, "design", "")
    if alphas is None or not (design.startswith("sat") and "cost" in design):
        return 0.0
    weight = LOG_COST if "_logcost" in design else LOOK_COST
    if design.endswith(SCHEDULED):
        top = GROW_MAX if design.endswith("_grow") else 1.0
        start = ANNEAL_STEPS if design.endswith("_late") else 0
        weight = weight * ((decoder.trained_batches - start) / ANNEAL_STEPS).clamp(min=0.0, max=top)  # no device sync
    decoded = alphas.sum(dim=2) > 0  # (B, T): False past a caption's end
    if "_logcost" in design:
        looked = -torch.log(alphas[..., -1].float().clamp(min=1e-6)) * decoded  # −log β
    else:
        looked = alphas[..., :-1].float().sum(dim=2)  # 1 − β on decoded words, 0 past the end
    return weight * looked.sum() / decoded.sum().clamp(min=1)


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
    * "where", "where_raw": x_t = [word ; feed(Σ α̂_i φ_i of the previous word)], φ_i the position code of cell i
      (``where_code``), and h0/c0 learned: the LSTM knows where it looked (so which objects it has named), not what
      is there. ``c`` is (N, D + 4·WHERE_FREQS). "where_raw" scores and reads the regions as the attention decoder
      does: z_i = att(relu(att_v(a_i) + att_g(h_t))) on the raw features, ĉ = β·s + ctx_proj(Σ α̂_i a_i).
    * "word_sentinel", "look_word": s = tanh(sentinel_w(word)), from the previous word's embedding alone.
    * "sentinel_bias": a learned scalar added to the sentinel's score, initialised at ``SENTINEL_BIAS``.
    * "look_anneal", "where_anneal", "where_raw_anneal": the design without "_anneal", plus a fixed offset on the
      sentinel's score, ``ANNEAL_START`` rising linearly to 0 over the first ``ANNEAL_STEPS`` training batches
      (counted in the buffer ``trained_batches``).
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
        # what the LSTM reads beside the word: the global feature (None), what it attended at the previous word
        # ("content") or where it attended ("where")
        self.feedback = {"look": "content", "where": "where", "sat": "sentinel"}.get(self.design.split("_")[0])
        self.sat = self.feedback == "sentinel"  # attention before the LSTM step, as in the attention decoder
        # the attention decoder's regions: raw features, relu scores
        self.raw = self.design.startswith("where_raw") or self.sat
        self.anneal = self.design.endswith("_anneal")
        self.word_sentinel = self.design in ("word_sentinel", "look_word")
        e, d, a = self.embed_dim, self.decoder_dim, self.attention_dim
        self.embedding = nn.Embedding(self.vocab_size, e)
        x = e + encoder_dim if self.sat else 2 * e  # the LSTM's input: [word ; gated context] or [word ; E more]
        if self.sat:
            self.sentinel_ctx = nn.Linear(d, encoder_dim)  # the sentinel in the regions' space, to mix with them
            if self.design != "sat_select":
                self.f_beta = nn.Linear(d, encoder_dim)
            if "_out" in self.design:
                self.out_ctx = nn.Linear(encoder_dim, d)
        elif self.raw:
            self.ctx_proj = nn.Linear(encoder_dim, d)
        else:
            self.encode_regions = nn.Linear(encoder_dim, d)
        if self.feedback == "content":
            self.feed = nn.Linear(d, e)
        elif self.feedback == "where":
            self.feed = nn.Linear(4 * WHERE_FREQS, e)
        elif not self.sat:
            self.encode_global = nn.Linear(encoder_dim, e)
        self.extra_state = {"content": d, "where": 4 * WHERE_FREQS, "sentinel": d}.get(self.feedback, 0)
        self.init_h = nn.Linear(encoder_dim, d)
        self.init_c = nn.Linear(encoder_dim, d)
        self.decode_step = nn.LSTMCell(x, d)
        if self.word_sentinel:
            self.sentinel_w = nn.Linear(e, d)
        else:
            self.sentinel_x = nn.Linear(x, d)
            self.sentinel_h = nn.Linear(d, d, bias=False)
        if self.design == "sentinel_bias":
            self.sentinel_bias = nn.Parameter(torch.tensor(SENTINEL_BIAS))
        # the schedules' batch count, in the checkpoint: a resumed run keeps its schedule
        if self.anneal or self.design.endswith(SCHEDULED):
            self.register_buffer("trained_batches", torch.zeros((), dtype=torch.long))
        self.att_v = nn.Linear(encoder_dim if self.raw else d, a)
        self.att_s = nn.Linear(d, a)
        self.att_g = nn.Linear(d, a)
        if self.design.startswith("sat_word"):
            self.att_w = nn.Linear(e, a)
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
        """encoder_out (B, S, S, C) or (B, P, C) → h (B, D), c (B, D), or (B, D + F) for the designs with feedback
        (the cell, then zeros: nothing attended yet; F = D for "look", 4·WHERE_FREQS for "where"). ``mean``: the
        (B, C) feature of ``_global``, when already drawn."""
        if mean is None:
            mean = self._global(encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim))
        h, c = self.init_h(mean), self.init_c(mean)
        if self.feedback is None:
            return h, c
        return h, torch.cat([c, c.new_zeros(c.size(0), self.extra_state)], dim=1)

    def _where(self, num_pixels, like):
        """The cells' position code (P, 4·WHERE_FREQS), made once per grid size, device and dtype."""
        key = (num_pixels, like.device, like.dtype)
        if getattr(self, "_where_key", None) != key:
            self._where_key, self._where_code = key, where_code(num_pixels, like.device, like.dtype)
        return self._where_code

    def _project(self, encoder_out, mean=None):
        """encoder_out (N, P, C) → regions v (N, P, D) (for "where_raw" the features themselves, (N, P, C)), their
        attention projection (N, P, A), global v_g (N, E) or None for the designs with feedback."""
        v = encoder_out if self.raw else F.relu(self.encode_regions(encoder_out))
        if self.feedback:
            return v, self.att_v(v), None
        v_g = F.relu(self.encode_global(self._global(encoder_out) if mean is None else mean))
        return v, self.att_v(v), v_g

    def _attend(self, v_att, s, g):
        """Regions' attention projection v_att (N, P, A), sentinel s (N, D), query g (N, A) → alpha_hat (N, P + 1),
        the last column β; scores squashed by relu (the attention decoder's, "raw" designs) or tanh (the paper's),
        the sentinel's with the design's offset."""
        squash = F.relu if self.raw else torch.tanh
        z = self.att(squash(v_att + g.unsqueeze(1))).squeeze(2)  # (N, P)
        z_s = self.att(squash(self.att_s(s) + g))  # (N, 1)
        if self.design == "sentinel_bias":
            z_s = z_s + self.sentinel_bias
        elif self.anneal:
            z_s = z_s + ANNEAL_START * (1.0 - self.trained_batches / ANNEAL_STEPS).clamp(min=0.0)  # no device sync
        return F.softmax(torch.cat([z, z_s], dim=1), dim=1)

    def _step_sat(self, embeddings, a, a_att, h, c):
        """The "sat" designs' step: the attention decoder's, with the previous step's sentinel s (in ``c``) as
        region P + 1. a (N, P, C), a_att (N, P, A) → preds, alpha_hat (N, P + 1), h, c (N, 2D)."""
        c, s = c[:, : self.decoder_dim], c[:, self.decoder_dim :]
        query = self.att_g(h) + self.att_w(embeddings) if hasattr(self, "att_w") else self.att_g(h)
        alpha_hat = self._attend(a_att, s, query)
        beta = alpha_hat[:, -1:]
        regions, sentinel = (a * alpha_hat[:, :-1].unsqueeze(2)).sum(dim=1), self.sentinel_ctx(s)  # (N, C) each
        if "_hard" in self.design:
            p = 1.0 - beta  # (N, 1): the probability of a look
            look = (torch.rand_like(p) < p) if self.training else (p > 0.5)
            look = look.to(p.dtype) + p - p.detach()  # the draw forward, d/dp = 1 backward (straight through)
            context = look * regions / p.clamp(min=1e-6) + (1.0 - look) * sentinel  # the regions renormalised
        else:
            context = regions + beta * sentinel
        if hasattr(self, "f_beta"):
            context = torch.sigmoid(self.f_beta(h)) * context
        x = torch.cat([embeddings, context], dim=1)  # (N, E + C)
        gate = torch.sigmoid(self.sentinel_x(x) + self.sentinel_h(h))
        h, c = self.decode_step(x, (h, c))
        out = h + self.out_ctx(context) if hasattr(self, "out_ctx") else h
        return self.fc(self.dropout(out)), alpha_hat, h, torch.cat([c, gate * torch.tanh(c)], dim=1)

    def _step(self, embeddings, v, v_att, v_g, h, c):
        if self.sat:
            return self._step_sat(embeddings, v, v_att, h, c)
        if self.feedback:
            c, seen = c[:, : self.decoder_dim], c[:, self.decoder_dim :]
            x = torch.cat([embeddings, self.feed(seen)], dim=1)  # (N, 2E)
        else:
            x = torch.cat([embeddings, v_g], dim=1)  # (N, 2E)
        if not self.word_sentinel:
            gate = torch.sigmoid(self.sentinel_x(x) + self.sentinel_h(h))
        h, c = self.decode_step(x, (h, c))
        s = torch.tanh(self.sentinel_w(embeddings)) if self.word_sentinel else gate * torch.tanh(c)  # (N, D)
        alpha_hat = self._attend(v_att, s, self.att_g(h))
        beta, regions = alpha_hat[:, -1:], alpha_hat[:, :-1]
        visual = (v * regions.unsqueeze(2)).sum(dim=1)  # (N, D) or (N, C), already weighted by 1 - β
        if self.raw:
            visual = self.ctx_proj(visual)
        preds = self.fc(self.dropout(beta * s + visual + h))
        if self.feedback == "content":
            c = torch.cat([c, visual], dim=1)
        elif self.feedback == "where":  # where it looked, weighted by 1 - β: all zeros after a word it did not look for
            c = torch.cat([c, regions @ self._where(regions.size(1), regions)], dim=1)
        return preds, alpha_hat, h, c

    def one_step(self, embeddings, encoder_out, h, c):
        """embeddings (N, E), encoder_out (N, P, C), h (N, D), c (N, D) or (N, D + F) (designs with feedback, see
        ``init_hidden_state``) → preds (N, V), alpha_hat (N, P + 1), h, c."""
        v, v_att, v_g = self._project(encoder_out)
        return self._step(embeddings, v, v_att, v_g, h, c)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """As ``DecoderWithAttention.forward``; alphas are (B, max(decode_lengths), P + 1)."""
        batch_size = encoder_out.size(0)
        if hasattr(self, "trained_batches") and self.training:
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
