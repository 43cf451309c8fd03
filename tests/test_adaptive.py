"""The adaptive-attention decoder's designs (``captioning.adaptive.DESIGNS``): β's shape and range, the cfg switch,
one_step agreeing with forward (beam search relies on it), and a checkpoint of each design loading as trained.
Tiny sizes: seconds on a CPU."""

from __future__ import annotations

import math

import pytest
import torch

from captioning.adaptive import (
    ANNEAL_STEPS,
    DESIGNS,
    GROW_MAX,
    LOG_COST,
    LOOK_COST,
    DecoderWithAdaptiveAttention,
    look_cost,
    where_code,
)
from captioning.internals.errors import KitError

CFG = {"embed_dim": 8, "decoder_dim": 12, "attention_dim": 6, "vocab_size": 11, "dropout": 0.0}
C, SIDE = 5, 3  # encoder channels, grid side: P = 9 regions


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(4, SIDE, SIDE, C, generator=g)
    caps = torch.randint(4, CFG["vocab_size"], (4, 7), generator=g)
    return enc, caps, torch.tensor([7, 4, 6, 5])


@pytest.mark.parametrize("design", list(DESIGNS))
def test_beta_is_the_last_column_of_a_distribution(design):
    torch.manual_seed(0)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design=design), encoder_dim=C).train()
    enc, caps, lens = _batch()
    preds, _, dec_lens, alphas, _ = dec(enc, caps, lens)
    assert preds.shape == (4, 6, CFG["vocab_size"])
    assert alphas.shape == (4, 6, SIDE * SIDE + 1)
    for row, n in enumerate(dec_lens):  # past a caption's end the row stays 0
        assert torch.allclose(alphas[row, :n].sum(dim=1), torch.ones(n), atol=1e-5)
        beta = alphas[row, :n, -1]
        assert ((beta > 0) & (beta < 1)).all()
    preds.sum().backward()  # every design trains end to end
    assert dec.att_v.weight.grad is not None and dec.att_v.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("design", list(DESIGNS))
def test_one_step_replays_forward(design):
    """Beam search runs ``init_hidden_state`` + ``one_step``; it must give forward's scores (the "look" designs carry
    the previous word's attended regions in ``c``)."""
    torch.manual_seed(1)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design=design), encoder_dim=C).eval()
    enc, caps, lens = _batch(1)
    with torch.no_grad():
        preds, caps_sorted, dec_lens, alphas, sort_ind = dec(enc, caps, lens)
        e = enc.reshape(4, -1, C)[sort_ind]
        h, c = dec.init_hidden_state(e)
        assert h.shape == (4, CFG["decoder_dim"])
        for t in range(dec_lens[0]):
            p, a, h, c = dec.one_step(dec.embedding(caps_sorted[:, t]), e, h, c)
            assert torch.allclose(p[0], preds[0, t], atol=1e-5)
            assert torch.allclose(a[0], alphas[0, t], atol=1e-6)


def test_the_design_switch():
    paper = DecoderWithAdaptiveAttention(CFG, encoder_dim=C)  # no key: the paper's design, as old checkpoints
    assert paper.design == "paper"
    assert {"encode_global", "sentinel_x", "sentinel_h"} <= set(dict(paper.named_children()))
    look = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="look_word"), encoder_dim=C)
    names = set(dict(look.named_children()))
    assert "feed" in names and "sentinel_w" in names and "encode_global" not in names
    with pytest.raises(ValueError, match="adaptive_design 'glance'"):
        DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="glance"), encoder_dim=C)


def test_look_designs_do_not_read_the_mean_feature():
    """h0 of "look" is the same for every image (the image reaches it only through attention); the paper's is not."""
    torch.manual_seed(2)
    for design, depends in (("paper", True), ("look", False), ("where", False), ("sat", False)):
        dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design=design), encoder_dim=C).eval()
        enc, _, _ = _batch(2)
        h1, _ = dec.init_hidden_state(enc)
        h2, _ = dec.init_hidden_state(enc + 1.0)
        assert (not torch.allclose(h1, h2)) is depends, design


def test_where_code_codes_each_cell_apart():
    code = where_code(16)
    assert code.shape == (16, 32)
    assert torch.cdist(code, code).add(torch.eye(16) * 9).min() > 0.1  # no two cells share a code
    assert torch.allclose(where_code(16)[5], where_code(16, dtype=torch.float64)[5].float(), atol=1e-6)
    with pytest.raises(ValueError, match="square grid.*P = 10"):
        where_code(10)


