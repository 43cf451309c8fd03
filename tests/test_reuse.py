"""``internals.reuse``: a linear layer given the same rows again returns its remembered output — and only then.

The student edition trains and decodes with the student's own decoder inside ``reuse_linear_outputs``; every
case here is one where a wrong reuse would silently change a student's numbers."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from captioning.decoding import beam_search
from captioning.internals.reuse import reuse_linear_outputs
from captioning.models import DecoderWithAttention, DecoderWithRNN
from captioning.solver import _loss, decoder_scores

CFG = dict(vocab_size=23, embed_dim=16, decoder_dim=24, attention_dim=12, dropout=0.0)
WORD_MAP = {"<pad>": 0, "<unk>": 1, "<start>": 2, "<end>": 3, **{f"w{i}": i for i in range(4, 23)}}


def _count_products(monkeypatch):
    """Patches F.linear (what nn.Linear.forward calls) to record the shape of every product really computed."""
    shapes, orig = [], torch.nn.functional.linear

    def counting(x, *a, **k):
        shapes.append(tuple(x.shape))
        return orig(x, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    return shapes


def test_prefix_rows_are_reused_and_equal(monkeypatch):
    m = nn.Sequential(nn.Linear(8, 5))
    x = torch.randn(6, 3, 8)
    shapes = _count_products(monkeypatch)
    with reuse_linear_outputs(m):
        full = m(x)
        part = m(x[:4])
        again = m(x[:4])
    assert shapes == [(6, 3, 8)]
    torch.testing.assert_close(part, orig_linear(m[0], x[:4]))
    assert torch.equal(again, full[:4])


def orig_linear(layer, x):
    return x @ layer.weight.T + layer.bias


@pytest.mark.parametrize(
    "second",
    ["fresh tensor, same values", "written in place", "more rows", "other rows", "other columns", "transposed"],
)
def test_anything_but_the_same_unchanged_rows_is_computed_again(second):
    lin = nn.Linear(8, 8)
    x = torch.randn(6, 8)
    with reuse_linear_outputs(lin):
        lin(x[:4])
        if second == "fresh tensor, same values":
            y = x[:4].clone()
        elif second == "written in place":
            x.mul_(2)
            y = x[:4]
        elif second == "more rows":
            y = x
        elif second == "other rows":
            y = x[1:5]
        elif second == "other columns":
            y = x[:4, :].flip(1)
        else:
            y = x[:4, :].T.contiguous().T
        got = lin(y)
    torch.testing.assert_close(got, orig_linear(lin, y))


def test_freed_memory_at_the_same_address_is_not_mistaken_for_the_last_input():
    """In no_grad, a loop's temporaries are freed and the next one often gets the same address."""
    lin = nn.Linear(32, 32)
    with torch.no_grad(), reuse_linear_outputs(lin):
        for _ in range(20):
            x = torch.randn(4, 32)
            torch.testing.assert_close(lin(x), orig_linear(lin, x))
            del x


def test_layers_are_restored_also_after_an_error():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(RuntimeError), reuse_linear_outputs(m):
        m(torch.randn(2, 4))
        raise RuntimeError("student code failed")
    assert all("forward" not in vars(layer) and not hasattr(layer, "_reuse_memo") for layer in m)


def test_subclasses_and_patched_layers_are_left_alone():
    class Mine(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 0

    own = nn.Linear(4, 4)
    own.forward = lambda x: x  # a student's own replacement
    m = nn.ModuleList([Mine(4, 4), own])
    with reuse_linear_outputs(m):
        assert torch.equal(m[0](torch.ones(2, 4)), torch.zeros(2, 4))
        assert torch.equal(m[1](torch.ones(2, 4)), torch.ones(2, 4))
    assert "forward" in vars(own)


@pytest.mark.parametrize("cls", [DecoderWithAttention, DecoderWithRNN])
def test_training_with_reuse_gives_the_decoders_loss_and_gradients(cls, monkeypatch):
    """decoder_scores (what the solver trains with when there is no fast path) against the plain forward."""
    torch.manual_seed(0)
    dec = cls(CFG, encoder_dim=10)
    enc = torch.randn(3, 4, 4, 10)
    caps = torch.randint(4, 23, (3, 5, 9))
    lens = torch.randint(3, 9, (3, 5))
    cfg = dict(decoder="attention" if dec.has_attention else "rnn", alpha_c=1.0)

    def loss_and_grads(d):
        d.zero_grad()
        loss = _loss(cfg, *decoder_scores(d, enc, caps, lens), d)
        loss.backward()
        return loss.detach(), [p.grad for p in d.parameters()]

    plain = copy.deepcopy(dec)
    monkeypatch.setattr("captioning.solver.reuse_linear_outputs", _no_reuse)
    l0, g0 = loss_and_grads(plain)
    monkeypatch.undo()
    l1, g1 = loss_and_grads(dec)
    torch.testing.assert_close(l1, l0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_reuse_saves_the_per_word_projection(monkeypatch):
    """The attention's encoder projection, (N, P, C) → (N, P, A), runs once per batch, not once per word."""
    dec = DecoderWithAttention(CFG, encoder_dim=10)
    enc, caps = torch.randn(2, 4, 4, 10), torch.randint(4, 23, (2, 5, 9))
    shapes = _count_products(monkeypatch)
    decoder_scores(dec, enc, caps, torch.full((2, 5), 9))
    assert [s for s in shapes if s[1:] == (16, 10)] == [(10, 16, 10)]  # 10 captions, 16 regions, 8 words: one product
    monkeypatch.setattr("captioning.solver.reuse_linear_outputs", _no_reuse)
    shapes.clear()
    decoder_scores(dec, enc, caps, torch.full((2, 5), 9))
    assert len([s for s in shapes if s[1:] == (16, 10)]) == 8


def test_beam_search_with_reuse_finds_the_same_captions(monkeypatch):
    torch.manual_seed(1)
    dec = DecoderWithAttention(CFG, encoder_dim=10).eval()
    enc = torch.randn(4, 4, 4, 10)
    with_reuse = beam_search(dec, enc, WORD_MAP, 3, 12, fast=False)
    monkeypatch.setattr("captioning.decoding.reuse_linear_outputs", _no_reuse)
    without = beam_search(dec, enc, WORD_MAP, 3, 12, fast=False)
    for a, b in zip(with_reuse, without):
        assert a.tokens == b.tokens
        torch.testing.assert_close(a.alphas, b.alphas)


def _no_reuse(module):
    return contextlib.nullcontext()
