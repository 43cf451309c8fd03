"""The encoder's machinery: the backbones (``BACKBONES``; ResNet written here, the rest from torchvision), the
shapes data's small CNN, and the speed-ups :class:`captioning.encoder.Encoder` uses (pooling as one matrix product,
BatchNorm folding for inference, BatchNorm recalibration of random weights). Nothing here is a course topic."""

from __future__ import annotations

import copy
import functools
import hashlib
import os

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from captioning.internals.errors import KitError

# name -> (constructor: a ResNet depth here, else a torchvision function; ImageNet weights enum; channels C)
BACKBONES = {
    "resnet101": (101, "ResNet101_Weights", 2048),
    "resnet152": (152, "ResNet152_Weights", 2048),
    "resnet50": (50, "ResNet50_Weights", 2048),
    "convnext_tiny": ("convnext_tiny", "ConvNeXt_Tiny_Weights", 768),
    "efficientnet_b0": ("efficientnet_b0", "EfficientNet_B0_Weights", 1280),
    # Not from torchvision: a small CNN for CPU demos, pretrained in a minute on the shapes data's object boxes
    # (captioning/data/pretrain.py), because ImageNet weights cannot be downloaded offline.
    "shapes_cnn": ("ShapesCNN", None, 256),
}


class EncoderSpeedups(nn.Module):
    """What :class:`captioning.encoder.Encoder` inherits that the course's encoder does not need to be read for:
    the random-weights set-up, the BatchNorm-folded inference copy, BatchNorm recalibration and the weights digest
    that keys the feature cache. Works on ``self.resnet`` (the backbone), ``self.fine_tuning`` and ``train``."""

    def _damp_residual_branches(self, gain=0.1):
        """Random weights only: scale each residual branch's last BatchNorm γ to ``gain``.

        In a freshly initialised ResNet-101 the 33 residual branches, each as strong as the skip path, wash the
        input out: a linear probe on the recalibrated output tells the colours of the shapes data barely above
        the majority guess. With branches at 0.1 the signal survives the depth (``benchmarks/random_encoder.py``
        measures both).
        """
        for m in self.resnet.modules():
            last_bn = (
                getattr(m, "bn3", None)
                if hasattr(m, "conv3")
                else getattr(m, "bn2", None)
                if type(m).__name__ == "BasicBlock"
                else None
            )
            if last_bn is not None and not last_bn.weight.is_meta:
                nn.init.constant_(last_bn.weight, gain)

    def for_inference(self):
        """A copy for no-grad inference with the current weights (eval-mode BatchNorm statistics): each
        BatchNorm folded into the conv before it, weights in ``channels_last``. The same outputs up to float
        rounding (~1e-6 relative) and, with ResNet-101 on a CPU, 1.5× the images per second
        (``benchmarks/encoder_speed.py``). Only the folded convs are new tensors; the rest is shared, so this
        encoder is put in eval mode too (``train()`` it again if it trains). Feed the copy ``channels_last``
        images. Its :meth:`weights_digest` is the original's, so it finds the original's feature caches, and the
        original can be dropped (``evaluate`` does: one set of weights in memory, not two). An encoder that is
        already folded is returned as it is.
        """
        if self.folded:
            return self
        self.eval()
        digest = self.weights_digest()
        twin = copy.copy(self)
        twin._digest = digest
        with torch.no_grad():
            twin._modules = dict(self._modules, resnet=_fold_batchnorm(self.resnet, torch.channels_last))
        twin.folded = True
        return twin

    @torch.no_grad()
    def recalibrate(self, batches, progress=False):
        """Re-estimate every BatchNorm's running mean/var from ``batches`` of images (B, 3, H, W).

        Needed for random weights: with a fresh init, activations grow to ~1e4 through 100 layers, while the
        batch-statistics pass normalises each layer, and the cumulative average makes eval mode reproduce it.
        """
        bns = [m for m in self.resnet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, m.training) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
            m.train()
        # channels_last: oneDNN's layout, 1.5x faster here on a CPU (benchmarks/encoder_speed.py); put back
        # afterwards, so that callers (fine-tuning, state dicts, the folded copy) see the module as before
        self.resnet.to(memory_format=torch.channels_last)
        try:
            for x in batches:
                self.resnet(x.contiguous(memory_format=torch.channels_last))
        finally:
            self.resnet.to(memory_format=torch.contiguous_format)
            for m, (mom, tr) in zip(bns, saved):
                m.momentum = mom
                m.train(tr)
            self.train(self.training)

    def weights_digest(self):
        """Short hash of all parameters and buffers: identifies the encoder in feature-cache keys."""
        if self.folded:
            return self._digest  # the unfolded original's
        h = hashlib.sha256()
        for k, v in sorted(self.resnet.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class ShapesCNN(nn.Module):
    """Six 3×3 conv–BatchNorm–ReLU layers, stride 16, 256 channels: images (B, 3, H, W) → (B, 256, H/16, W/16).

    Each output cell sees 79 pixels, so on the shapes data (objects of 15–36 % of a 160 px side) a cell knows the
    shape it lies on, while the map stays local enough for attention to point at it. Trained by
    ``captioning.data.pretrain``; ``features`` is what :class:`Encoder` keeps.
    """

    STRIDE = 16  # pixels per output cell: four stride-2 layers

    def __init__(self, weights=None):
        super().__init__()
        widths = [(3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]
        self.features = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
                )
                for cin, cout, stride in widths
            ]
        )

    def forward(self, images):
        return self.features(images)


