"""The kit's CUDA paths, run on a CPU with PyTorch's fake tensors on a ``cuda`` device.

A fake tensor carries a shape, a dtype and a device but no data, and every op checks that its inputs share a device
as it would on a GPU: a CPU tensor met by a CUDA one raises ``FakeTensorDeviceMismatchError`` here, as it raises on
the GPU. So these tests find device mistakes (a CPU constant, a factory without ``device=``) without a GPU. bf16
autocast is turned on for the fake device: PyTorch disables CUDA autocast when it sees no GPU, so the check it
makes for that is answered "available" while a test runs (nothing else of CUDA is touched; a real CUDA call would
fail here, which is a finding too).

Fake tensors have no values, so a step that needs one (``.tolist()``, ``.item()``, ``if tensor:``, ``.numpy()``)
raises ``DataDependentOutputException`` or ``DynamicOutputShapeException`` (the data-dependent stop). Where a path
meets one, the test expects exactly that exception, which proves that everything before it ran on the device; the
rest of the path is covered by a piece that takes those values as plain numbers (the fast path's ``plan``) or by
the per-step function (``one_step``).
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorDeviceMismatchError,
    FakeTensorMode,
    UnsupportedOperatorException,
    unset_fake_temporarily,
)

from captioning.encoder import Encoder
from captioning.internals import backbones as encoder_mod

CUDA = torch.device("cuda")
# what fake tensors raise at a step that needs the data (see the module docstring)
DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode (real tensors allowed as inputs, as the kit's CPU-side data are) with bf16 autocast on the
    fake cuda device. Modules are built before entering it (real CPU weights) and moved with one ``.to(CUDA)``
    inside, as the kit does: a second conversion of a fake parameter (``.to(memory_format=…)``) fails in
    ``torch.utils.swap_tensors`` ("has weakref"), a limit of fake modules, so ``channels_last`` is set before."""
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    encoder_mod.pool_matrix.cache_clear()  # keyed by device: a fake matrix must not outlive its mode
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        yield mode
    finally:
        encoder_mod.pool_matrix.cache_clear()


def _on_cuda(t, shape=None, dtype=None):
    assert t.device.type == "cuda", t.device
    if shape is not None:
        assert tuple(t.shape) == tuple(shape), (tuple(t.shape), shape)
    if dtype is not None:
        assert t.dtype == dtype, t.dtype
    return t


def _uint8_images(b, size=32):
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)


class _DtypeProbe:
    """Records the dtype of a module's output: bf16 proves autocast ran the module."""

    def __init__(self, module):
        self.dtypes = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))


def test_fake_cuda_works_here(fake_cuda):
    """This CPU-only torch makes fake cuda tensors, runs autocast on them, and reports a device mismatch."""
    with fake_cuda:
        x = torch.ones(2, 3, device=CUDA)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert (x @ torch.ones(3, 4, device=CUDA)).dtype == torch.bfloat16  # autocast is live
        with pytest.raises(FakeTensorDeviceMismatchError):
            x + torch.ones(2, 3)
    assert x.device.type == "cuda"


def test_normalize_on_the_device(fake_cuda):
    from captioning.datasets import normalize

    with fake_cuda:
        x = _uint8_images(2).to(CUDA)
        _on_cuda(normalize(x), (2, 3, 32, 32), torch.float32)


@pytest.mark.parametrize("arch", ["shapes_cnn", "resnet50"])
def test_encode_batch_frozen_uncached(fake_cuda, arch):
    from captioning.solver import encode_batch

    enc = Encoder(2, weights=None, arch=arch)
    probe = _DtypeProbe(enc.resnet)
    enc.to(memory_format=torch.channels_last)  # what Trainer does on cuda (before the move: see _to_cuda)
    with fake_cuda:
        enc.to(CUDA)
        enc.fine_tune(False)
        with torch.no_grad():
            out = encode_batch(enc, _uint8_images(2, 64), cached=False, device=CUDA)
    _on_cuda(out, (2, 2, 2, enc.encoder_dim), torch.float32)
    assert probe.dtypes == [torch.bfloat16]


def test_encode_batch_cached(fake_cuda):
    from captioning.solver import encode_batch

    enc = Encoder(3, weights=None, arch="shapes_cnn")
    with fake_cuda:
        enc.to(CUDA)
        fmap = torch.randn(2, 256, 4, 4).half()  # what the cache holds, on the CPU as the loader gives it
        out = encode_batch(enc, fmap, cached=True, device=CUDA)
    _on_cuda(out, (2, 3, 3, 256), torch.float32)


