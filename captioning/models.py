"""The two caption decoders you write, and the attention module. Read top to bottom:

* ``DecoderWithRNN`` — Show and Tell (Vinyals et al. 2015): the image is the first input of an LSTM.
* ``Attention`` + ``DecoderWithAttention`` — Show, Attend and Tell (Xu et al. 2015): at every word the LSTM
  looks at a soft-attention-weighted mix of the S×S regions.

The encoder is given (``captioning/encoder.py``: a torchvision CNN, ResNet-101 by default, without its classifier;
images (B, 3, H, W) become a grid of features (B, S, S, C)); ``Encoder`` can be imported from here as in the
course. A third decoder, ``DecoderWithAdaptiveAttention`` (Knowing When to Look), is reference code in
``captioning/adaptive.py``, not a TODO.

Students fill in the code under each ``TODO`` banner; the banner says what goes there, with the shapes. The layer *names* are part of the contract: the grader copies weights
into your modules by these names and compares outputs.

Shapes used in docstrings: B batch, P = S·S encoder regions, C encoder channels (2048 for ResNet-101),
T caption length incl. ``<start>``/``<end>``, E embed_dim, D decoder_dim, A attention_dim, V vocab_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401  (for your code: F.relu, F.softmax, …)
from torch import nn

from captioning.encoder import Encoder  # noqa: F401  (the course imports the encoder from models.py)


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
                f"(define it in the __init__ TODO of {type(self).__name__} in models.py)"
            ) from None

    def init_weights(self):
        """Uniform(-0.1, 0.1) embeddings and fc weights, zero fc bias (as in the reference tutorial)."""
        if "embedding" in self._modules:  # absent while the __init__ TODO is open: stay constructible
            self.embedding.weight.data.uniform_(-0.1, 0.1)
        if "fc" in self._modules:
            self.fc.bias.data.fill_(0)
            self.fc.weight.data.uniform_(-0.1, 0.1)


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

    def init_hidden_state(self, encoder_out):
        """encoder_out (B, S, S, C) or (B, P, C) → h, c, each (B, D), from the mean over regions.

        With cfg ``init_state="learned"`` the layers read a zero feature instead: h₀, c₀ are their learned biases,
        the same for every image, and the image reaches the LSTM only through attention. When the mean feature
        already names the objects, the course's decoder can caption without looking, and its maps then may not
        point at what the words name (students' README, "Where this kit differs from the course text").
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
