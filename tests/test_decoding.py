"""Beam search: greedy = beam 1, batched = one image at a time, the no-<end> case; BLEU."""

import pytest
import torch

from captioning.decoding import beam_search
from captioning.evaluation.metrics import bleu, strip_special
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
            caps[i, 1 : n - 1] = torch.randint(1, V - 3, (n - 2,))
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
        e = enc[i : i + 1].reshape(1, -1, C)
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
    single = [beam_search(dec, enc[i : i + 1], WORD_MAP, beam_size=4, max_len=15)[0] for i in range(10)]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    for b, s in zip(batched, single):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        assert b.finished == s.finished
        if b.alphas is not None:
            assert b.alphas.shape == (len(b.tokens), 9)
            torch.testing.assert_close(b.alphas, s.alphas)
            torch.testing.assert_close(b.alphas.sum(1), torch.ones(len(b.tokens)))


@torch.no_grad()
def test_one_step_decodes_in_chunks_that_fit_its_memory_budget(monkeypatch):
    """Through one_step (a student's decoder) each beam holds a copy of its image's encoder output: the images
    are decoded in chunks whose copies fit ONE_STEP_BYTES, with the captions of one search over all of them."""
    import captioning.decoding as decoding

    dec = make(DecoderWithAttention)
    enc = torch.randn(10, 3, 3, C)
    whole = beam_search(dec, enc, WORD_MAP, beam_size=4, max_len=15, fast=False)
    monkeypatch.setattr(decoding, "ONE_STEP_BYTES", 3 * 4 * 9 * C * enc.element_size())  # 3 images of 4 beams
    rows, real = [], dec.one_step
    monkeypatch.setattr(dec, "one_step", lambda emb, e, h, c: rows.append(e.size(0)) or real(emb, e, h, c))
    chunked = beam_search(dec, enc, WORD_MAP, beam_size=4, max_len=15, fast=False)
    assert max(rows) == 3 * 4
    assert [c.tokens for c in chunked] == [c.tokens for c in whole]
    assert [c.score for c in chunked] == pytest.approx([c.score for c in whole], abs=1e-5)


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
def test_length_penalty_only_changes_the_choice_among_finished_captions(cls):
    """α = 0 keeps the highest summed log-probability; α = 1 the highest mean (per token incl. <end>); the two
    choose from the same finished captions, so each wins on its own criterion and they differ somewhere."""
    dec = make(cls, end_bias=0.0)
    torch.manual_seed(2)
    enc = torch.randn(24, 3, 3, C)
    plain = beam_search(dec, enc, WORD_MAP, beam_size=5, max_len=15)
    normed = beam_search(dec, enc, WORD_MAP, beam_size=5, max_len=15, length_penalty=1.0)
    differ = 0
    for p, n in zip(plain, normed):
        assert p.finished and n.finished
        assert p.score >= n.score - 1e-5
        assert n.score / (len(n.tokens) + 1) >= p.score / (len(p.tokens) + 1) - 1e-5
        differ += p.tokens != n.tokens
    assert differ > 0, "test needs images where the two criteria disagree"
    assert sum(len(n.tokens) for n in normed) > sum(len(p.tokens) for p in plain)
    assert [c.tokens for c in beam_search(dec, enc, WORD_MAP, beam_size=5, max_len=15, length_penalty=0.0)] == [
        c.tokens for c in plain
    ]


def test_negative_length_penalty_is_refused():
    from captioning.internals.errors import KitError

    with pytest.raises(KitError, match="length_penalty must be a number >= 0"):
        beam_search(make(DecoderWithRNN), torch.randn(1, 3, 3, C), WORD_MAP, length_penalty=-1)


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