def test_encode_batch_fine_tuned_and_its_update(fake_cuda):
    """fine_tune_encoder=True: the encoder's forward with gradients, and the optimiser's step, on the device.

    ``backward()`` itself cannot run here: the autograd engine asks the CUDA driver for a context for a cuda
    tensor, which a machine without a GPU lacks (``hasPrimaryContext`` RuntimeError, expected below). The backward
    graph's ops are each forward op's derivative on the same tensors, so a device mistake would have shown in the
    forward; the gradients are then given (zeros on the device) to check the optimiser's step."""
    from captioning.internals.optim import adam
    from captioning.solver import encode_batch

    enc = Encoder(2, weights=None, arch="resnet50")
    enc.fine_tune(True)
    enc.to(memory_format=torch.channels_last)
    with fake_cuda:
        enc.to(CUDA)
        enc.train()
        tuned = [p for p in enc.parameters() if p.requires_grad]
        opt = adam(tuned, lr=1e-4)
        out = encode_batch(enc, _uint8_images(2, 64), cached=False, device=CUDA)
        _on_cuda(out, (2, 2, 2, 2048), torch.float32)
        loss = out.float().mean()
        assert loss.requires_grad
        with pytest.raises(RuntimeError, match="hasPrimaryContext|CUDA|cuda"):
            loss.backward()
        for p in tuned:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert tuned and all(p.device.type == "cuda" for p in enc.parameters())
    assert all(s["exp_avg"].device.type == "cuda" for s in opt.state.values())


def test_folded_encoder(fake_cuda, monkeypatch):
    """The frozen encoder's inference copy (BatchNorm folded), made on the device as Trainer.encode and evaluate
    make it. ``weights_digest`` hashes the weights' bytes, which fake tensors do not have: it is the one
    data-dependent step of folding, and is stubbed (it runs on the CPU copy of the weights anyway)."""
    from captioning.solver import encode_batch

    monkeypatch.setattr(Encoder, "weights_digest", lambda self: "fake")
    enc = Encoder(2, weights=None, arch="resnet50")
    with fake_cuda:
        enc.to(CUDA)
        folded = enc.for_inference()
        assert all(p.device.type == "cuda" for p in folded.parameters())
        with torch.no_grad():
            out = encode_batch(folded, _uint8_images(2, 64), cached=False, device=CUDA)
    _on_cuda(out, (2, 2, 2, 2048), torch.float32)


# ---------------------------------------------------------------------------------------------------- decoders
V, E, D, A, C, S, T, CPI = 30, 8, 12, 10, 16, 3, 9, 2


def _decoder(kind):
    from captioning.adaptive import DecoderWithAdaptiveAttention
    from captioning.models import DecoderWithAttention, DecoderWithRNN

    kind, _, design = kind.partition(":")  # "adaptive:DESIGN": one of adaptive.DESIGNS
    cls = {"rnn": DecoderWithRNN, "attention": DecoderWithAttention, "adaptive": DecoderWithAdaptiveAttention}[kind]
    torch.manual_seed(0)
    cfg = {"vocab_size": V, "embed_dim": E, "decoder_dim": D, "attention_dim": A, "dropout": 0.5}
    return cls(dict(cfg, adaptive_design=design or "paper"), encoder_dim=C)


def _captions(b):
    """captions (b, CPI, T) and caplens (b, CPI) on the CPU, as the loader gives them."""
    caps = torch.randint(4, V, (b, CPI, T))
    lens = torch.randint(4, T + 1, (b, CPI))
    lens[0, 0] = T
    return caps, lens


@pytest.mark.parametrize("kind", ["rnn", "attention", "adaptive", "adaptive:where_raw", "adaptive:sat_cost_ramp"])
def test_decoder_one_step_and_forward_bf16(fake_cuda, kind):
    """init_hidden_state, embedding and one_step under bf16 autocast on the device. ``forward`` reads the
    caption lengths back (``decode_lengths = (caption_lengths - 1).tolist()``): fake tensors stop there, after
    the sort and the gathers before it ran on the device (the expected exception, not a device mismatch); the
    steps after it are ``one_step``'s layers, checked here, and the fast path's loop (next test)."""
    from captioning.adaptive import look_cost

    dec = _decoder(kind)
    fc = _DtypeProbe(dec.fc)
    b = 3
    with fake_cuda:
        dec.to(CUDA).train()
        enc = torch.randn(b, S, S, C).to(CUDA)
        caps, lens = (t.to(CUDA) for t in _captions(b))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            flat = enc.view(b, S * S, C)
            h, c = dec.init_hidden_state(flat)
            emb = dec.embedding(caps[:, 0, 0])
            if kind == "rnn":
                preds, h2, c2 = dec.one_step(emb, h, c)
            else:
                preds, alpha, h2, c2 = dec.one_step(emb, flat, h, c)
                _on_cuda(alpha)
                if kind.startswith("adaptive"):  # the price of looking, where the design has one
                    cost = look_cost(dec, alpha[:, None])
                    assert not torch.is_tensor(cost) or cost.device.type == "cuda"
            _on_cuda(preds, (b, V), torch.bfloat16)
            _on_cuda(h2, (b, D))
            with pytest.raises(DATA_DEPENDENT):
                dec(enc.repeat_interleave(CPI, 0), caps.view(b * CPI, T), lens.view(b * CPI))
    assert fc.dtypes[0] == torch.bfloat16