def test_where_feeds_back_the_place_not_the_content():
    """After one step, the "where" state differs between two attention maps but not between two images whose
    attended regions differ only in content (same scores, other features)."""
    torch.manual_seed(3)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="where_raw"), encoder_dim=C).eval()
    enc = torch.randn(1, SIDE * SIDE, C)
    h, c = dec.init_hidden_state(enc)
    emb = dec.embedding(torch.tensor([4]))
    _, a1, _, c1 = dec.one_step(emb, enc, h, c)
    fed = c1[:, CFG["decoder_dim"] :]
    assert torch.allclose(fed, a1[:, :-1] @ where_code(SIDE * SIDE), atol=1e-6)


def test_look_cost_is_the_mean_share_of_looking_over_decoded_words():
    alphas = torch.zeros(2, 3, 5)
    alphas[0, 0] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6])  # looked 0.4
    alphas[0, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])  # looked 0
    alphas[1, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])  # looked 1; the rest are past the captions' ends
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_cost"), encoder_dim=C)
    assert torch.isclose(look_cost(dec, alphas), torch.tensor(LOOK_COST * 1.4 / 3))
    ramp = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_cost_ramp"), encoder_dim=C)
    assert look_cost(ramp, alphas) == 0  # no batch trained yet
    ramp.trained_batches.fill_(ANNEAL_STEPS // 2)
    assert torch.isclose(look_cost(ramp, alphas), torch.tensor(LOOK_COST * 1.4 / 3 / 2), rtol=0.02)
    ramp.trained_batches.fill_(10 * ANNEAL_STEPS)
    assert torch.isclose(look_cost(ramp, alphas), torch.tensor(LOOK_COST * 1.4 / 3))  # the ramp stops at LOOK_COST
    grow = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_cost_grow"), encoder_dim=C)
    grow.trained_batches.fill_(ANNEAL_STEPS)
    assert torch.isclose(look_cost(grow, alphas), torch.tensor(LOOK_COST * 1.4 / 3))
    grow.trained_batches.fill_(10 * ANNEAL_STEPS)  # grows on to GROW_MAX times the price, then stops
    assert torch.isclose(look_cost(grow, alphas), torch.tensor(GROW_MAX * LOOK_COST * 1.4 / 3))
    log = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_logcost_ramp"), encoder_dim=C)
    log.trained_batches.fill_(ANNEAL_STEPS)
    want = LOG_COST * (-math.log(0.6) - math.log(1.0) - math.log(1e-6)) / 3  # β = 0 counts as 1e-6
    assert torch.isclose(look_cost(log, alphas), torch.tensor(want, dtype=torch.float32))
    late = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_logcost_late"), encoder_dim=C)
    late.trained_batches.fill_(ANNEAL_STEPS)
    assert look_cost(late, alphas) == 0  # nothing charged during the first ANNEAL_STEPS batches
    late.trained_batches.fill_(3 * ANNEAL_STEPS)
    assert torch.isclose(look_cost(late, alphas), torch.tensor(want, dtype=torch.float32))
    for design in DESIGNS:
        if "cost" not in design:
            assert (
                look_cost(DecoderWithAdaptiveAttention(dict(CFG, adaptive_design=design), encoder_dim=C), alphas) == 0
            )
    assert look_cost(dec, None) == 0


def test_the_word_query_sees_the_word_just_read():
    """sat_word*: the same state and regions with another input word give another attention; plain sat's attention
    is made from h_{t-1} alone, as the attention decoder's."""
    torch.manual_seed(5)
    enc = torch.randn(2, 9, C)
    words = torch.randn(2, CFG["embed_dim"])
    for design, differs in (("sat_word_cost_ramp", True), ("sat_cost_ramp", False)):
        dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design=design), encoder_dim=C).eval()
        h, c = dec.init_hidden_state(enc)
        _, a1, _, _ = dec.one_step(words, enc, h, c)
        _, a2, _, _ = dec.one_step(-words, enc, h, c)
        assert (not torch.allclose(a1, a2)) == differs, design


