"""Regenerate ``reference_values.pt`` — the expected numbers of the public checks — from the REFERENCE solution.

Instructors only (run it in the instructor kit, where models.py holds the solutions)::

    python tests/public/make_reference_values.py --force

Tiny sizes (vocabulary 23, embedding 8, decoder 12, attention 10, encoder channels 6, a 3×3 grid: all distinct, so
that a size passed in the wrong place shows) keep the file small. Dropout is 0.3, not PyTorch's default 0.5, so that
an ``nn.Dropout()`` without ``p`` shows too. ``one_step_train_out`` is ``one_step`` in train mode right after
``torch.manual_seed(meta["train_seed"])`` (dropout is its only random operation). Weights are seeded random
values (not the default init, so that every bias and BatchNorm statistic matters) and are saved with the values as
plain state dicts, so the checks load them into a student's modules by layer name. Everything is a plain
tensor / int / float / str, so the file loads with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

OUT = Path(__file__).with_name("reference_values.pt")
CFG = dict(vocab_size=23, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.3)
ENCODER_DIM, GRID, SEED, TRAIN_SEED = 6, 3, 0, 1234


def seeded_weights(module, seed):
    """Overwrite every parameter with N(0, 0.4²) and BatchNorm running stats with random values (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.4)
    return {k: v.clone() for k, v in module.state_dict().items()}


def captions_batch(g, lengths, t_max):
    caps = torch.randint(1, CFG["vocab_size"], (len(lengths), t_max), generator=g)
    for i, n in enumerate(lengths):
        caps[i, n:] = 0  # <pad>
    return caps, torch.tensor(lengths)


def train_step(dec, key, step_in):
    """one_step in train mode right after torch.manual_seed(TRAIN_SEED); the module is left in eval mode."""
    args = [step_in["embeddings"], step_in["h"], step_in["c"]]
    if key != "rnn":
        args.insert(1, step_in["encoder_out"])
    dec.train()
    torch.manual_seed(TRAIN_SEED)
    with torch.no_grad():
        out = dec.one_step(*[a.clone() for a in args])
    dec.eval()
    names = ["preds", "h", "c"] if key == "rnn" else ["preds", "alpha", "h", "c"]
    return dict(zip(names, out))


def make_values():
    from captioning.models import Attention, DecoderWithAttention, DecoderWithRNN

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    D, E, P, C = CFG["decoder_dim"], CFG["embed_dim"], GRID * GRID, ENCODER_DIM
    out = {
        "meta": {
            "cfg": dict(CFG),
            "encoder_dim": C,
            "grid": GRID,
            "seed": SEED,
            "train_seed": TRAIN_SEED,
            "rel_tol": 1e-4,
            "measure": "max|got - expected| / (max|expected| + 1e-8)",
            "torch": str(torch.__version__),
        }
    }

    for key, cls in (("rnn", DecoderWithRNN), ("attention_decoder", DecoderWithAttention)):
        dec = cls(dict(CFG), encoder_dim=C)
        state = seeded_weights(dec, SEED + (1 if key == "rnn" else 2))
        dec.eval()
        n = 3
        step_in = {
            "embeddings": torch.randn(n, E, generator=g),
            "h": torch.randn(n, D, generator=g),
            "c": torch.randn(n, D, generator=g),
        }
        caps, lens = captions_batch(g, [5, 8, 3, 6], 8)
        fwd_in = {"encoder_out": torch.randn(4, GRID, GRID, C, generator=g), "captions": caps, "lengths": lens}
        with torch.no_grad():
            if key == "rnn":
                preds, h, c = dec.one_step(step_in["embeddings"], step_in["h"], step_in["c"])
                step_out = {"preds": preds, "h": h, "c": c}
                p, ec, dl, si = dec(fwd_in["encoder_out"], caps, lens)
                fwd_out = {"predictions": p, "encoded_captions": ec, "decode_lengths": torch.tensor(dl), "sort_ind": si}
            else:
                step_in["encoder_out"] = torch.randn(n, P, C, generator=g)
                preds, alpha, h, c = dec.one_step(
                    step_in["embeddings"], step_in["encoder_out"], step_in["h"], step_in["c"]
                )
                step_out = {"preds": preds, "alpha": alpha, "h": h, "c": c}
                p, ec, dl, al, si = dec(fwd_in["encoder_out"], caps, lens)
                fwd_out = {
                    "predictions": p,
                    "encoded_captions": ec,
                    "decode_lengths": torch.tensor(dl),
                    "alphas": al,
                    "sort_ind": si,
                }
        out[key] = {
            "state_dict": state,
            "one_step_in": step_in,
            "one_step_out": step_out,
            "one_step_train_out": train_step(dec, key, step_in),
            "forward_in": fwd_in,
            "forward_out": fwd_out,
        }

    att = Attention(C, D, CFG["attention_dim"])
    state = seeded_weights(att, SEED + 3)
    att.eval()
    att_in = {"encoder_out": torch.randn(4, P, C, generator=g), "h": torch.randn(4, D, generator=g)}
    with torch.no_grad():
        z, alpha = att(att_in["encoder_out"], att_in["h"])
    out["attention"] = {"state_dict": state, "in": att_in, "out": {"z": z, "alpha": alpha}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    a = ap.parse_args(argv)
    if a.out.exists() and not a.force:
        sys.exit(f"{a.out} exists; pass --force to regenerate it (from the REFERENCE solution only)")
    values = make_values()
    tmp = a.out.with_name(a.out.name + ".tmp")
    torch.save(values, tmp)
    tmp.replace(a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
