"""The public tutorial's procedure, as its users run it, written from its published description (not its code):
the baseline of ``benchmarks/peer.py``.

    python benchmarks/tutorial_procedure.py train --data-folder D --data-name N [--epochs 1] [--threads 2]
    python benchmarks/tutorial_procedure.py eval --data-folder D --data-name N --checkpoint C [--beam-size 5]

What makes it the tutorial's procedure (and not the kit's):
* one training example per *caption*: each image is read and run through the encoder once per caption (5× per
  image per epoch), with no feature cache;
* the attention decoder's step recomputes the encoder projection of every region at every word (the course's
  ``Attention.forward``, here the kit's reference ``DecoderWithAttention.one_step``);
* the frozen encoder runs in train mode during training (its BatchNorm uses batch statistics), as the tutorial's
  ``encoder.train()`` leaves it;
* validation after the epoch with teacher forcing, BLEU-4 from the arg-max words;
* ``eval``: beam search one image at a time (k copies of its features), encoder per image; like the tutorial's
  ``eval.py``, which iterates its caption dataset with batch size 1, each image is decoded once per caption.
Offline: torchvision's ResNet-101 with random weights (the tutorial downloads ImageNet weights). Loss, doubly
stochastic regularisation (alpha_c 1), Adam at 4e-4, gradient clipping at 5 and batch size 32 as in the tutorial.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from nltk.translate.bleu_score import corpus_bleu
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader

from captioning.datasets import CaptionDataset
from captioning.models import DecoderWithAttention


class TutorialEncoder(nn.Module):
    """ResNet-101 without its pool and classifier, pooled to 14×14: (B, 3, H, W) → (B, 14, 14, 2048)."""

    def __init__(self, size=14):
        super().__init__()
        net = torchvision.models.resnet101(weights=None)
        self.resnet = nn.Sequential(*list(net.children())[:-2])
        self.pool = nn.AdaptiveAvgPool2d((size, size))
        for p in self.resnet.parameters():
            p.requires_grad = False

    def forward(self, images):
        return self.pool(self.resnet(images)).permute(0, 2, 3, 1)


def decoder_for(word_map, a):
    cfg = dict(
        vocab_size=len(word_map),
        embed_dim=a.embed_dim,
        attention_dim=a.attention_dim,
        decoder_dim=a.decoder_dim,
        dropout=0.5,
    )
    return DecoderWithAttention(cfg, encoder_dim=2048)


def strip(seq, word_map):
    drop = {word_map["<start>"], word_map["<end>"], word_map["<pad>"]}
    return [w for w in seq if w not in drop]


def train(a):
    data = CaptionDataset(a.data_folder, a.data_name, "TRAIN")
    val = CaptionDataset(a.data_folder, a.data_name, "VAL")
    word_map = data.word_map
    torch.manual_seed(0)
    encoder, decoder = TutorialEncoder(), decoder_for(word_map, a)
    opt = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    if getattr(a, "max_captions", None):  # contention.py: the first captions only (the tutorial has no such option)
        data = torch.utils.data.Subset(data, range(min(a.max_captions, len(data))))
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=a.workers)
    for epoch in range(a.epochs):
        decoder.train()
        encoder.train()
        t0, n = time.time(), 0
        for imgs, caps, caplens in loader:
            enc = encoder(imgs)  # every caption's image encoded again (no parameter needs a gradient)
            scores, caps_sorted, lengths, alphas, _ = decoder(enc, caps, caplens)
            targets = caps_sorted[:, 1:]
            scores = pack_padded_sequence(scores, lengths, batch_first=True).data
            targets = pack_padded_sequence(targets, lengths, batch_first=True).data
            loss = F.cross_entropy(scores, targets) + 1.0 * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_value_(decoder.parameters(), 5.0)
            opt.step()
            n += len(caps)
        print(f"epoch {epoch}: {n} captions in {time.time() - t0:.1f} s, last loss {loss.item():.3f}", flush=True)
        print(f"validation BLEU-4 {validate(encoder, decoder, val, word_map, a.workers):.4f}", flush=True)
    torch.save({"decoder": decoder.state_dict(), "encoder": encoder.state_dict()}, a.checkpoint)


@torch.no_grad()
def validate(encoder, decoder, val, word_map, workers):
    decoder.eval()
    encoder.eval()
    refs, hyps = [], []
    for imgs, caps, caplens, allcaps in DataLoader(val, batch_size=32, num_workers=workers):
        scores, _, lengths, _, sort_ind = decoder(encoder(imgs), caps, caplens)
        preds = scores.argmax(dim=2).tolist()
        hyps += [p[:n] for p, n in zip(preds, lengths)]
        refs += [[strip(c, word_map) for c in allcaps[j].tolist()] for j in sort_ind.tolist()]
    return corpus_bleu(refs, hyps)


@torch.no_grad()
def beam_one_image(encoder, decoder, image, word_map, k=5, max_steps=50):
    """The tutorial's beam search: one image, k rows of its features, the k best (sequence, word) pairs kept."""
    enc = encoder(image.unsqueeze(0)).reshape(1, -1, 2048).expand(k, -1, -1)
    seqs = torch.full((k, 1), word_map["<start>"], dtype=torch.long)
    top = torch.zeros(k, 1)
    h, c = decoder.init_hidden_state(enc)
    done, done_scores = [], []
    for step in range(max_steps):
        emb = decoder.embedding(seqs[:, -1])
        scores, _, h, c = decoder.one_step(emb, enc, h, c)
        scores = top.expand_as(scores) + F.log_softmax(scores, dim=1)
        flat = scores[0] if step == 0 else scores.reshape(-1)
        top_scores, top_words = flat.topk(len(seqs))
        prev, nxt = top_words // scores.size(1), top_words % scores.size(1)
        seqs = torch.cat([seqs[prev], nxt.unsqueeze(1)], dim=1)
        ended = nxt == word_map["<end>"]
        done += seqs[ended].tolist()
        done_scores += top_scores[ended].tolist()
        keep = ~ended
        if not keep.any():
            break
        seqs, enc, h, c = seqs[keep], enc[prev[keep]], h[prev[keep]], c[prev[keep]]
        top = top_scores[keep].unsqueeze(1)
    if not done:
        done, done_scores = seqs.tolist(), top.squeeze(1).tolist()
    return done[max(range(len(done)), key=lambda i: done_scores[i])]


