"""The image encoder (given, not a TODO): a CNN without its pooling and classifier, then ``AdaptiveAvgPool2d`` to
a fixed S×S grid of C-channel features. ResNet-101 with ImageNet weights is the course's encoder for real
photos; ``shapes_cnn`` is a small CNN pretrained on the built-in shapes data's boxes (``captioning.pretrain``), the
offline stand-in for ImageNet weights.
"""
from __future__ import annotations

import hashlib
import os

import torch
import torchvision
from torch import nn

from captioning.errors import KitError

# name -> (torchvision constructor, ImageNet weights enum name, channels C of the feature grid, how to cut it)
BACKBONES = {
    "resnet101": ("resnet101", "ResNet101_Weights", 2048),
    "resnet152": ("resnet152", "ResNet152_Weights", 2048),
    "resnet50": ("resnet50", "ResNet50_Weights", 2048),
    "convnext_tiny": ("convnext_tiny", "ConvNeXt_Tiny_Weights", 768),
    "efficientnet_b0": ("efficientnet_b0", "EfficientNet_B0_Weights", 1280),
    # Not from torchvision: a small CNN for CPU demos, pretrained in a minute on the shapes data's object boxes
    # (captioning/pretrain.py), because ImageNet weights cannot be downloaded offline.
    "shapes_cnn": ("ShapesCNN", None, 256),
}



class Encoder(nn.Module):
    """CNN backbone without its pooling/classifier, then ``AdaptiveAvgPool2d`` to a fixed S×S grid.

    Args:
        encoded_image_size: S, the side of the output grid (14 in the course).
        weights: ``"imagenet"`` (torchvision's ImageNet weights, downloaded once to the torch cache), a path to a
            local ``.pth`` state dict of the torchvision model, or ``None`` for random weights (then call
            :meth:`recalibrate` on training images before use).
        arch: one of ``BACKBONES`` (``resnet101`` as in the course).

    forward: images (B, 3, H, W) float, ImageNet-normalised → (B, S, S, C).
    """

    def __init__(self, encoded_image_size=14, weights="imagenet", arch="resnet101"):
        super().__init__()
        if arch not in BACKBONES:
            raise KitError(f"unknown encoder '{arch}': choose one of {', '.join(BACKBONES)}")
        ctor_name, weights_enum, self.encoder_dim = BACKBONES[arch]
        self.arch, self.enc_image_size, self.weights_source = arch, encoded_image_size, weights
        net = _build_backbone(ctor_name, weights_enum, weights)
        if arch.startswith("resnet"):
            # drop avgpool and fc; children 0-3 are stem, 4-7 are blocks 1-4
            self.resnet = nn.Sequential(*list(net.children())[:-2])
            self._tunable_from = 5  # course: fine-tune blocks 2-4
        else:
            self.resnet = net.features  # ConvNeXt / EfficientNet: the feature stages
            self._tunable_from = len(self.resnet) // 2
        if weights is None:
            self._damp_residual_branches()
        self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))
        self.fine_tuning = False
        self.fine_tune(False)

    def _damp_residual_branches(self, gain=0.1):
        """Random weights only: scale each residual branch's last BatchNorm γ to ``gain``.

        In a freshly initialised ResNet-101 the 33 residual branches, each as strong as the skip path, wash the
        input out: a linear probe on the recalibrated output tells the colours of the shapes data barely above
        the majority guess. With branches at 0.1 the signal survives the depth (``benchmarks/random_encoder.py``
        measures both).
        """
        for m in self.resnet.modules():
            last_bn = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None) \
                if type(m).__name__ == "BasicBlock" else None
            if last_bn is not None:
                nn.init.constant_(last_bn.weight, gain)

    def backbone(self, images):
        """images (B, 3, H, W) → feature map (B, C, h, w) before pooling (what the feature cache stores)."""
        return self.resnet(images)

    def pool(self, fmap):
        """feature map (B, C, h, w) → encoder output (B, S, S, C)."""
        return self.adaptive_pool(fmap.float()).permute(0, 2, 3, 1)

    def forward(self, images):
        return self.pool(self.backbone(images))

    def fine_tune(self, fine_tune=True):
        """Freeze everything, then let children ``[5:]`` (blocks 2–4 of a ResNet) learn when ``fine_tune``."""
        self.fine_tuning = bool(fine_tune)
        for p in self.resnet.parameters():
            p.requires_grad = False
        for child in list(self.resnet.children())[self._tunable_from:]:
            for p in child.parameters():
                p.requires_grad = self.fine_tuning
        self.train(self.training)

    def train(self, mode=True):
        # A frozen encoder stays in eval mode: its BatchNorm statistics must not drift with our batches.
        super().train(mode)
        if mode:
            self.resnet.training = self.fine_tuning
            for i, child in enumerate(self.resnet.children()):
                child.train(self.fine_tuning and i >= self._tunable_from)
        return self

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
        try:
            for x in batches:
                self.resnet(x)
        finally:
            for m, (mom, tr) in zip(bns, saved):
                m.momentum = mom
                m.train(tr)
            self.train(self.training)

    def weights_digest(self):
        """Short hash of all parameters and buffers: identifies the encoder in feature-cache keys."""
        h = hashlib.sha256()
        for k, v in sorted(self.resnet.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class ShapesCNN(nn.Module):
    """Six 3×3 conv–BatchNorm–ReLU layers, stride 16, 256 channels: images (B, 3, H, W) → (B, 256, H/16, W/16).

    Each output cell sees 79 pixels, so on the shapes data (objects of 15–36 % of a 160 px side) a cell knows the
    shape it lies on, while the map stays local enough for attention to point at it. Trained by
    ``captioning.pretrain``; ``features`` is what :class:`Encoder` keeps.
    """

    STRIDE = 16  # pixels per output cell: four stride-2 layers

    def __init__(self, weights=None):
        super().__init__()
        widths = [(3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            for cin, cout, stride in widths])

    def forward(self, images):
        return self.features(images)


def _build_backbone(ctor_name, weights_enum, weights):
    ctor = ShapesCNN if ctor_name == "ShapesCNN" else getattr(torchvision.models, ctor_name)
    if weights is None:
        return ctor(weights=None)
    if weights == "imagenet" and weights_enum is None:
        raise KitError(f"there are no ImageNet weights for the encoder '{ctor_name}': pretrain it on your shapes data "
                       f"(python -m captioning pretrain-encoder ...) and pass the .pth it writes as the encoder "
                       f"weights, or use random weights (encoder_weights=None)")
    if weights == "imagenet":
        enum = getattr(torchvision.models, weights_enum).DEFAULT
        try:
            return ctor(weights=enum)
        except Exception as e:  # offline: URLError / OSError / RuntimeError from the hub download
            raise KitError(
                f"could not load the ImageNet weights of {ctor_name} ({type(e).__name__}: {e}). This machine "
                f"probably has no internet. Either put the file {enum.url.rsplit('/', 1)[-1]} in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} (or pass its path as the encoder weights), or "
                f"use random weights (encoder_weights=None; the BatchNorm statistics are then recalibrated on "
                f"training images)") from None
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise KitError(f"encoder weights file '{path}' does not exist: give a torchvision {ctor_name} state dict "
                       f"(.pth), 'imagenet', or None for random weights")
    net = ctor(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:
        raise KitError(f"encoder weights file '{path}' is not a {ctor_name} state dict: {e}") from None
    return net