@pytest.mark.parametrize("kind", ["rnn", "attention"])
def test_fast_path_scores_and_loss(fake_cuda, kind):
    """The fast path's teacher-forced scores under bf16 autocast and the training loss, on the device. Its
    length bookkeeping (``fastpath.plan``) reads the lengths; it is made from the CPU lengths and moved, as a GPU
    run makes it on the device."""
    from captioning.solver import _loss
    from instructor import fastpath

    dec = _decoder(kind)
    b = 3
    caps_cpu, lens_cpu = _captions(b)
    order, img, running = fastpath.plan(lens_cpu.reshape(-1), CPI)
    with fake_cuda:
        dec.to(CUDA).train()
        enc = torch.randn(b, S, S, C).to(CUDA)
        caps, lens = caps_cpu.to(CUDA).view(b * CPI, T), lens_cpu.to(CUDA).view(b * CPI)
        planned = (order.to(CUDA), img.to(CUDA), running)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            scores, targets, alphas = fastpath.scores(dec, enc, caps, lens, group=CPI, planned=planned)
        _on_cuda(scores, (sum(running), V), torch.bfloat16)
        _on_cuda(targets, (sum(running),), torch.long)
        if kind == "attention":
            _on_cuda(alphas, (b * CPI, len(running), S * S))
        _on_cuda(_loss({"decoder": kind, "alpha_c": 1.0}, scores, targets, alphas, dec), (), torch.float32)


# ------------------------------------------------------------------------------------ pretraining, feature cache
def test_pretraining_step(fake_cuda):
    """``pretrain.train_step``: the shapes_cnn probe's forward, loss, backward and update on the device. The loss
    is computed without reading a value (no ``if tensor``); the backward stops as in the fine-tuning test (no
    CUDA context here), so the update is checked with given gradients."""
    from captioning.data import pretrain

    model = pretrain._Probe()
    b, size = 2, 64
    grid = size // pretrain.STRIDE
    objects = [[{"shape": "circle", "color": "red", "size": "large", "bbox": [4, 4, 40, 40]}], []]
    targets = torch.stack([pretrain.cell_targets(o, size, grid) for o in objects])
    weights = torch.stack([pretrain.cell_weights(o, size, grid) for o in objects])
    dark = torch.tensor([0, 1])
    with fake_cuda:
        model.to(CUDA)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = pretrain.normalize(_uint8_images(b, size).to(CUDA))
        logits, tone = model(x)
        loss = pretrain._loss(logits, tone, targets.to(CUDA), weights.to(CUDA), dark.to(CUDA))
        _on_cuda(loss, (), torch.float32)
        with pytest.raises(RuntimeError, match="hasPrimaryContext|CUDA|cuda"):
            pretrain.train_step(model, opt, _uint8_images(b, size), targets, weights, dark, True, CUDA)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(s["exp_avg"].device.type == "cuda" for s in opt.state.values())


def test_feature_cache_encode_step(fake_cuda, monkeypatch):
    """``features.encode_pixels``, what ``build_feature_cache`` runs per batch: numpy uint8 images → the folded
    backbone's map on the device, bf16. Writing it to the HDF5 file needs its values (``.cpu().numpy()``): fake
    tensors stop there, as expected."""
    import numpy as np

    from captioning.data.features import encode_pixels

    monkeypatch.setattr(Encoder, "weights_digest", lambda self: "fake")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    with fake_cuda:
        enc.to(CUDA)
        net = enc.for_inference()
        with torch.no_grad():
            fmap = encode_pixels(net, pixels, "cuda")
        _on_cuda(fmap, (3, 256, 4, 4), torch.bfloat16)
        with pytest.raises((*DATA_DEPENDENT, RuntimeError)):
            fmap.float().cpu().numpy()


# ------------------------------------------------------------------------------------------------- test, caption
class _Stop(Exception):
    pass


