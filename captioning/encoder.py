"""The image encoder (given, not a TODO): a CNN without its pooling and classifier, then ``AdaptiveAvgPool2d`` to
a fixed S×S grid of C-channel features. ResNet-101 with ImageNet weights is the course's encoder for real
photos; ``shapes_cnn`` is a small CNN pretrained on the built-in shapes data's boxes (``captioning.data.pretrain``),
the offline stand-in for ImageNet weights.

The speed-ups (a ResNet written without torchvision's import cost, BatchNorm folding, pooling as one matrix
product) live in ``captioning/internals/backbones.py``: nothing a student needs to read.
"""

from __future__ import annotations

from torch import nn

from captioning.internals.backbones import BACKBONES, EncoderSpeedups, adaptive_pool, build_backbone
from captioning.internals.errors import KitError


class Encoder(EncoderSpeedups):
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
        net = build_backbone(arch, ctor_name, weights_enum, weights)
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
        self.folded = False  # True for the inference copy made by for_inference
        self.fine_tuning = False
        self.fine_tune(False)

    def backbone(self, images):
        """images (B, 3, H, W) → feature map (B, C, h, w) before pooling (what the feature cache stores)."""
        return self.resnet(images)

    def pool(self, fmap):
        """feature map (B, C, h, w) → encoder output (B, S, S, C), contiguous, float32: what ``self.adaptive_pool``
        (``nn.AdaptiveAvgPool2d``) gives, computed as one matrix product (``internals.backbones.adaptive_pool``)."""
        return adaptive_pool(fmap, self.enc_image_size)

    def forward(self, images):
        return self.pool(self.backbone(images))

    def fine_tune(self, fine_tune=True):
        """Freeze everything, then let children ``[5:]`` (blocks 2–4 of a ResNet) learn when ``fine_tune``."""
        self.fine_tuning = bool(fine_tune)
        for p in self.resnet.parameters():
            p.requires_grad = False
        for child in list(self.resnet.children())[self._tunable_from :]:
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
