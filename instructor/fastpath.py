"""A faster teacher-forced pass that computes what ``DecoderWithRNN.forward`` / ``DecoderWithAttention.forward``
compute, with the same layers (hence the same weights and gradients), reorganised:

* the image side is computed once per *image* — batches hold all captions of each image (``group``);
* the attention's projection ``encoder_att(encoder_out)`` is the same at every step: computed once, not per word;
* the LSTM's input projection of the word embeddings is one matrix product for all steps;
* the vocabulary projection ``fc`` runs once over all (caption, step) pairs that are not padding;
* on a CPU, the attention decoder's recurrence is one autograd function with a hand-written backward
  (``_AttentionLSTM``): autograd's per-step bookkeeping cost more than the arithmetic.

The ``fast_path`` plug-in of ``captioning.internals.plugins`` (pyproject.toml): the solver uses it only after
``solver.fast_path_matches`` checked, on the first batch, that it reproduces the decoder's own ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captioning.models import DecoderWithAttention, DecoderWithRNN
from instructor.fastbeam import BeamStep, beam_step, beam_supports  # noqa: F401  (the plug-in's beam step)


def supports(decoder):
    """Only the kit's own decoders, exactly (a subclass may change ``forward``)."""
    return type(decoder) in (DecoderWithRNN, DecoderWithAttention)