def test_the_deep_output_reads_the_context():
    """sat_out*: with the LSTM's state fixed, another context (other regions) changes the word scores of the same step
    through the output layer; without "_out" the scores of that step depend on the regions only through the LSTM."""
    torch.manual_seed(6)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_out_cost_ramp"), encoder_dim=C).eval()
    enc = torch.randn(2, 9, C)
    h, c = dec.init_hidden_state(enc)
    words = torch.randn(2, CFG["embed_dim"])
    with torch.no_grad():
        dec.decode_step.weight_ih.zero_()  # the LSTM no longer reads the context: only the output path is left
        p1, _, _, _ = dec.one_step(words, enc, h, c)
        p2, _, _, _ = dec.one_step(words, 2 * enc, h, c)
        assert not torch.allclose(p1, p2)
        plain = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_cost_ramp"), encoder_dim=C).eval()
        plain.decode_step.weight_ih.zero_()
        q1, _, _, _ = plain.one_step(words, enc, h, c)
        q2, _, _, _ = plain.one_step(words, 2 * enc, h, c)
        assert torch.allclose(q1, q2)


def test_a_hard_look_feeds_the_regions_or_the_sentinel_never_a_mix():
    """sat_hard*: in eval the context is the regions' renormalised average where β < 0.5, else the sentinel's
    projection; in training the draw varies, and the loss still reaches the sentinel's score (straight through)."""
    torch.manual_seed(7)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_hard_logcost_late"), encoder_dim=C)
    enc, words = torch.randn(64, 9, C), torch.randn(64, CFG["embed_dim"])
    h, c = dec.init_hidden_state(enc)
    seen = {}
    dec.f_beta.register_forward_hook(lambda m, args, out: seen.update(context=args[0]))
    hook = dec.decode_step.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    dec.eval()
    with torch.no_grad():
        _, alpha, _, _ = dec.one_step(words, enc, h, c)
    hook.remove()
    beta = alpha[:, -1:]
    regions = (enc * (alpha[:, :-1] / (1 - beta)).unsqueeze(2)).sum(dim=1)
    sentinel = dec.sentinel_ctx(c[:, CFG["decoder_dim"] :])
    gate = torch.sigmoid(dec.f_beta(h))
    want = torch.where(beta < 0.5, regions, sentinel) * gate
    assert torch.allclose(seen["x"][:, CFG["embed_dim"] :], want, atol=1e-5)
    dec.train()
    torch.manual_seed(8)
    p1, _, _, _ = dec.one_step(words, enc, h, c)
    preds, _, _, _ = dec.one_step(words, enc, h, c)
    assert not torch.allclose(p1, preds)  # another draw
    preds.logsumexp(dim=1).mean().backward()  # the words' loss alone, without the price
    assert dec.att_s.bias.grad.abs().sum() > 0  # the sentinel's score (s is zero at the first word)


def test_the_look_cost_moves_attention_to_the_sentinel():
    """With only the look cost to lower, a few steps of SGD raise β: the cost's gradient reaches the scores."""
    torch.manual_seed(4)
    dec = DecoderWithAdaptiveAttention(dict(CFG, adaptive_design="sat_cost"), encoder_dim=C).train()
    opt = torch.optim.SGD(dec.parameters(), lr=1.0)
    enc, caps, lens = _batch(4)
    betas = []
    for _ in range(5):
        alphas = dec(enc, caps, lens)[3]
        betas.append(float(alphas.detach()[..., -1].sum() / (alphas.detach().sum(dim=2) > 0).sum()))
        opt.zero_grad()
        look_cost(dec, alphas).backward()
        opt.step()
    assert all(b > a for a, b in zip(betas, betas[1:])), betas


def test_make_cfg_names_a_bad_design():
    from captioning.config import make_cfg

    assert make_cfg()["adaptive_design"] == "paper"
    with pytest.raises(KitError, match="adaptive_design"):
        make_cfg(adaptive_design="glance")