class Bottleneck(nn.Module):
    """The ResNet bottleneck block (He et al. 2016), stride on the 3×3 conv ("v1.5", as torchvision's ImageNet
    weights): x (B, C_in, H, W) → relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + shortcut(x)),
    (B, 4·width, H/stride, W/stride). The shortcut is the identity, or a strided 1×1 conv + BatchNorm when the
    shape changes. Parameter names follow torchvision's, so its state dicts load as they are."""

    def __init__(self, c_in, width, stride=1):
        super().__init__()
        c_out = 4 * width
        # built before the convs and registered after them: the order torchvision's weights are drawn in, so a
        # seeded random ResNet here equals torchvision's (a test compares them)
        shortcut = (
            None
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-50/101/152 for 1000 ImageNet classes: images (B, 3, H, W) → logits (B, 1000); the children before
    ``avgpool`` give the (B, 2048, H/32, W/32) feature map. Written here rather than taken from torchvision,
    whose import costs 1.4–1.5 s at every start (``benchmarks/encoder_speed.py``); torchvision is still what downloads
    the ImageNet weights, which load unchanged."""

    BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

    def __init__(self, depth=101):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        c_in, stages = 64, []
        for i, n in enumerate(self.BLOCKS[depth]):
            width = 64 * 2**i
            stages.append(
                nn.Sequential(
                    *[Bottleneck(c_in if j == 0 else 4 * width, width, 2 if i and j == 0 else 1) for j in range(n)]
                )
            )
            c_in = 4 * width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # meta: built for a checkpoint's weights
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images):
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@functools.lru_cache(maxsize=16)
def pool_matrix(h, w, s, device):
    """(S·S, h·w): row i·S+j averages the cells of an h×w map that ``nn.AdaptiveAvgPool2d(S)`` puts in output
    cell (i, j): rows ⌊i·h/S⌋ to ⌈(i+1)·h/S⌉ (exclusive), columns likewise."""

    def windows(n):
        m = [[0.0] * n for _ in range(s)]
        for i in range(s):
            lo, hi = i * n // s, -(-(i + 1) * n // s)
            m[i][lo:hi] = [1.0 / (hi - lo)] * (hi - lo)
        return torch.tensor(m, device=device)  # built on the host, one copy to the device

    return torch.kron(windows(h), windows(w))


def _fold_batchnorm(module, memory_format=torch.contiguous_format):
    """``module`` with every BatchNorm that directly follows a conv folded into that conv (eval-mode statistics):
    in an ``nn.Sequential`` (consecutive children) or a :class:`Bottleneck` (``convN`` → ``bnN``). Folded convs
    are new modules (weights in ``memory_format``); everything else is shared with ``module``, which is left as it
    was."""
    kids = dict(module.named_children())
    new = {name: _fold_batchnorm(kid, memory_format) for name, kid in kids.items()}
    names = list(kids)
    pairs = (
        zip(names, names[1:])
        if isinstance(module, nn.Sequential)
        else [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        if isinstance(module, (Bottleneck, ResNet))
        else []
    )
    for conv_name, bn_name in pairs:
        conv, bn = kids.get(conv_name), kids.get(bn_name)
        if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and new[conv_name] is conv:
            fused = copy.copy(conv)
            fused._parameters = {}
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
            )
            fused.weight = nn.Parameter(weight.detach().contiguous(memory_format=memory_format), requires_grad=False)
            fused.bias = nn.Parameter(bias.detach(), requires_grad=False)
            new[conv_name], new[bn_name] = fused, nn.Identity()
    if all(new[name] is kids[name] for name in names):
        return module
    twin = copy.copy(module)
    twin._modules = {**module._modules, **new}
    return twin


def _torchvision_models():
    import torchvision  # here, not at the top: its import takes 1.4–1.5 s that ResNet users need not wait

    return torchvision.models


def build_backbone(arch, ctor_name, weights_enum, weights):
    if ctor_name == "ShapesCNN":
        ctor = ShapesCNN
    elif isinstance(ctor_name, int):
        ctor = lambda weights=None: ResNet(ctor_name)  # noqa: E731
    else:
        ctor = getattr(_torchvision_models(), ctor_name)
    if weights is None:
        return ctor(weights=None)
    if weights == "imagenet" and weights_enum is None:
        raise KitError(
            f"there are no ImageNet weights for the encoder '{arch}': pretrain it on your shapes data "
            f"(python -m captioning pretrain-encoder ...) and pass the .pth it writes as the encoder "
            f"weights, or use random weights (encoder_weights=None)"
        )
    if weights == "imagenet":
        enum = getattr(_torchvision_models(), weights_enum).DEFAULT
        try:
            net = ctor(weights=None)
            net.load_state_dict(enum.get_state_dict(progress=True, check_hash=True, weights_only=True))
            return net
        except Exception as e:  # offline: URLError / OSError / RuntimeError from the hub download
            raise KitError(
                f"could not load the ImageNet weights of {arch} ({type(e).__name__}: {e}). This machine "
                f"probably has no internet. Either put the file {enum.url.rsplit('/', 1)[-1]} in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} (or pass its path as the encoder weights), or "
                f"use random weights (encoder_weights=None; the BatchNorm statistics are then recalibrated on "
                f"training images)"
            ) from None
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise KitError(
            f"encoder weights file '{path}' does not exist: give a torchvision {arch} state dict "
            f"(.pth), 'imagenet', or None for random weights"
        )
    net = ctor(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:
        raise KitError(f"encoder weights file '{path}' is not a {arch} state dict: {e}") from None
    return net


def adaptive_pool(fmap, s):
    """feature map (B, C, h, w) → (B, S, S, C), contiguous, float32: ``nn.AdaptiveAvgPool2d(S)``'s windows taken as
    one matrix product with :func:`pool_matrix`. For ResNet-101's 8×8 map at 256 px, pooled to 14×14 for every
    batch a cached epoch or beam search reads, 3.3× faster on a CPU than the pooling op plus the copy to
    (B, S, S, C) (``benchmarks/encoder_speed.py``); the same values to float rounding."""
    b, c, h, w = fmap.shape
    if (h, w) == (s, s):  # ImageNet-sized maps at 448 px: nothing to average
        return fmap.float().permute(0, 2, 3, 1).contiguous()
    with torch.autocast(fmap.device.type, enabled=False):  # fp32 averages, as the pooling op takes them
        k = pool_matrix(h, w, s, fmap.device)
        return torch.matmul(k, fmap.float().flatten(2).transpose(1, 2)).view(b, s, s, c)