def _lstm_step(gates, c):
    i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTMCell's gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class _AttentionLSTM(torch.autograd.Function):
    """The recurrent part of ``DecoderWithAttention`` over a length-sorted batch, with a hand-written backward.

    Per step t, for the n captions still running (rows :n): a2 = decoder_att(h), α = softmax(att(relu(att1 + a2))),
    z = sigmoid(f_beta(h)) ⊙ Σ_p α_p enc_p, LSTM gates = gi_t + W_iz z + W_hh h. The image side (att1, enc) is
    one row per *image*; the captions of one image are handled together, so each image's (P, A) and (P, C) blocks
    are read once per step for all its captions and no (n, P, A) tensor of the whole batch is formed.

    What autograd would do here costs more than the arithmetic: every ``x[:n]`` slice makes its backward zero-fill
    and copy a full-size gradient at every step, every per-step linear layer adds a rank-n weight-gradient update,
    and the (n, P, A) attention activations of all steps are kept. This backward accumulates into one gradient
    buffer per input, recomputes the attention activations image by image, and forms each weight gradient with one
    matrix product over all (caption, step) rows at the end.

    Inputs: att1 (B, P, A) = encoder_att(enc); enc (B, P, C); gi (L, 4D) word part of the gates incl. both
    biases, in packed order; h0, c0 (N, D); the weights; img (N,) image of each caption; running (list): how many
    captions run at each step.
    Outputs: hs (L, D), the hidden states of all steps in packed order (step by step, rows :n), and alphas (N, T, P).
    """

    @staticmethod
    def forward(ctx, att1, enc, gi, h0, c0, w_da, b_da, w_att, b_att, w_fb, b_fb, w_iz, w_hh, img, running):
        n_cap, p_dim = h0.size(0), enc.size(1)
        d_dim, c_dim, a_dim = h0.size(1), enc.size(2), att1.size(2)
        total = sum(running)
        groups = _groups(img, running)
        new = h0.new_empty
        hs, hp_all, cp_all, a2_all = new(total, d_dim), new(total, d_dim), new(total, d_dim), new(total, a_dim)
        al_all, ctx_all, g_all, z_all = new(total, p_dim), new(total, c_dim), new(total, c_dim), new(total, c_dim)
        gates_all, tc_all = new(total, 4 * d_dim), new(total, d_dim)
        alphas = h0.new_zeros(n_cap, len(running), p_dim)
        buf = new(max(idx.numel() for g in groups for _, idx in g), p_dim, a_dim)
        w = w_att.reshape(-1)
        h, c, off = h0, c0, 0
        for t, n in enumerate(running):
            sl = slice(off, off + n)
            hp, cp = hp_all[sl], cp_all[sl]
            hp.copy_(h[:n])
            cp.copy_(c[:n])
            a2 = torch.addmm(b_da, hp, w_da.t(), out=a2_all[sl])
            e = new(n, p_dim)
            for i, idx in groups[t]:
                m = idx.numel()
                x = torch.add(att1[i], a2[idx].unsqueeze(1), out=buf[:m]).relu_()
                e[idx] = torch.mv(x.view(m * p_dim, a_dim), w).view(m, p_dim)
            alpha = al_all[sl]
            alpha.copy_(torch.softmax(e.add_(b_att), dim=1))
            cv = ctx_all[sl]
            for i, idx in groups[t]:
                cv[idx] = alpha[idx] @ enc[i]
            g = torch.addmm(b_fb, hp, w_fb.t(), out=g_all[sl]).sigmoid_()
            z = torch.mul(g, cv, out=z_all[sl])
            gates = gates_all[sl]
            torch.addmm(gi[sl], z, w_iz.t(), out=gates)
            gates.addmm_(hp, w_hh.t())
            gates[:, : 2 * d_dim].sigmoid_()
            gates[:, 2 * d_dim : 3 * d_dim].tanh_()
            gates[:, 3 * d_dim :].sigmoid_()
            ig, fg, gg, og = gates.chunk(4, dim=1)
            c = fg * cp + ig * gg
            tc = torch.tanh(c, out=tc_all[sl])
            h = torch.mul(og, tc, out=hs[sl])
            alphas[:n, t] = alpha
            off += n
        ctx.groups, ctx.running, ctx.n_cap = groups, running, n_cap
        ctx.save_for_backward(
            att1,
            enc,
            w_da,
            w_att,
            b_att,
            w_fb,
            w_iz,
            w_hh,
            hp_all,
            cp_all,
            a2_all,
            al_all,
            ctx_all,
            g_all,
            z_all,
            gates_all,
            tc_all,
        )
        return hs, alphas

    @staticmethod
    def backward(ctx, d_hs, d_alphas):
        (
            att1,
            enc,
            w_da,
            w_att,
            b_att,
            w_fb,
            w_iz,
            w_hh,
            hp_all,
            cp_all,
            a2_all,
            al_all,
            ctx_all,
            g_all,
            z_all,
            gates_all,
            tc_all,
        ) = ctx.saved_tensors
        groups, running = ctx.groups, ctx.running
        need = ctx.needs_input_grad
        total, d_dim = hp_all.shape
        p_dim, a_dim = enc.size(1), att1.size(2)
        n_cap, steps = running[0], len(running)  # captions that run at all (rows :n_cap of ctx.n_cap)
        new = hp_all.new_empty
        dg_all, dgp_all, da2_all = new(total, 4 * d_dim), new(total, enc.size(2)), new(total, a_dim)
        d_att1 = torch.zeros_like(att1) if need[0] else None
        d_enc = torch.zeros_like(enc) if need[1] else None
        d_w_att = torch.zeros_like(w_att).reshape(-1)
        d_b_att = b_att.new_zeros(())
        buf = new(max(idx.numel() for g in groups for _, idx in g), p_dim, a_dim)
        w = w_att.reshape(-1)
        dh_next = dc_next = None
        off = total
        for t in range(steps - 1, -1, -1):
            n = running[t]
            off -= n
            sl = slice(off, off + n)
            dh = d_hs[sl].clone() if d_hs is not None else hp_all.new_zeros(n, d_dim)
            dc = hp_all.new_zeros(n, d_dim)
            if dh_next is not None:
                m = dh_next.size(0)
                dh[:m] += dh_next
                dc[:m] += dc_next
            dgates = dg_all[sl]
            dcp = _lstm_cell_backward(dh, dc, gates_all[sl], tc_all[sl], cp_all[sl], dgates)
            dz = dgates @ w_iz  # (n, C)
            dhp = dgates @ w_hh  # (n, D)
            g, cv, alpha = g_all[sl], ctx_all[sl], al_all[sl]
            torch.mul(dz, cv, out=dgp_all[sl]).mul_(g * (1 - g))
            dhp.addmm_(dgp_all[sl], w_fb)
            dctx = dz.mul_(g)
            d_alpha_t = d_alphas[:n, t] if d_alphas is not None else None
            da2 = da2_all[sl]
            _attention_backward(
                groups[t], dctx, d_alpha_t, alpha, a2_all[sl], att1, enc, w, buf, da2, (d_att1, d_enc, d_w_att, d_b_att)
            )
            dhp.addmm_(da2, w_da)
            dh_next, dc_next = dhp, dcp
        grads = {
            5: lambda: da2_all.t() @ hp_all,
            6: lambda: da2_all.sum(0),
            7: lambda: d_w_att.view_as(w_att),
            8: lambda: d_b_att.reshape(b_att.shape),
            9: lambda: dgp_all.t() @ hp_all,
            10: lambda: dgp_all.sum(0),
            11: lambda: dg_all.t() @ z_all,
            12: lambda: dg_all.t() @ hp_all,
        }
        dh0 = dc0 = None
        if need[3] or need[4]:
            dh0, dc0 = hp_all.new_zeros(ctx.n_cap, d_dim), hp_all.new_zeros(ctx.n_cap, d_dim)
            dh0[:n_cap], dc0[:n_cap] = dh_next, dc_next
        out = [d_att1, d_enc, dg_all if need[2] else None, dh0, dc0]
        out += [grads[k]() if need[k] else None for k in range(5, 13)]
        return (*out, None, None)