class _CpuLoader(torch.utils.data.DataLoader):
    """The DataLoader's CPU side (reading the HDF5 file, drawing its seed with ``.item()``) runs outside the fake
    mode, as it runs on the CPU in a real run; its batches are then handed to the code under test."""

    def __iter__(self):
        with unset_fake_temporarily():
            batches = list(super().__iter__())
        yield from batches


@pytest.fixture
def tiny_checkpoint(shapes_data, tmp_path):
    """The checkpoint dict of an untrained fine-tuned attention decoder on the tiny shapes data (its weights do
    not matter: fake tensors compute no values)."""
    from captioning.solver import Trainer, make_cfg

    cfg = make_cfg(
        data_folder=str(shapes_data.data_folder),
        data_name=shapes_data.data_name,
        encoder="shapes_cnn",
        encoder_weights=None,
        recalibrate_images=0,
        encoded_image_size=2,
        embed_dim=8,
        decoder_dim=12,
        attention_dim=10,
        decoder="attention",
        fine_tune_encoder=True,
        device="cpu",
        workers=0,
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    return Trainer(cfg, progress=False).state(0)


def _cuda_checkpoint(monkeypatch, ckpt):
    """Let evaluate load ``ckpt`` (a fresh shallow copy each time) with device='cuda' accepted."""
    import captioning.evaluation.evaluate as ev
    from captioning import solver

    # make_cfg refuses 'cuda' without a GPU: it alone is told there is one (told everywhere, PyTorch's own code
    # would try to reach the driver)
    real = torch.cuda.is_available
    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: sys._getframe(1).f_globals.get("__name__") == "captioning.config" or real()
    )
    monkeypatch.setattr(Encoder, "weights_digest", lambda self: "fake")
    monkeypatch.setattr(ev, "load_checkpoint", lambda path: dict(ckpt))
    # a module built inside the mode has fake CPU weights that the move to cuda cannot swap (see fake_cuda): the
    # decoder is built outside it, as a real run builds it on the CPU before moving it
    build = solver.build_decoder

    def build_real(*args, **kwargs):
        with unset_fake_temporarily():
            return build(*args, **kwargs)

    monkeypatch.setattr(solver, "build_decoder", build_real)
    return ev


def test_test_encodes_a_fine_tuned_checkpoint_on_the_device(fake_cuda, monkeypatch, tiny_checkpoint):
    """``evaluate`` (``python -m captioning test``) of a fine-tuned checkpoint on cuda: models loaded onto the
    device, the folded encoder, the uncached ``encode_batch`` of every loader batch. Beam search then reads
    scores back (which words end a caption): fake tensors stop there, as expected."""
    ev = _cuda_checkpoint(monkeypatch, tiny_checkpoint)
    seen = []
    real = ev.encode_batch

    def spy(encoder, x, cached, device):
        out = real(encoder, x, cached, device)
        seen.append((cached, out, all(p.device.type == "cuda" for p in encoder.parameters())))
        return out

    monkeypatch.setattr(ev, "encode_batch", spy)
    monkeypatch.setattr(ev, "DataLoader", _CpuLoader)
    with fake_cuda:
        with pytest.raises(DATA_DEPENDENT) as stop:
            ev.evaluate("ckpt.pth.tar", "TEST", beam_size=2, device="cuda", progress=False, coco=False)
    assert seen, f"evaluate stopped before encoding a batch: {stop.getrepr(style='short')}"
    cached, out, on_device = seen[0]
    assert cached is False and on_device
    _on_cuda(out, (10, 2, 2, 256), torch.float32)


def test_caption_encodes_on_the_device(fake_cuda, monkeypatch, tiny_checkpoint, shapes_data):
    """``iter_captions`` (``python -m captioning caption``) on cuda: the image file loaded, normalised and encoded
    on the device; what it hands beam search is checked (beam search itself: see the test above)."""
    ev = _cuda_checkpoint(monkeypatch, tiny_checkpoint)
    image = next((shapes_data.karpathy_json.parent).rglob("*.jpg"))
    got = []

    def stop(decoder, enc, *args, **kwargs):
        got.append((enc, next(decoder.parameters()).device))
        raise _Stop

    def familiarity_on(encoder, cfg, checkpoint, device="cpu", progress=True):
        # fitting its Gaussians reads numbers back (an SVD), which fake tensors cannot: the test below covers
        # the part that runs on the device
        got.append(("familiarity", device))
        return None, None

    monkeypatch.setattr(ev, "beam_search", stop)
    monkeypatch.setattr(ev.familiarity, "for_checkpoint", familiarity_on)
    with fake_cuda:
        with pytest.raises(_Stop):
            list(ev.iter_captions("ckpt.pth.tar", [image], beam_size=2, device="cuda"))
    assert got[0] == ("familiarity", "cuda")
    enc, decoder_device = got[1]
    _on_cuda(enc, (1, 2, 2, 256), torch.float32)
    assert decoder_device.type == "cuda"


