"""The reference models: shapes, gradients, the forward/one_step contract, padding, attention invariants,
and that each decoder can fit a handful of captions."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from captioning.internals.errors import KitError
from captioning.models import Attention, DecoderWithAttention, DecoderWithRNN, Encoder, TodoError

V, E, D, A, C, S = 23, 8, 12, 10, 6, 3
CFG = dict(vocab_size=V, embed_dim=E, decoder_dim=D, attention_dim=A, dropout=0.5)


def batch(b=4, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(b, S, S, C, generator=g)
    caps = torch.randint(4, V, (b, t), generator=g)
    lens = torch.tensor([t, t - 2, 5, 3][:b])
    for i, n in enumerate(lens.tolist()):
        caps[i, n:] = 0  # <pad>
    return enc, caps, lens


@pytest.fixture(params=[DecoderWithRNN, DecoderWithAttention], ids=["rnn", "attention"])
def decoder(request):
    torch.manual_seed(0)
    return request.param(CFG, encoder_dim=C)


def run(dec, enc, caps, lens):
    out = dec(enc, caps, lens)
    return out[0], out[1], out[2], (out[3] if dec.has_attention else None), out[-1]


def test_forward_shapes_and_gradients(decoder):
    enc, caps, lens = batch()
    enc.requires_grad_(True)
    preds, caps_sorted, dec_lens, alphas, sort_ind = run(decoder, enc, caps, lens)
    assert preds.shape == (4, 8, V)
    assert dec_lens == [8, 6, 4, 2]
    assert torch.equal(caps_sorted, caps[sort_ind])
    if alphas is not None:
        assert alphas.shape == (4, 8, S * S)
    loss = F.cross_entropy(
        pack_padded_sequence(preds, dec_lens, batch_first=True).data,
        pack_padded_sequence(caps_sorted[:, 1:], dec_lens, batch_first=True).data,
    )
    loss.backward()
    assert enc.grad is not None and enc.grad.abs().sum() > 0
    for name, p in decoder.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"


def test_forward_equals_one_step_by_hand(decoder):
    decoder.eval()
    enc, caps, lens = batch()
    preds, caps_sorted, dec_lens, alphas, sort_ind = run(decoder, enc, caps, lens)
    e = enc[sort_ind].reshape(4, -1, C)
    h, c = decoder.init_hidden_state(e)
    for t in range(max(dec_lens)):
        emb = decoder.embedding(caps_sorted[:, t])
        if decoder.has_attention:
            p, a, h, c = decoder.one_step(emb, e, h, c)
            torch.testing.assert_close(alphas[:, t][torch.tensor(dec_lens) > t], a[torch.tensor(dec_lens) > t])
        else:
            p, h, c = decoder.one_step(emb, h, c)
        live = torch.tensor(dec_lens) > t
        torch.testing.assert_close(preds[live, t], p[live], rtol=1e-5, atol=1e-6)
        assert preds[~live, t].abs().sum() == 0  # rows past the end stay untouched


def test_padding_never_influences_shorter_captions(decoder):
    decoder.eval()
    enc, caps, lens = batch()
    garbage = caps.clone()
    for i, n in enumerate(lens.tolist()):
        garbage[i, n:] = torch.randint(4, V, (caps.size(1) - n,))
    p1 = run(decoder, enc, caps, lens)[0]
    p2 = run(decoder, enc, garbage, lens)[0]
    torch.testing.assert_close(p1, p2)
    # and a caption decoded alone gives the same predictions as inside the shrinking batch
    preds, _, dec_lens, _, sort_ind = run(decoder, enc, caps, lens)
    j = sort_ind.tolist().index(3)  # the shortest caption
    alone = run(decoder, enc[3:4], caps[3:4], lens[3:4])[0]
    torch.testing.assert_close(preds[j, : dec_lens[j]], alone[0], rtol=1e-5, atol=1e-6)


def test_learned_initial_state_does_not_depend_on_the_image():
    torch.manual_seed(0)
    course, learned = (
        DecoderWithAttention(CFG, encoder_dim=C),
        DecoderWithAttention(dict(CFG, init_state="learned"), encoder_dim=C),
    )
    learned.load_state_dict(course.state_dict())  # same layers, same names: checkpoints stay compatible
    enc = torch.randn(2, S * S, C)
    h, c = learned.init_hidden_state(enc)
    assert torch.equal(h[0], h[1]) and torch.equal(c[0], c[1]) and torch.equal(h[0], learned.init_h.bias)
    h, _ = course.init_hidden_state(enc)
    assert not torch.allclose(h[0], h[1])


def test_attention_alpha_sums_to_one_and_gate_in_unit_interval():
    torch.manual_seed(0)
    att = Attention(C, D, A)
    enc, h = torch.randn(5, S * S, C), torch.randn(5, D)
    z, alpha = att(enc, h)
    assert z.shape == (5, C) and alpha.shape == (5, S * S)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(z, (enc * alpha.unsqueeze(2)).sum(1))
    dec = DecoderWithAttention(CFG, encoder_dim=C)
    gate = dec.sigmoid(dec.f_beta(torch.randn(5, D) * 10))
    assert ((gate > 0) & (gate < 1)).all()


@pytest.mark.parametrize("cls", [DecoderWithRNN, DecoderWithAttention], ids=["rnn", "attention"])
def test_decoder_overfits_a_handful_of_captions(cls):
    torch.manual_seed(0)
    dec = cls(dict(CFG, dropout=0.0, embed_dim=32, decoder_dim=64, attention_dim=32), encoder_dim=C)
    enc, caps, lens = batch(b=4, t=9)
    opt = torch.optim.Adam(dec.parameters(), lr=5e-3)
    for step in range(300):
        preds, caps_sorted, dec_lens, alphas, _ = run(dec, enc, caps, lens)
        loss = F.cross_entropy(
            pack_padded_sequence(preds, dec_lens, batch_first=True).data,
            pack_padded_sequence(caps_sorted[:, 1:], dec_lens, batch_first=True).data,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after {step + 1} steps"


def test_missing_layer_names_the_todo():
    class Half(DecoderWithRNN):
        def __init__(self):
            torch.nn.Module.__init__(self)

    d = Half()
    with pytest.raises(NotImplementedError, match=r"TODO Half.__init__.*'fc'"):
        d.fc  # noqa: B018
    assert not hasattr(d, "fc")  # still an AttributeError for hasattr()
    with pytest.raises(TodoError):
        d.embedding  # noqa: B018


def test_encoder_grid_fine_tune_and_frozen_eval():
    torch.manual_seed(0)
    enc = Encoder(encoded_image_size=4, weights=None, arch="resnet101")
    assert enc.encoder_dim == 2048
    x = torch.randn(2, 3, 64, 64)
    enc.recalibrate([x])
    out = enc.eval()(x)
    assert out.shape == (2, 4, 4, 2048) and torch.isfinite(out).all()
    enc.train()
    assert all(not m.training for m in enc.resnet.modules()), "a frozen encoder must stay in eval mode"
    assert not any(p.requires_grad for p in enc.parameters())
    enc.fine_tune(True)
    children = list(enc.resnet.children())
    assert not any(p.requires_grad for c in children[:5] for p in c.parameters())
    assert all(p.requires_grad for c in children[5:] for p in c.parameters())
    enc.train()
    assert children[6].training and not children[1].training


def test_random_encoder_recalibration_keeps_activations_normal():
    torch.manual_seed(0)
    enc = Encoder(encoded_image_size=2, weights=None)
    x = torch.randn(4, 3, 64, 64)
    enc.recalibrate([x])
    with torch.no_grad():
        out = enc.eval()(x)
    assert out.abs().max() < 100, "recalibrated BatchNorm should keep activations O(1)"


def test_recalibration_gives_the_statistics_of_a_plain_batch_statistics_pass():
    torch.manual_seed(0)
    enc = Encoder(encoded_image_size=2, weights=None)
    ref = copy.deepcopy(enc.resnet)
    batches = [torch.randn(3, 3, 64, 64), torch.randn(2, 3, 64, 64)]
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # what recalibrate means: running stats = the cumulative average of the batches' statistics
        m.reset_running_stats()
        m.momentum = None
    ref.train()
    with torch.no_grad():
        for x in batches:
            ref(x)
    enc.eval()
    enc.recalibrate(batches)  # runs channels_last inside, for speed
    got = dict(enc.resnet.named_buffers())
    for name, want in ref.named_buffers():
        assert torch.allclose(got[name].float(), want.float(), rtol=1e-4, atol=1e-5), name
    assert all(p.is_contiguous() for p in enc.resnet.parameters()), "the module's layout is put back"
    assert not enc.training and not any(m.training for m in enc.resnet.modules())


def test_encoder_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(KitError, match="does not exist"):
        Encoder(weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(KitError, match="not a resnet101 state dict"):
        Encoder(weights=str(bad))
    with pytest.raises(KitError, match="unknown encoder"):
        Encoder(weights=None, arch="vgg")

    import torchvision.models._api as tv_api

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached weights either
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(KitError, match=r"(?s)no internet.*random weights"):
        Encoder(weights="imagenet")


@pytest.mark.parametrize("arch,channels", [("resnet152", 2048), ("convnext_tiny", 768), ("efficientnet_b0", 1280)])
def test_other_backbones_give_a_grid(arch, channels):
    torch.manual_seed(0)
    enc = Encoder(encoded_image_size=3, weights=None, arch=arch).eval()
    x = torch.randn(2, 3, 64, 64)
    enc.recalibrate([x])
    assert enc(x).shape == (2, 3, 3, channels)
    enc.fine_tune(True)
    assert any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("depth", [50, 101])
def test_the_kits_resnet_is_torchvisions(depth):
    """Same parameter names and, for one seed, the same random weights and outputs: torchvision's state dicts
    (ImageNet weights, a local .pth) load as they are, and caches keyed by the weights stay valid."""
    import torchvision

    from captioning.internals.backbones import ResNet

    torch.manual_seed(0)
    ours = ResNet(depth).eval()
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("arch", ["resnet101", "shapes_cnn", "efficientnet_b0"])
def test_the_inference_copy_gives_the_same_features_and_leaves_the_encoder_alone(arch):
    torch.manual_seed(0)
    enc = Encoder(3, weights=None, arch=arch)
    x = torch.randn(4, 3, 64, 64)
    enc.recalibrate([x])  # statistics that are not 0/1, so folding them matters
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    digest = enc.weights_digest()
    fast = enc.for_inference()
    assert fast.folded and not enc.folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        ref = enc(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert fast.weights_digest() == digest == enc.weights_digest()  # it finds the original's feature caches
    assert fast.for_inference() is fast  # evaluate folds, then the feature cache asks again: nothing to redo
    after = enc.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("h,w,s", [(8, 8, 14), (7, 9, 14), (14, 14, 14), (16, 16, 14), (13, 11, 5), (1, 1, 3)])
def test_pool_averages_the_windows_of_adaptive_avg_pool(h, w, s):
    """Encoder.pool is one matrix product; it must pick nn.AdaptiveAvgPool2d's windows for any map size."""
    enc = Encoder(s, weights=None, arch="shapes_cnn")
    fmap = torch.randn(3, 5, h, w).half()  # the feature cache stores fp16
    ref = enc.adaptive_pool(fmap.float()).permute(0, 2, 3, 1)
    got = enc.pool(fmap)
    assert got.shape == (3, s, s, 5) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the uncached GPU path pools inside autocast
        assert torch.allclose(enc.pool(fmap), ref, rtol=1e-6, atol=1e-6)


def test_a_resnet_encoder_does_not_import_torchvision():
    """torchvision's import (1.4–1.5 s) is paid only for ImageNet weights or another backbone."""
    code = (
        "import sys; import captioning.cli, captioning.evaluation.evaluate; from captioning.encoder import Encoder; "
        "Encoder(2, weights=None).for_inference(); assert 'torchvision' not in sys.modules, 'torchvision imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