@pytest.mark.parametrize("design", list(DESIGNS))
def test_a_checkpoint_of_each_design_loads(design, tmp_path):
    from captioning.checkpoints import load_checkpoint, save_checkpoint
    from captioning.config import make_cfg
    from captioning.encoder import Encoder
    from captioning.solver import build_decoder, models_from_checkpoint

    encoder = Encoder(SIDE, weights=None, arch="shapes_cnn")
    cfg = make_cfg(
        CFG,
        decoder="adaptive",
        adaptive_design=design,
        encoder="shapes_cnn",
        encoder_weights=None,
        encoded_image_size=SIDE,
        data_folder=str(tmp_path),
        data_name="tiny",
    )
    cfg.pop("vocab_size")
    torch.manual_seed(3)
    dec = build_decoder(dict(cfg), CFG["vocab_size"], encoder.encoder_dim)
    words = {w: i for i, w in enumerate(["<pad>", "<unk>", "<start>", "<end>"] + [f"w{i}" for i in range(7)])}
    path = str(tmp_path / "ckpt.pth.tar")
    save_checkpoint(
        {
            "format": 1,
            "cfg": cfg,
            "kind": "AdaptiveAttention",
            "decoder_type": "adaptive",
            "epoch": 0,
            "word_map": words,
            "word_map_id": "x",
            "vocab_size": CFG["vocab_size"],
            "encoder_dim": encoder.encoder_dim,
            "decoder_state": dec.state_dict(),
            "encoder_state": encoder.state_dict(),
            "decoder_optimizer": None,
            "history": [],
            "best_bleu4": 0.0,
            "epochs_since_improvement": 0,
        },
        path,
    )
    _, loaded, _, loaded_cfg = models_from_checkpoint(load_checkpoint(path))
    assert loaded.design == design == loaded_cfg["adaptive_design"]
    for k, v in dec.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_beta_figure_draws_one_bar_per_word():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captioning.evaluation.beta_figure import beta_figure

    words = ["a", "red", "circle", "on", "a", "dark", "background"]
    betas = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.95, 0.4, 0.7])
    fig = beta_figure(words, betas, visual_words={"red", "circle"})
    ax = fig.axes[0]
    heights = [round(p.get_height(), 4) for p in ax.patches]
    assert heights == [round(float(b), 4) for b in betas]
    assert [t.get_text() for t in ax.get_xticklabels()] == words
    colours = {p.get_facecolor() for p, w in zip(ax.patches, words) if w in ("red", "circle")}
    assert len(colours) == 1 and colours != {ax.patches[0].get_facecolor()}  # visual words stand out
    fig.canvas.draw()  # renders
    plt.close(fig)
    with pytest.raises(ValueError, match="3 values but words has 7"):
        beta_figure(words, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"betas\[1\].*'red'"):
        beta_figure(words, [0.1, 1.5, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_word_classes_and_beta_by_class():
    from captioning.evaluation.metrics import beta_by_class, word_class

    assert [word_class(w) for w in ("red", "stars", "cross", "a", "of", "small", "picture")] == [
        "shape/colour",
        "shape/colour",
        "shape/colour",
        "function",
        "function",
        "other",
        "other",
    ]
    al = torch.zeros(4, 6)
    al[:, -1] = torch.tensor([0.9, 0.1, 0.3, 0.5])
    got = beta_by_class([["a", "red", "circle", "small"], ["a"]], [al, None])
    assert got["function"] == {"beta": pytest.approx(0.9), "n": 1}
    assert got["shape/colour"] == {"beta": pytest.approx(0.2), "n": 2}
    assert got["other"] == {"beta": pytest.approx(0.5), "n": 1}


def test_test_reports_beta_by_word_class_for_the_adaptive_decoder(shapes_data, tmp_path):
    """evaluate (what test.ipynb and `captioning test` run) gives β by word class of the generated words, and the
    notebook's table prints it."""
    from captioning.evaluation.evaluate import evaluate
    from captioning.notebooks import bleu_table
    from captioning.solver import fit

    cfg = dict(
        data_folder=str(shapes_data.data_folder),
        data_name=shapes_data.data_name,
        decoder="adaptive",
        encoder_weights=None,
        encoded_image_size=2,
        embed_dim=16,
        decoder_dim=24,
        attention_dim=16,
        batch_size=40,
        epochs=1,
        max_train_images=10,
        max_val_images=4,
        workers=0,
        print_freq=0,
        output_dir=str(tmp_path),
        recalibrate_images=40,
        progress=False,
        device="cpu",
    )
    res = evaluate(
        fit(cfg)["best_checkpoint"], "TEST", beam_size=2, max_images=4, progress=False, coco=False, keep_alphas=True
    )
    by_class = res["beta_by_class"]
    words = sum(len(a) for a in res["alphas"])
    assert set(by_class) == {"shape/colour", "function", "other"} and sum(v["n"] for v in by_class.values()) == words
    assert all(v["beta"] is None or 0 <= v["beta"] <= 1 for v in by_class.values())
    assert "mean β (the sentinel's share) of the generated words" in bleu_table(res)