def _lstm_cell_backward(dh, dc, gates, tc, cp, dgates):
    """Backward of one LSTM step for its n running captions (nn.LSTMCell's gate order i, f, g, o).

    dh, dc (n, D): the gradients of the step's h and c (``dc`` is updated in place and returned as the gradient of
    the previous cell state); gates (n, 4D): the activated gates; tc (n, D) = tanh(c); cp (n, D): the previous cell
    state. Writes into ``dgates`` (n, 4D) the gradient of the gate pre-activations."""
    ig, fg, gg, og = gates.chunk(4, dim=1)
    d_i, d_f, d_g, d_o = dgates.chunk(4, dim=1)
    torch.mul(dh, tc, out=d_o).mul_(og * (1 - og))
    dc.addcmul_(dh, og * (1 - tc * tc))
    torch.mul(dc, gg, out=d_i).mul_(ig * (1 - ig))
    torch.mul(dc, cp, out=d_f).mul_(fg * (1 - fg))
    torch.mul(dc, ig, out=d_g).mul_(1 - gg * gg)
    return dc.mul_(fg)


def _attention_backward(groups_t, dctx, d_alpha_t, alpha, a2, att1, enc, w, buf, da2, acc):
    """Backward of one step's attention, ctx = Σ_p α_p enc_p with α = softmax(att(relu(att1 + a2))), for its n
    running captions, image by image (``groups_t``: (image, caption rows) pairs).

    dctx (n, C): the gradient of the context; d_alpha_t (n, P) or None: that of α; alpha (n, P), a2 (n, A): the
    step's saved activations; att1 (B, P, A), enc (B, P, C); w (A,) = att's weight; buf: scratch (≥ m, P, A).
    Writes into ``da2`` (n, A) the gradient of a2; adds into ``acc`` = (d_att1 (B, P, A) or None, d_enc (B, P, C)
    or None, d_w_att (A,), d_b_att ()), accumulated over the steps."""
    d_att1, d_enc, d_w_att, d_b_att = acc
    n, p_dim = alpha.shape
    a_dim = att1.size(2)
    d_alpha = dctx.new_empty(n, p_dim)
    for i, idx in groups_t:
        d_alpha[idx] = dctx[idx] @ enc[i].t()
        if d_enc is not None:
            d_enc[i].addmm_(alpha[idx].t(), dctx[idx])
    if d_alpha_t is not None:
        d_alpha += d_alpha_t
    de = (d_alpha - (d_alpha * alpha).sum(dim=1, keepdim=True)).mul_(alpha)  # softmax backward
    d_b_att.add_(de.sum())  # in place: the caller's accumulator
    for i, idx in groups_t:
        m = idx.numel()
        x = torch.add(att1[i], a2[idx].unsqueeze(1), out=buf[:m]).relu_()  # recomputed
        de_i = de[idx]
        d_w_att.addmv_(x.view(m * p_dim, a_dim).t(), de_i.reshape(-1))
        x = x.sign_().mul_(w).mul_(de_i.unsqueeze(2))  # d pre-activation (m, P, A)
        if d_att1 is not None:
            d_att1[i] += x.sum(dim=0)
        da2[idx] = x.sum(dim=1)