def evaluate(a):
    test = CaptionDataset(a.data_folder, a.data_name, a.split)
    word_map = test.word_map
    encoder, decoder = TutorialEncoder(), decoder_for(word_map, a).eval()
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    encoder.load_state_dict(ck["encoder"])
    decoder.load_state_dict(ck["decoder"])
    refs, hyps = [], []
    for k in range(len(test)):  # the caption dataset, batch size 1: each image once per caption, as eval.py
        i = k // test.cpi
        seq = beam_one_image(encoder, decoder, test.image(i), word_map, k=a.beam_size)
        hyps.append(strip(seq, word_map))
        refs.append([strip(c, word_map) for c in test.captions[i * test.cpi : (i + 1) * test.cpi].tolist()])
    print(
        f"{a.split} BLEU-4 {corpus_bleu(refs, hyps):.4f} on {test.n_images} images ({len(test)} decodings), "
        f"beam {a.beam_size}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "eval"])
    ap.add_argument("--data-folder", required=True)
    ap.add_argument("--data-name", required=True)
    ap.add_argument("--checkpoint", required=True, help="written by train, read by eval")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--split", default="TEST")
    ap.add_argument("--embed-dim", type=int, default=512)
    ap.add_argument("--attention-dim", type=int, default=512)
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    train(a) if a.mode == "train" else evaluate(a)


if __name__ == "__main__":
    main()