def test_familiarity_encodes_on_the_device_and_keeps_its_statistics_on_the_cpu(fake_cuda, shapes_data, monkeypatch):
    """The images of the familiarity check are encoded on the device (no feature cache here) and reduced to
    float64 CPU features, where the Gaussians are fitted and every caption's score is computed."""
    from captioning.evaluation import familiarity

    monkeypatch.setattr(Encoder, "weights_digest", lambda self: "fake")  # hashes the weights' bytes
    with torch.device("cpu"):
        encoder = Encoder(2, weights=None, arch="shapes_cnn").eval()
    with fake_cuda:
        encoder = encoder.to("cuda")
        net = encoder.for_inference()
        got = familiarity._split_features(
            net, encoder, shapes_data.data_folder, shapes_data.data_name, "TRAIN", 4, "cuda", False
        )
    assert got["features"].device.type == "cpu" and got["features"].dtype == torch.float64
    assert tuple(got["features"].shape) == (4, 256) and tuple(got["pixels"].shape) == (4, 11)


# ----------------------------------------------------------------------------------- tensor factories and devices
FACTORIES = {
    "tensor",
    "as_tensor",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "range",
    "linspace",
    "logspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "normal",
    "empty_strided",
    "scalar_tensor",
    "tril_indices",
    "triu_indices",
    "sparse_coo_tensor",
}
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SCANNED = sorted((ROOT / "captioning").rglob("*.py")) + [
    ROOT / "instructor" / n for n in ("fastpath.py", "fastbeam.py")
]
# (file, enclosing function): why its factories without ``device=`` make CPU tensors on purpose
CPU_SIDE = {
    ("captioning/data/pretrain.py", "cell_targets"): "per-image labels built by the data loading, moved by train_step",
    ("captioning/data/pretrain.py", "cell_weights"): "per-image weights built by the data loading, moved by train_step",
    ("captioning/data/pretrain.py", "pretrain_encoder"): "randperm/rand draw from a CPU torch.Generator (the order and "
    "the flips), which must stay on the CPU to be reproducible",
    ("captioning/solver.py", "loader"): "randperm draws the shard order from the loader's CPU torch.Generator",
    ("captioning/check.py", "require_todos"): "the notebooks' TODO check runs the student's decoder on the CPU",
    ("captioning/adaptive.py", "__init__"): "a parameter and a buffer made with the module, moved by .to(device)",
    ("captioning/evaluation/familiarity.py", "image_statistics"): "pixel statistics of host images, on the CPU",
    ("captioning/evaluation/familiarity.py", "fit"): "the familiarity Gaussians are fitted on the CPU in float64",
    ("captioning/evaluation/familiarity.py", "_split_features"): "an empty split's CPU features (mean_features "
    "moves every encoded batch to the CPU)",
}


def _factory_calls_without_device(path):
    """(enclosing function, line, call) of every ``torch.<factory>(…)`` in ``path`` without a ``device=``."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "torch"
                and child.func.attr in FACTORIES
                and not any(k.arg == "device" for k in child.keywords)
            ):
                found.append((func, child.lineno, f"torch.{child.func.attr}"))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_every_tensor_factory_names_its_device():
    """A tensor made without ``device=`` lands on the CPU, and meets the GPU's tensors in the next op (how
    ``normalize`` broke fine-tuning on CUDA). Every factory in the package and the fast path names its device,
    unless listed in CPU_SIDE with the reason it belongs on the CPU."""
    bad, used = [], set()
    for path in SCANNED:
        rel = path.relative_to(ROOT).as_posix()
        for func, line, call in _factory_calls_without_device(path):
            if (rel, func) in CPU_SIDE:
                used.add((rel, func))
            else:
                bad.append(f"{rel}:{line} in {func}(): {call}(…) without device=")
    assert not bad, (
        "tensor factories without a device (pass device=…, or list the function in CPU_SIDE with "
        "the reason it is CPU-side):\n" + "\n".join(bad)
    )
    assert used == set(CPU_SIDE), f"CPU_SIDE lists functions without such factories: {set(CPU_SIDE) - used}"


def test_the_factory_scan_finds_a_factory_without_a_device(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import torch\ndef f(x):\n    a = torch.zeros(3, device=x.device)\n    return torch.arange(3) + a\n")
    assert _factory_calls_without_device(src) == [("f", 4, "torch.arange")]
