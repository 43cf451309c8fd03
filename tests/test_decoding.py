"""Beam search: greedy = beam 1, batched = one image at a time, the no-<end> case; BLEU."""
import pytest
import torch

from captioning.decoding import beam_search
from captioning.metrics import bleu, strip_special
from captioning.models import DecoderWithAttention, DecoderWithRNN

V, C = 20, 6
WORD_MAP = {"<pad>": 0, **{f"w{i}": i for i in range(1, V - 3)}, "<unk>": V - 3, "<start>": V - 2, "<end>": V - 1}
CFG = dict(vocab_size=V, embed_dim=8, decoder_dim=16, attention_dim=8, dropout=0.5)


_TRAINED = {}


def make(cls, end_bias=0.0):
    """A decoder briefly trained on 12 images with captions of 1 to 10 words, so that decoding gives captions
    of different lengths (a random decoder ends at once or never)."""
    if cls not in _TRAINED:
        torch.manual_seed(0)
        dec = cls(dict(CFG, dropout=0.0), encoder_dim=C)
        enc = torch.randn(12, 3, 3, C)
        lens = torch.arange(12) % 10 + 3
        caps = torch.zeros(12, 14, dtype=torch.long)
        for i, n in enumerate(lens.tolist()):
            caps[i, 0], caps[i, n - 1] = WORD_MAP["<start>"], WORD_MAP["<end>"]
            caps[i, 1: n - 1] = torch.randint(1, V - 3, (n - 2,))
        opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
        from captioning.solver import decoder_scores

        for _ in range(60):
            with torch.enable_grad():
                scores, targets, _ = decoder_scores(dec, enc, caps[:, None], lens[:, None])
                loss = torch.nn.functional.cross_entropy(scores, targets)
                opt.zero_grad()
                loss.backward()
                opt.step()
        _TRAINED[cls] = dec.state_dict()
    dec = cls(CFG, encoder_dim=C)
    dec.load_state_dict(_TRAINED[cls])
    with torch.no_grad():
        dec.fc.bias[WORD_MAP["<end>"]] += end_bias
    return dec.eval()


def greedy(dec, enc, max_len):
    """The obvious one-image greedy loop, independent of beam_search's bookkeeping."""
    out = []
    for i in range(enc.size(0)):
        e = enc[i: i + 1].reshape(1, -1, C)
        h, c = dec.init_hidden_state(e)
        word, toks = torch.tensor([WORD_MAP["<start>"]]), []
        for _ in range(max_len):
            emb = dec.embedding(word)
            preds = dec.one_step(emb, e, h, c) if dec.has_attention else dec.one_step(emb, h, c)
            preds, h, c = preds[0], preds[-2], preds[-1]
            word = preds.argmax(1)
            if word.item() == WORD_MAP["<end>"]:
                break
            toks.append(word.item())
        out.append(toks)
    return out


@pytest.fixture(params=[DecoderWithRNN, DecoderWithAttention], ids=["rnn", "attention"])
def cls(request):
    return request.param


@torch.no_grad()
def test_beam_one_is_greedy(cls):
    dec = make(cls, end_bias=0.0)
    torch.manual_seed(1)
    enc = torch.randn(12, 3, 3, C)
    got = [c.tokens for c in beam_search(dec, enc, WORD_MAP, beam_size=1, max_len=15)]
    assert got == greedy(dec, enc, 15)
    assert len({len(t) for t in got}) > 1, "test needs captions of different lengths"


@torch.no_grad()
def test_batched_equals_one_image_at_a_time(cls):
    dec = make(cls, end_bias=0.0)
    enc = torch.randn(10, 3, 3, C)
    batched = beam_search(dec, enc, WORD_MAP, beam_size=4, max_len=15)
    single = [beam_search(dec, enc[i: i + 1], WORD_MAP, beam_size=4, max_len=15)[0] for i in range(10)]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    for b, s in zip(batched, single):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert b.finished == s.finished
        if b.alphas is not None:
            assert b.alphas.shape == (len(b.tokens), 9)
            torch.testing.assert_close(b.alphas, s.alphas)
            torch.testing.assert_close(b.alphas.sum(1), torch.ones(len(b.tokens)))


@torch.no_grad()
def test_beam_search_finds_at_least_greedy_score(cls):
    dec = make(cls, end_bias=0.0)
    enc = torch.randn(8, 3, 3, C)
    g = beam_search(dec, enc, WORD_MAP, beam_size=1, max_len=15)
    b = beam_search(dec, enc, WORD_MAP, beam_size=5, max_len=15)
    for gg, bb in zip(g, b):
        if gg.finished:
            assert bb.score >= gg.score - 1e-5


@torch.no_grad()
def test_no_end_within_max_len_returns_best_unfinished(cls):
    dec = make(cls, end_bias=-1e4)  # <end> is never chosen
    enc = torch.randn(3, 3, 3, C)
    for beam in (1, 3):
        caps = beam_search(dec, enc, WORD_MAP, beam_size=beam, max_len=7)
        assert all(not c.finished and len(c.tokens) == 7 for c in caps)
        assert all(WORD_MAP["<end>"] not in c.tokens for c in caps)


def test_bleu_matches_known_values_and_strips_special_tokens():
    refs = [[["a", "red", "circle", "on", "grey"], ["a", "red", "circle"]]]
    short = bleu(refs, [["a", "red", "circle"]])  # equals the 2nd reference; too short for any 4-gram
    assert short["bleu3"] == pytest.approx(1.0) and short["bleu4"] == pytest.approx(0.0, abs=1e-9)
    perfect = bleu(refs, [["a", "red", "circle", "on", "grey"]])
    assert perfect["bleu4"] == pytest.approx(1.0)
    assert strip_special([WORD_MAP["<start>"], 3, 4, WORD_MAP["<end>"], 0, 0], WORD_MAP) == [3, 4]
    with pytest.raises(ValueError):
        bleu(refs, [])
