"""The fast path's beam-search step (``fastpath.beam_step``, re-exported there for the ``fast_path`` plug-in):
the encoder side of the kit's attention decoders computed once per image instead of once per beam and word.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the modules, not their classes: the classes are looked up at each call, so that a re-imported models.py (the
# notebooks reload it) is recognised without reloading this module
from captioning import adaptive, models


def beam_supports(decoder):
    """Only the kit's own attention decoders, exactly (a subclass may change ``one_step``)."""
    return type(decoder) in (models.DecoderWithAttention, adaptive.DecoderWithAdaptiveAttention)


class BeamStep:
    """``one_step`` of a beam search over N images × k beams, with the image side computed once per *image*.

    ``one_step`` receives the encoder output repeated for every beam and projects it again at every word
    (``encoder_att`` on (N·k, P, C), or the adaptive decoder's ``_project``). Here the projection is computed once
    when the search starts and each image's P regions are kept once; the k beams of an image read them by
    broadcasting (attention scores) and a matrix product per image (the attended context). Everything else is the
    decoder's own layers in ``one_step``'s order.

    Call ``step(emb, h, c)`` with (n·k, ·) rows, beam-major within each image, as ``one_step(emb, enc_k, h, c)``;
    ``keep(mask)`` drops retired images.

    On a CPU the per-image work runs image by image through a reused (k, P, A) buffer: the (n, k, P, A) tensor of
    the whole batch would be tens of MB, written and read again by every element-wise op, far slower than
    cache-sized pieces. Retired images are then only dropped from the list of live images, not copied out.
    """

    def __init__(self, decoder, enc, k):
        self.decoder, self.k = decoder, k
        self.adaptive = type(decoder) is not models.DecoderWithAttention
        if self.adaptive:
            self.parts = decoder._project(enc)  # v (N, P, D), v_att (N, P, A), v_g (N, E)
        else:
            self.parts = (enc, decoder.attention.encoder_att(enc))  # enc (N, P, C), att1 (N, P, A)
        self.loop = enc.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        self.live = list(range(enc.size(0)))  # the images of the step's rows, in order (CPU loop only)

    def keep(self, mask):
        """Keep the images where ``mask`` (n,) is true."""
        if self.loop:
            self.live = [i for i, m in zip(self.live, mask.tolist()) if m]
        else:
            self.parts = tuple(x[mask] for x in self.parts)

    def __call__(self, emb, h, c):
        return (self._adaptive if self.adaptive else self._attention)(emb, h, c)

    def _scores(self, proj, q, lin, act):
        """lin(act(proj_i + q_ib)) for each live image i and beam b: proj (N, P, A), q (n·k, A) → (n·k, P)."""
        k, (_, p, a) = self.k, proj.shape
        n = q.size(0) // k
        q = q.view(n, k, 1, a)
        if not self.loop:
            return lin(act(proj.unsqueeze(1) + q)).view(n * k, p)
        buf = torch.empty(k, p, a, dtype=torch.result_type(proj, q), device=proj.device)
        out = buf.new_empty(n, k, p)
        w = lin.weight.view(-1)
        for j, i in enumerate(self.live):
            torch.add(proj[i], q[j], out=buf)
            act(buf, inplace=True)
            torch.mv(buf.view(k * p, a), w, out=out[j].view(k * p))
        out = out.view(n * k, p)
        return out if lin.bias is None else out + lin.bias

    def _context(self, weights, x):
        """Σ_p weights_ibp · x_ip for each live image i and beam b: weights (n·k, P), x (N, P, C) → (n·k, C)."""
        k = self.k
        n = weights.size(0) // k
        weights = weights.reshape(n, k, -1)
        if not self.loop:
            return torch.bmm(weights, x).view(n * k, -1)
        out = x.new_empty(n, k, x.size(2))
        for j, i in enumerate(self.live):
            torch.mm(weights[j], x[i], out=out[j])
        return out.view(n * k, -1)

    def _attention(self, emb, h, c):
        d, (enc, att1) = self.decoder, self.parts
        att = d.attention
        alpha = F.softmax(self._scores(att1, att.decoder_att(h), att.att, F.relu), dim=1)  # (n·k, P)
        z = d.sigmoid(d.f_beta(h)) * self._context(alpha, enc)  # (n·k, C)
        h, c = d.decode_step(torch.cat([emb, z], dim=1), (h, c))
        return d.fc(d.dropout(h)), alpha, h, c

    def _adaptive(self, emb, h, c):
        d, (v, v_att, v_g) = self.decoder, self.parts
        k = self.k
        v_g = v_g[self.live] if self.loop else v_g
        x = torch.cat([emb, v_g.repeat_interleave(k, 0)], dim=1)  # (n·k, 2E)
        gate = torch.sigmoid(d.sentinel_x(x) + d.sentinel_h(h))
        h, c = d.decode_step(x, (h, c))
        s = gate * torch.tanh(c)
        g = d.att_g(h)  # (n·k, A)
        z = self._scores(v_att, g, d.att, _tanh)  # (n·k, P)
        z_s = d.att(torch.tanh(d.att_s(s) + g))  # (n·k, 1)
        alpha_hat = F.softmax(torch.cat([z, z_s], dim=1), dim=1)  # (n·k, P + 1)
        beta = alpha_hat[:, -1:]
        context = beta * s + self._context(alpha_hat[:, :-1], v)  # (n·k, D)
        return d.fc(d.dropout(context + h)), alpha_hat, h, c


def _tanh(x, inplace=False):
    return x.tanh_() if inplace else torch.tanh(x)


@torch.no_grad()
def beam_step(decoder, enc, k, rtol=1e-4, atol=1e-5):
    """A :class:`BeamStep` for ``enc`` (N, P, C), or None when the decoder is not one of ours, is in training
    mode, or the step does not reproduce ``decoder.one_step`` on a probe (image 0, two different beams)."""
    if not beam_supports(decoder) or decoder.training or enc.size(0) == 0:
        return None
    try:
        with torch.autocast(enc.device.type, enabled=False):  # the probe compares in fp32
            e1 = enc[:1].float()
            probe = BeamStep(decoder, e1, 2)
            h, c = decoder.init_hidden_state(e1)
            h, c = torch.cat([h, 0.5 * h.flip(1)]), torch.cat([c, c.flip(1) - 0.1])
            words = torch.arange(2, device=enc.device) % decoder.vocab_size
            emb = decoder.embedding(words).float()
            ref = decoder.one_step(emb, e1.expand(2, -1, -1), h, c)
            got = probe(emb, h, c)
        step = BeamStep(decoder, enc, k)
    except Exception:  # noqa: BLE001  (a decoder of another shape: not ours to speed up)
        return None
    if len(ref) != len(got) or not all(
        a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol) for a, b in zip(ref, got)
    ):
        return None
    return step