def test_bleu_is_imported_without_scipy_stats_and_scipy_still_works_after():
    """nltk's package import would pull in scipy.stats (0.7 s of every train and test); the kit hides it."""
    import subprocess
    import sys

    code = (
        "import sys; import captioning.evaluation.metrics as m; assert 'scipy.stats' not in sys.modules, 'scipy.stats'; "
        "assert m.bleu([[['a', 'b']]], [['a', 'b']])['bleu2'] == 1.0; "
        "import scipy.stats; assert scipy.stats.fisher_exact([[1, 2], [3, 4]]) is not None"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


# ------------------------------------------------------------------------------------ the fast step (instructor)
from captioning import decoding  # noqa: E402
from captioning.adaptive import DecoderWithAdaptiveAttention  # noqa: E402
from captioning.internals import plugins  # noqa: E402
from instructor import fastpath  # noqa: E402


def _same_captions(got, ref, rtol=1e-5):
    assert [c.tokens for c in got] == [c.tokens for c in ref]
    for g, r in zip(got, ref):
        assert g.finished == r.finished
        assert g.score == pytest.approx(r.score, rel=rtol, abs=1e-5)
        assert (g.alphas is None) == (r.alphas is None)
        if g.alphas is not None:
            torch.testing.assert_close(g.alphas, r.alphas, rtol=1e-4, atol=1e-5)


@pytest.fixture
def count_fast_steps(monkeypatch):
    """Decoding steps of beam_search that went through the fast step."""
    calls = []
    step = decoding._step

    def spy(decoder, words, encoder_out, h, c, fast_step=None):
        if fast_step is not None:
            calls.append(1)
        return step(decoder, words, encoder_out, h, c, fast_step)

    monkeypatch.setattr(decoding, "_step", spy)
    return calls


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("att_cls", [DecoderWithAttention, DecoderWithAdaptiveAttention], ids=["attention", "adaptive"])
@torch.no_grad()
def test_fast_beam_search_equals_the_one_step_path(att_cls, beam, count_fast_steps):
    dec = make(att_cls, end_bias=0.0)
    torch.manual_seed(2)
    enc = torch.randn(10, 3, 3, C)
    assert fastpath.beam_step(dec, enc.reshape(10, 9, C), beam) is not None
    plain = beam_search(dec, enc, WORD_MAP, beam_size=beam, max_len=15, fast=False)
    assert not count_fast_steps
    fast = beam_search(dec, enc, WORD_MAP, beam_size=beam, max_len=15)
    assert count_fast_steps, "the fast step was not used"
    _same_captions(fast, plain)
    assert len({len(c.tokens) for c in fast}) > 1, "test needs images that finish at different steps"
    assert any(not c.finished for c in fast) or all(c.finished for c in plain)
    # one image at a time, fast, gives the same as the batch
    single = [beam_search(dec, enc[i : i + 1], WORD_MAP, beam_size=beam, max_len=15)[0] for i in range(10)]
    _same_captions(single, plain)
    # never-ending captions: all images run to max_len together
    dec_never = make(att_cls, end_bias=-1e4)
    _same_captions(
        beam_search(dec_never, enc[:4], WORD_MAP, beam_size=beam, max_len=7),
        beam_search(dec_never, enc[:4], WORD_MAP, beam_size=beam, max_len=7, fast=False),
    )


class _Subclass(DecoderWithAttention):
    """A student's decoder: same layers, its own one_step (here: a different word distribution)."""

    def one_step(self, embeddings, encoder_out, h, c):
        preds, alpha, h, c = super().one_step(embeddings, encoder_out, h, c)
        return preds + torch.linspace(0, 3, preds.size(1)), alpha, h, c


@torch.no_grad()
def test_other_decoders_take_the_one_step_path(count_fast_steps, monkeypatch):
    enc = torch.randn(4, 3, 3, C)
    ref = make(DecoderWithAttention)
    sub = _Subclass(CFG, encoder_dim=C).eval()
    sub.load_state_dict(ref.state_dict())
    assert fastpath.beam_step(sub, enc.reshape(4, 9, C), 3) is None  # exact type only
    got = beam_search(sub, enc, WORD_MAP, beam_size=3, max_len=10)
    assert not count_fast_steps
    # what the subclass's own one_step decodes (greedy, checked by hand)
    assert [c.tokens for c in beam_search(sub, enc, WORD_MAP, beam_size=1, max_len=10)] == greedy(sub, enc, 10)
    assert [c.tokens for c in got] != [c.tokens for c in beam_search(ref, enc, WORD_MAP, beam_size=3, max_len=10)]
    assert count_fast_steps  # the kit's own class did use it
    count_fast_steps.clear()

    # the kit's class, but with a one_step the fast step does not reproduce: the probe sends it to one_step
    patched = make(DecoderWithAttention)
    own = patched.one_step
    patched.one_step = lambda e, x, h, c: (lambda p, a, h, c: (p * 2, a, h, c))(*own(e, x, h, c))
    assert fastpath.beam_step(patched, enc.reshape(4, 9, C), 3) is None
    beam_search(patched, enc, WORD_MAP, beam_size=3, max_len=10)
    # in training mode (dropout) and for the RNN decoder: one_step
    assert fastpath.beam_step(make(DecoderWithAttention).train(), enc.reshape(4, 9, C), 3) is None
    beam_search(make(DecoderWithRNN), enc, WORD_MAP, beam_size=3, max_len=10)
    assert not count_fast_steps
    # the student edition has no fast-path plug-in (as with CAPTIONING_PLUGINS=off): one_step
    monkeypatch.setenv(plugins.DISABLE_ENV, "off")
    _same_captions(
        beam_search(ref, enc, WORD_MAP, beam_size=3, max_len=10),
        beam_search(ref, enc, WORD_MAP, beam_size=3, max_len=10, fast=False),
    )
    assert not count_fast_steps


@pytest.mark.parametrize("att_cls", [DecoderWithAttention, DecoderWithAdaptiveAttention], ids=["attention", "adaptive"])
@torch.no_grad()
def test_fast_step_without_the_cpu_loop(att_cls, monkeypatch, count_fast_steps):
    """The fast step's batch-wide form (what a GPU or autocast runs: (n, k, P, A) at once, retired images copied
    out) gives the same captions as one_step."""
    init = fastpath.BeamStep.__init__

    def batch_wide(self, *a):
        init(self, *a)
        self.loop = False

    monkeypatch.setattr(fastpath.BeamStep, "__init__", batch_wide)
    dec = make(att_cls, end_bias=0.0)
    torch.manual_seed(3)
    enc = torch.randn(8, 3, 3, C)
    fast = beam_search(dec, enc, WORD_MAP, beam_size=3, max_len=15)
    assert count_fast_steps
    _same_captions(fast, beam_search(dec, enc, WORD_MAP, beam_size=3, max_len=15, fast=False))
    assert len({len(c.tokens) for c in fast}) > 1  # images retire at different steps
