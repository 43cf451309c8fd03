"""The networks: an image encoder and three caption decoders.

Read top to bottom:

* ``Encoder`` — a torchvision CNN (ResNet-101 by default) without its classifier; images (B, 3, H, W) become a
  grid of features (B, S, S, C).
* ``DecoderWithRNN`` — Show and Tell (Vinyals et al. 2015): the image is the first input of an LSTM.
* ``Attention`` + ``DecoderWithAttention`` — Show, Attend and Tell (Xu et al. 2015): at every word the LSTM
  looks at a soft-attention-weighted mix of the S×S regions.
* ``DecoderWithAdaptiveAttention`` — Knowing When to Look (Lu et al. 2017): a visual sentinel lets the model
  decide, per word, how much to look at the image at all. Reference only (not a student TODO).

Students fill in the regions between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; the banner comment right
above each region says what goes there. The layer *names* are part of the contract: the grader copies weights
into your modules by these names and compares outputs.

Shapes used in docstrings: B batch, P = S·S encoder regions, C encoder channels (2048 for ResNet-101),
T caption length incl. ``<start>``/``<end>``, E embed_dim, D decoder_dim, A attention_dim, V vocab_size.
"""
from __future__ import annotations

import hashlib
import os

import torch
import torch.nn.functional as F
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


class TodoError(AttributeError, NotImplementedError):
    """A layer a student has not defined yet. An AttributeError so that ``hasattr`` keeps working."""


