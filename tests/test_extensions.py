"""Beyond the course: the adaptive-attention decoder, the COCO metrics, the pointing game."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import captioning.evaluation.cocoeval as cocoeval
from captioning.adaptive import DecoderWithAdaptiveAttention
from captioning.decoding import beam_search
from captioning.evaluation.evaluate import grounding

CFG = dict(vocab_size=20, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.0)


def test_adaptive_decoder_contract_and_sentinel_share():
    torch.manual_seed(0)
    dec = DecoderWithAdaptiveAttention(CFG, encoder_dim=6).eval()
    enc = torch.randn(3, 3, 3, 6)
    caps = torch.randint(1, 20, (3, 7))
    lens = torch.tensor([7, 4, 3])
    preds, caps_sorted, dec_lens, alphas, sort_ind = dec(enc, caps, lens)
    assert preds.shape == (3, 6, 20) and alphas.shape == (3, 6, 10)
    live = alphas.sum(2) > 0
    torch.testing.assert_close(alphas.sum(2)[live], torch.ones(int(live.sum())))
    beta = alphas[..., -1][live]
    assert ((beta > 0) & (beta < 1)).all()
    # forward == one_step by hand
    e = enc[sort_ind].reshape(3, 9, 6)
    h, c = dec.init_hidden_state(e)
    for t in range(max(dec_lens)):
        p, a, h, c = dec.one_step(dec.embedding(caps_sorted[:, t]), e, h, c)
        m = torch.tensor(dec_lens) > t
        torch.testing.assert_close(preds[m, t], p[m], rtol=1e-5, atol=1e-6)
    # it learns, and beam search returns P + 1 columns per word
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    dec.train()
    for _ in range(150):
        preds, caps_sorted, dec_lens, _, _ = dec(enc, caps, lens)
        loss = F.cross_entropy(
            pack_padded_sequence(preds, dec_lens, batch_first=True).data,
            pack_padded_sequence(caps_sorted[:, 1:], dec_lens, batch_first=True).data,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2
    wm = {"<pad>": 0, "<start>": 18, "<end>": 19}
    out = beam_search(dec.eval(), enc, wm, beam_size=3, max_len=10)
    for cap in out:
        assert cap.alphas is None or cap.alphas.shape == (len(cap.tokens), 10)


def test_pointing_game_hits_misses_and_chance():
    rev = {1: "red", 2: "circle", 3: "a", 4: "square"}
    objs = [
        [
            {"shape": "circle", "color": "red", "size": "large", "bbox": [0, 0, 32, 32]},  # top-left quarter
            {"shape": "square", "color": "blue", "size": "small", "bbox": [32, 32, 64, 64]},
        ]
    ]  # bottom-right
    on = torch.zeros(4)
    on[0] = 1.0  # peak in the top-left cell of a 2x2 grid
    off = torch.zeros(4)
    off[3] = 1.0
    hit = grounding([[3, 1, 2]], [torch.stack([off, on, on])], objs, rev, 64)
    assert hit["shape"] == 1.0 and hit["color"] == 1.0 and hit["n_words"] == 2 and hit["chance"] == 0.25
    assert hit["misses"] == {"other_object": 0, "background": 0, "next_to_named": 0}
    top_right = torch.zeros(4)
    top_right[1] = 1.0
    miss = grounding([[1, 2, 4]], [torch.stack([off, top_right, on])], objs, rev, 64)
    assert miss["all"] == 0.0 and miss["n_words"] == 3  # "square" now names the blue square: scored too
    # red -> the blue square, circle -> an empty cell beside it, square -> the red circle
    assert miss["misses"] == {"other_object": 2, "background": 1, "next_to_named": 1}
    # "red circle" is the first object phrase of an image with two kinds of object, "square" a later one
    assert hit["by_position"] == {
        "only_object": {"rate": None, "n": 0},
        "first_named": {"rate": 1.0, "n": 2},
        "named_later": {"rate": None, "n": 0},
    }
    assert miss["by_position"]["first_named"] == {"rate": 0.0, "n": 2}
    assert miss["by_position"]["named_later"] == {"rate": 0.0, "n": 1}
    assert hit["by_size"] == {
        "large": {"rate": 1.0, "n": 2},
        "small": {"rate": None, "n": 0},
        "mixed": {"rate": None, "n": 0},
    }
    assert miss["by_size"]["large"] == {"rate": 0.0, "n": 2} and miss["by_size"]["small"] == {"rate": 0.0, "n": 1}
    alone = grounding([[3, 1, 2]], [torch.stack([off, on, off])], [objs[0][:1]], rev, 64)
    assert alone["by_position"]["only_object"] == {"rate": 0.5, "n": 2}  # red hit, circle missed


def test_coco_metrics_with_the_python_tokenizer(monkeypatch):
    monkeypatch.setattr(cocoeval, "java_available", lambda: False)
    refs = {1: ["A red circle, on a dark background.", "a red circle"], 2: ["two blue squares", "blue squares"]}
    res = cocoeval.coco_metrics(refs, {1: "a red circle", 2: "two blue squares"})
    assert res["tokenizer"] == "python" and res["meteor"] is None
    assert any("METEOR skipped" in n for n in res["notes"]) and any("SPICE" in n for n in res["notes"])
    assert res["bleu1"] == pytest.approx(1.0, abs=1e-6) and res["rouge_l"] == pytest.approx(1.0)
    assert res["cider_d"] > 0
    assert cocoeval._python_tokenize({0: ["A red circle, on grey."]}) == {0: ["a red circle on grey"]}