def _groups(img, running):
    """Per step, (image, rows of its captions among the first n) for each image with a running caption."""
    rows = {}
    for j, i in enumerate(img.tolist()):
        rows.setdefault(i, []).append(j)
    out = []
    for n in running:
        out.append([(i, torch.tensor([j for j in r if j < n], device=img.device)) for i, r in rows.items() if r[0] < n])
    return out


def plan(caplens, group=1):
    """caplens (B·group,) → (order (N,): length-sorted caption order, img (N,): each sorted caption's image, both
    on caplens' device; running: per step, how many captions still run). Reads the lengths (a copy to the host)."""
    lengths, order = caplens.reshape(-1).sort(descending=True)
    decode = (lengths - 1).tolist()
    return order, order // group, [sum(d > t for d in decode) for t in range(max(decode))]


def scores(decoder, encoder_out, captions, caplens, group=1, planned=None):
    """Same contract as ``solver.decoder_scores`` after grouping.

    Args:
        encoder_out: (B, S, S, C) or (B, P, C), one row per image.
        captions: (B·group, T), the captions of image b at rows b·group … b·group + group − 1.
        caplens: (B·group,).
        planned: ``plan(caplens, group)`` when already made (None: made here).
    Returns: scores (L, V) packed, targets (L,), alphas (B·group, T', P) in length-sorted order or None.
    """
    n_img = encoder_out.size(0)
    enc = encoder_out.reshape(n_img, -1, decoder.encoder_dim)  # (B, P, C)
    order, img, running = planned if planned is not None else plan(caplens, group)
    captions = captions[order]
    steps = len(running)

    cell = decoder.decode_step
    w_ih, w_hh = cell.weight_ih, cell.weight_hh
    bias = cell.bias_ih + cell.bias_hh
    e_dim = decoder.embedding.embedding_dim

    alphas = None
    if decoder.has_attention and _manual_backward(enc):
        h, c = (x[img] for x in decoder.init_hidden_state(enc))  # (N, D)
        att = decoder.attention
        # the word part of the gates, only where a word is read: (L, 4D) in packed order, one matrix product
        words = _packed(captions, running)
        gi = F.linear(decoder.embedding(words), w_ih[:, :e_dim], bias)
        hs, alphas = _AttentionLSTM.apply(
            att.encoder_att(enc),
            enc,
            gi,
            h,
            c,
            att.decoder_att.weight,
            att.decoder_att.bias,
            att.att.weight,
            att.att.bias,
            decoder.f_beta.weight,
            decoder.f_beta.bias,
            w_ih[:, e_dim:],
            w_hh,
            img,
            running,
        )
        return decoder.fc(decoder.dropout(hs)), _packed(captions, running, 1), alphas

    emb = decoder.embedding(captions)  # (N, T, E)
    gi_words = F.linear(emb[:, :steps], w_ih[:, :e_dim], bias)  # (N, steps, 4D): all steps at once
    if decoder.has_attention:  # on a GPU or under autocast: autograd through the step-by-step loop
        h, c = (x[img] for x in decoder.init_hidden_state(enc))  # (N, D)
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
    return scores_, _packed(captions, running, 1), alphas


def _packed(captions, running, shift=0):
    """captions (N, T) sorted longest first → (L,) word t + shift of rows :running[t], step by step, as
    ``pack_padded_sequence`` packs them; the index is built on the host (no copy of the lengths back to it)."""
    rows = [i for n in running for i in range(n)]
    cols = [t + shift for t, n in enumerate(running) for _ in range(n)]
    index = torch.tensor([rows, cols], dtype=torch.long, device=captions.device)
    return captions[index[0], index[1]]


def _manual_backward(enc):
    """The hand-written backward (``_AttentionLSTM``) on a CPU in fp32; elsewhere autograd through the loop."""
    return (
        enc.device.type == "cpu"
        and enc.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
    )