class _Graded(nn.Module):
    """Turns "no attribute 'fc'" into a message that names the TODO which defines the layer."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            raise TodoError(
                f"TODO {type(self).__name__}.__init__: layer '{name}' is not defined yet "
                f"(define it in the __init__ TODO of {type(self).__name__} in models.py)") from None


# ----------------------------------------------------------------------------------------------------------------
# Encoder (given)
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Decoder 1: Show and Tell
# ----------------------------------------------------------------------------------------------------------------
class DecoderWithRNN(_Graded):
    """Show and Tell decoder.

    The image feature is the mean of the encoder's S×S regions, (B, C). (The course's first version flattened
    14·14·2048 = 401,408 inputs into one Linear layer — 205 M parameters; Show and Tell feeds a pooled CNN
    feature, which is what this does.) ``bn(init(feature))`` is the LSTM's first input; the words follow with
    teacher forcing.

    Args:
        cfg: dict with ``vocab_size`` V, ``embed_dim`` E, ``decoder_dim`` D, ``dropout``.
        encoder_dim: C.
    """

    has_attention = False

    def __init__(self, cfg, encoder_dim=2048):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.embed_dim = cfg["embed_dim"]
        self.decoder_dim = cfg["decoder_dim"]
        self.vocab_size = cfg["vocab_size"]
        self.dropout_p = cfg["dropout"]

        # ==================================== TODO DecoderWithRNN.__init__ ====================================
        # Define these layers (the names are graded):
        #   self.embedding   nn.Embedding: word index -> (E,) vector         (vocab_size, embed_dim)
        #   self.decode_step nn.LSTMCell: input E, hidden D                   (embed_dim, decoder_dim)
        #   self.init        nn.Linear: image feature C -> LSTM input E      (encoder_dim, embed_dim)
        #   self.bn          nn.BatchNorm1d over the E features of init's output
        #   self.fc          nn.Linear: hidden D -> scores over the vocabulary (decoder_dim, vocab_size)
        #   self.dropout     nn.Dropout(p=self.dropout_p)
        # ========================================================================================================
        ### BEGIN SOLUTION
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.decode_step = nn.LSTMCell(self.embed_dim, self.decoder_dim)
        self.init = nn.Linear(self.encoder_dim, self.embed_dim)
        self.bn = nn.BatchNorm1d(self.embed_dim)
        self.fc = nn.Linear(self.decoder_dim, self.vocab_size)
        self.dropout = nn.Dropout(p=self.dropout_p)
        ### END SOLUTION
        self.init_weights()

    def init_weights(self):
        """Uniform(-0.1, 0.1) embeddings and fc weights, zero fc bias (as in the reference tutorial)."""
        if "embedding" in self._modules:  # absent while the __init__ TODO is open: stay constructible
            self.embedding.weight.data.uniform_(-0.1, 0.1)
        if "fc" in self._modules:
            self.fc.bias.data.fill_(0)
            self.fc.weight.data.uniform_(-0.1, 0.1)

    def init_hidden_state(self, encoder_out):
        """Feed the image: encoder_out (B, S, S, C) or (B, P, C) → (h, c), each (B, D)."""
        batch_size = encoder_out.size(0)
        feature = encoder_out.reshape(batch_size, -1, self.encoder_dim).mean(dim=1)  # (B, C)
        h = encoder_out.new_zeros(batch_size, self.decoder_dim)
        c = encoder_out.new_zeros(batch_size, self.decoder_dim)
        return self.decode_step(self.bn(self.init(feature)), (h, c))

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """Teacher-forced decoding of a batch.

        Args:
            encoder_out: (B, S, S, C) or (B, P, C).
            encoded_captions: (B, T) word indices, ``<start> … <end> <pad>…``.
            caption_lengths: (B,) or (B, 1) number of words incl. ``<start>``/``<end>``.

        Returns:
            predictions: (B, max(decode_lengths), V) scores; rows past a caption's length stay 0.
            encoded_captions: (B, T) sorted by decreasing length (targets are ``[:, 1:]``).
            decode_lengths: list of B ints, ``caption_length - 1``.
            sort_ind: (B,) the permutation applied to the batch.
        """
        batch_size = encoder_out.size(0)
        caption_lengths, sort_ind = caption_lengths.reshape(-1).sort(dim=0, descending=True)
        encoder_out = encoder_out[sort_ind]
        encoded_captions = encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)  # (B, T, E)
        h, c = self.init_hidden_state(encoder_out)  # (B, D) each
        # no prediction for <end>: decode up to the word before it
        decode_lengths = (caption_lengths - 1).tolist()
        predictions = encoder_out.new_zeros(batch_size, max(decode_lengths), self.vocab_size)

        # ==================================== TODO DecoderWithRNN.forward =====================================
        # Teacher forcing over a shrinking batch (captions are sorted longest first). For t in
        # range(max(decode_lengths)):
        #   num = how many captions are still longer than t (decode_lengths[i] > t)
        #   run self.one_step on embeddings[:num, t, :] (num, E), h[:num], c[:num] (num, D)
        #   store its scores (num, V) in predictions[:num, t, :]; keep the new h, c for the next step
        # Rows >= num (finished captions) must not be touched: padding never influences real predictions.
        # ========================================================================================================
        ### BEGIN SOLUTION
        for t in range(max(decode_lengths)):
            num = sum(1 for length in decode_lengths if length > t)
            preds, h, c = self.one_step(embeddings[:num, t, :], h[:num], c[:num])
            predictions[:num, t, :] = preds
        ### END SOLUTION
        return predictions, encoded_captions, decode_lengths, sort_ind

    def one_step(self, embeddings, h, c):
        """One LSTM step.

        Args: embeddings (N, E) of the previous words; h, c (N, D).
        Returns: preds (N, V) scores of the next word, h, c (N, D).
        """
        # ==================================== TODO DecoderWithRNN.one_step ====================================
        # h, c = self.decode_step(embeddings, (h, c));  preds = self.fc(self.dropout(h))   -> (N, V)
        # ========================================================================================================
        ### BEGIN SOLUTION
        h, c = self.decode_step(embeddings, (h, c))
        preds = self.fc(self.dropout(h))
        ### END SOLUTION
        return preds, h, c


# ----------------------------------------------------------------------------------------------------------------
# Decoder 2: Show, Attend and Tell
# ----------------------------------------------------------------------------------------------------------------
class Attention(_Graded):
    """Soft attention: α = softmax over regions of att(relu(encoder_att(encoder_out) + decoder_att(h))).

    Args: encoder_dim C, decoder_dim D, attention_dim A.
    """

    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super().__init__()
        # ==================================== TODO Attention.__init__ =========================================
        # Three Linear layers (names graded):
        #   self.encoder_att  C -> A      self.decoder_att  D -> A      self.att  A -> 1
        # ========================================================================================================
        ### BEGIN SOLUTION
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.att = nn.Linear(attention_dim, 1)
        ### END SOLUTION

    def forward(self, encoder_out, decoder_hidden):
        """
        Args: encoder_out (N, P, C); decoder_hidden (N, D).
        Returns: z (N, C) the attention-weighted encoding; alpha (N, P) weights that sum to 1 over the P regions.
        """
        # ==================================== TODO Attention.forward ==========================================
        #   att1 = encoder_att(encoder_out)            (N, P, A)
        #   att2 = decoder_att(decoder_hidden)         (N, A) -> unsqueeze to (N, 1, A) to broadcast over P
        #   e    = att(relu(att1 + att2))              (N, P, 1) -> squeeze to (N, P)
        #   alpha = softmax of e over the P regions    (N, P)
        #   z    = sum over P of encoder_out * alpha   (N, C)
        # ========================================================================================================
        ### BEGIN SOLUTION
        att1 = self.encoder_att(encoder_out)
        att2 = self.decoder_att(decoder_hidden).unsqueeze(1)
        e = self.att(F.relu(att1 + att2)).squeeze(2)
        alpha = F.softmax(e, dim=1)
        z = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)
        ### END SOLUTION
        return z, alpha


class DecoderWithAttention(_Graded):
    """Show, Attend and Tell decoder.

    h₀, c₀ = init_h(mean feature), init_c(mean feature). At each step: z, α = attention(encoder_out, h);
    z ← sigmoid(f_beta(h)) ⊙ z; h, c = LSTMCell([embedding ; z], (h, c)); scores = fc(dropout(h)).

    Args:
        cfg: dict with ``vocab_size`` V, ``embed_dim`` E, ``decoder_dim`` D, ``attention_dim`` A, ``dropout``;
            optional ``init_state``: "mean" (the course, default) or "learned" (see ``init_hidden_state``).
        encoder_dim: C.
    """

    has_attention = True

    def __init__(self, cfg, encoder_dim=2048):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.attention_dim = cfg["attention_dim"]
        self.embed_dim = cfg["embed_dim"]
        self.decoder_dim = cfg["decoder_dim"]
        self.vocab_size = cfg["vocab_size"]
        self.dropout_p = cfg["dropout"]
        self.init_state = cfg.get("init_state", "mean")

        # ==================================== TODO DecoderWithAttention.__init__ ==============================
        # Define these layers (the names are graded):
        #   self.attention    Attention(encoder_dim, decoder_dim, attention_dim)
        #   self.embedding    nn.Embedding (vocab_size, embed_dim)
        #   self.decode_step  nn.LSTMCell: input E + C ([embedding ; gated context]), hidden D
        #   self.init_h       nn.Linear C -> D   (initial hidden state from the mean feature)
        #   self.init_c       nn.Linear C -> D   (initial cell state from the mean feature)
        #   self.f_beta       nn.Linear D -> C   (gate; squashed by self.sigmoid)
        #   self.sigmoid      nn.Sigmoid()
        #   self.fc           nn.Linear D -> V
        #   self.dropout      nn.Dropout(p=self.dropout_p)
        # ========================================================================================================
        ### BEGIN SOLUTION
        self.attention = Attention(self.encoder_dim, self.decoder_dim, self.attention_dim)
        self.embedding = nn.Embedding(self.vocab_size, self.embed_dim)
        self.decode_step = nn.LSTMCell(self.embed_dim + self.encoder_dim, self.decoder_dim)
        self.init_h = nn.Linear(self.encoder_dim, self.decoder_dim)
        self.init_c = nn.Linear(self.encoder_dim, self.decoder_dim)
        self.f_beta = nn.Linear(self.decoder_dim, self.encoder_dim)
        self.sigmoid = nn.Sigmoid()
        self.fc = nn.Linear(self.decoder_dim, self.vocab_size)
        self.dropout = nn.Dropout(p=self.dropout_p)
        ### END SOLUTION
        self.init_weights()

    def init_weights(self):
        """Uniform(-0.1, 0.1) embeddings and fc weights, zero fc bias (as in the reference tutorial)."""
        if "embedding" in self._modules:  # absent while the __init__ TODO is open: stay constructible
            self.embedding.weight.data.uniform_(-0.1, 0.1)
        if "fc" in self._modules:
            self.fc.bias.data.fill_(0)
            self.fc.weight.data.uniform_(-0.1, 0.1)

    def init_hidden_state(self, encoder_out):
        """encoder_out (B, S, S, C) or (B, P, C) → h, c, each (B, D), from the mean over regions.

        With cfg ``init_state="learned"`` the layers read a zero feature instead: h₀, c₀ are their learned biases,
        the same for every image, and the image reaches the LSTM only through attention. When the mean feature
        already names the objects, the course's decoder can caption without looking, and its maps then may not
        point at what the words name (README, "Known limitations").
        """
        mean_encoder_out = encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim).mean(dim=1)
        if self.init_state == "learned":
            mean_encoder_out = torch.zeros_like(mean_encoder_out)
        return self.init_h(mean_encoder_out), self.init_c(mean_encoder_out)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """Teacher-forced decoding of a batch.

        Args:
            encoder_out: (B, S, S, C) or (B, P, C).
            encoded_captions: (B, T) word indices.
            caption_lengths: (B,) or (B, 1).

        Returns:
            predictions: (B, max(decode_lengths), V); encoded_captions: (B, T) sorted;
            decode_lengths: list of B ints; alphas: (B, max(decode_lengths), P) attention weights (0 past the end);
            sort_ind: (B,).
        """
        batch_size = encoder_out.size(0)
        encoder_out = encoder_out.reshape(batch_size, -1, self.encoder_dim)  # (B, P, C)
        num_pixels = encoder_out.size(1)
        caption_lengths, sort_ind = caption_lengths.reshape(-1).sort(dim=0, descending=True)
        encoder_out = encoder_out[sort_ind]
        encoded_captions = encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)  # (B, T, E)
        h, c = self.init_hidden_state(encoder_out)  # (B, D)
        decode_lengths = (caption_lengths - 1).tolist()
        predictions = encoder_out.new_zeros(batch_size, max(decode_lengths), self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, max(decode_lengths), num_pixels)

        # ==================================== TODO DecoderWithAttention.forward ===============================
        # As in DecoderWithRNN.forward, over a shrinking batch: for t in range(max(decode_lengths)):
        #   num = captions still longer than t
        #   preds (num, V), alpha (num, P), h, c = self.one_step(embeddings[:num, t, :], encoder_out[:num],
        #                                                        h[:num], c[:num])
        #   predictions[:num, t, :] = preds;  alphas[:num, t, :] = alpha
        # ========================================================================================================
        ### BEGIN SOLUTION
        for t in range(max(decode_lengths)):
            num = sum(1 for length in decode_lengths if length > t)
            preds, alpha, h, c = self.one_step(embeddings[:num, t, :], encoder_out[:num], h[:num], c[:num])
            predictions[:num, t, :] = preds
            alphas[:num, t, :] = alpha
        ### END SOLUTION
        return predictions, encoded_captions, decode_lengths, alphas, sort_ind

    def one_step(self, embeddings, encoder_out, h, c):
        """One attention + LSTM step.

        Args: embeddings (N, E) of the previous words; encoder_out (N, P, C); h, c (N, D).
        Returns: preds (N, V), alpha (N, P), h, c (N, D).
        """
        # ==================================== TODO DecoderWithAttention.one_step ==============================
        #   z, alpha = self.attention(encoder_out, h)          z (N, C), alpha (N, P)
        #   gate = self.sigmoid(self.f_beta(h));  z = gate * z  (N, C), gate in (0, 1)
        #   h, c = self.decode_step(concatenate [embeddings, z] along dim 1 -> (N, E + C), (h, c))
        #   preds = self.fc(self.dropout(h))                    (N, V)
        # ========================================================================================================
        ### BEGIN SOLUTION
        z, alpha = self.attention(encoder_out, h)
        gate = self.sigmoid(self.f_beta(h))
        z = gate * z
        h, c = self.decode_step(torch.cat([embeddings, z], dim=1), (h, c))
        preds = self.fc(self.dropout(h))
        ### END SOLUTION
        return preds, alpha, h, c


# ----------------------------------------------------------------------------------------------------------------
# Decoder 3: Adaptive Attention with a visual sentinel (reference only — not a student TODO)
# ----------------------------------------------------------------------------------------------------------------
class DecoderWithAdaptiveAttention(nn.Module):
    """Knowing When to Look (Lu et al. 2017).

    Regions v_i = relu(encode_regions(a_i)) (P, D); global v_g = relu(encode_global(mean a)) (E,). The LSTM reads
    [word ; v_g]. A sentinel s = g ⊙ tanh(c_t) with gate g = σ(sentinel_x(x_t) + sentinel_h(h_{t-1})) stores what
    the language model knows. Attention, computed from the *new* h_t, spans the P regions plus the sentinel:
    α̂ = softmax([att(tanh(att_v(v_i) + att_g(h_t)))_i ; att(tanh(att_s(s) + att_g(h_t)))]), β = α̂_{P+1} is how
    much the word relies on the sentinel rather than the image, and ĉ = β·s + (1 − β)·c_visual = β·s + Σ α̂_i v_i.
    Scores = fc(dropout(ĉ + h_t)).

    Same constructor / ``forward`` / ``one_step`` conventions as ``DecoderWithAttention``; its alphas have P + 1
    columns, the last being β.
    """

    has_attention = True

    def __init__(self, cfg, encoder_dim=2048):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.embed_dim, self.decoder_dim = cfg["embed_dim"], cfg["decoder_dim"]
        self.attention_dim, self.vocab_size = cfg["attention_dim"], cfg["vocab_size"]
        e, d, a = self.embed_dim, self.decoder_dim, self.attention_dim
        self.embedding = nn.Embedding(self.vocab_size, e)
        self.encode_regions = nn.Linear(encoder_dim, d)
        self.encode_global = nn.Linear(encoder_dim, e)
        self.init_h = nn.Linear(encoder_dim, d)
        self.init_c = nn.Linear(encoder_dim, d)
        self.decode_step = nn.LSTMCell(2 * e, d)
        self.sentinel_x = nn.Linear(2 * e, d)
        self.sentinel_h = nn.Linear(d, d, bias=False)
        self.att_v = nn.Linear(d, a)
        self.att_s = nn.Linear(d, a)
        self.att_g = nn.Linear(d, a)
        self.att = nn.Linear(a, 1)
        self.fc = nn.Linear(d, self.vocab_size)
        self.dropout = nn.Dropout(p=cfg["dropout"])
        self.embedding.weight.data.uniform_(-0.1, 0.1)
        self.fc.bias.data.fill_(0)
        self.fc.weight.data.uniform_(-0.1, 0.1)

    def init_hidden_state(self, encoder_out):
        """encoder_out (B, S, S, C) or (B, P, C) → h, c (B, D)."""
        mean = encoder_out.reshape(encoder_out.size(0), -1, self.encoder_dim).mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def _project(self, encoder_out):
        """encoder_out (N, P, C) → regions v (N, P, D), their attention projection (N, P, A), global v_g (N, E)."""
        v = F.relu(self.encode_regions(encoder_out))
        v_g = F.relu(self.encode_global(encoder_out.mean(dim=1)))
        return v, self.att_v(v), v_g

    def _step(self, embeddings, v, v_att, v_g, h, c):
        x = torch.cat([embeddings, v_g], dim=1)  # (N, 2E)
        gate = torch.sigmoid(self.sentinel_x(x) + self.sentinel_h(h))
        h, c = self.decode_step(x, (h, c))
        s = gate * torch.tanh(c)  # visual sentinel (N, D)
        g = self.att_g(h)  # (N, A)
        z = self.att(torch.tanh(v_att + g.unsqueeze(1))).squeeze(2)  # (N, P)
        z_s = self.att(torch.tanh(self.att_s(s) + g))  # (N, 1)
        alpha_hat = F.softmax(torch.cat([z, z_s], dim=1), dim=1)  # (N, P + 1)
        beta = alpha_hat[:, -1:]
        context = beta * s + (v * alpha_hat[:, :-1].unsqueeze(2)).sum(dim=1)  # (N, D)
        preds = self.fc(self.dropout(context + h))
        return preds, alpha_hat, h, c

    def one_step(self, embeddings, encoder_out, h, c):
        """embeddings (N, E), encoder_out (N, P, C), h, c (N, D) → preds (N, V), alpha_hat (N, P + 1), h, c."""
        v, v_att, v_g = self._project(encoder_out)
        return self._step(embeddings, v, v_att, v_g, h, c)

    def forward(self, encoder_out, encoded_captions, caption_lengths):
        """As ``DecoderWithAttention.forward``; alphas are (B, max(decode_lengths), P + 1)."""
        batch_size = encoder_out.size(0)
        encoder_out = encoder_out.reshape(batch_size, -1, self.encoder_dim)
        caption_lengths, sort_ind = caption_lengths.reshape(-1).sort(dim=0, descending=True)
        encoder_out, encoded_captions = encoder_out[sort_ind], encoded_captions[sort_ind]
        embeddings = self.embedding(encoded_captions)
        h, c = self.init_hidden_state(encoder_out)
        v, v_att, v_g = self._project(encoder_out)  # once per image, not per word
        decode_lengths = (caption_lengths - 1).tolist()
        steps = max(decode_lengths)
        predictions = encoder_out.new_zeros(batch_size, steps, self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, steps, encoder_out.size(1) + 1)
        for t in range(steps):
            n = sum(1 for length in decode_lengths if length > t)
            preds, alpha, h, c = self._step(embeddings[:n, t], v[:n], v_att[:n], v_g[:n], h[:n], c[:n])
            predictions[:n, t], alphas[:n, t] = preds, alpha
        return predictions, encoded_captions, decode_lengths, alphas, sort_ind
