"""Why the adaptive-attention decoder does not look at the shapes: the paper's design side by side with the same
decoder whose LSTM never sees the image, on the shapes recipe's data and encoder.

* ``paper``    — ``DecoderWithAdaptiveAttention`` as in Lu et al. 2017: h₀/c₀ from the mean feature, and the LSTM
                 reads the global feature v_g = relu(W·mean) with every word. The visual sentinel s_t is made from
                 the LSTM's memory, so it already carries what the mean feature says about the image.
* ``no_global`` — the same layers, but h₀/c₀ and v_g read a zero feature (learned constants, like the attention
                 decoder's ``init_state="learned"``): the image reaches the words only through the attended regions.

Both are trained with the recipe's attention-decoder settings (``captioning/data/recipe.py``) and scored on the
TEST split with beam search: BLEU-4, the pointing game, and β (the sentinel's share) averaged over the reference
captions' shape and colour words, function words and other words (teacher forcing; ``adaptive_designs.mean_beta``).
Nothing is asserted.

    python benchmarks/adaptive_sentinel.py [--out outputs/bench_adaptive] [--epochs 10] [--threads 2]

The data and encoder are the recipe's (generated and pretrained into ``--out`` on first use, found afterwards).
"""

from __future__ import annotations

import argparse
import os

from _common import THREADS_HELP, setup, table
from adaptive_designs import mean_beta  # β by word class, shared with the designs' benchmark


def zero_global(cls):
    """Patch the adaptive decoder so that h₀/c₀ and v_g read a zero feature (returns a restore function)."""
    import torch

    old = cls.init_hidden_state, cls._project

    def init_hidden_state(self, encoder_out, mean=None):
        return old[0](self, torch.zeros_like(encoder_out))

    def _project(self, encoder_out, mean=None):
        v, v_att, _ = old[1](self, encoder_out)
        return v, v_att, old[1](self, torch.zeros_like(encoder_out[:, :1]))[2]

    cls.init_hidden_state, cls._project = init_hidden_state, _project
    return lambda: setattr(cls, "init_hidden_state", old[0]) or setattr(cls, "_project", old[1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/bench_adaptive")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's attention-decoder epochs")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    a = p.parse_args()
    setup(a.threads, "adaptive attention: the paper's global feature vs none")

    from captioning.adaptive import DecoderWithAdaptiveAttention
    from captioning.data.recipe import RECIPE, decoder_cfg
    from captioning.evaluation.evaluate import evaluate
    from captioning.notebooks import encoder_settings, ensure_data
    from captioning.solver import fit

    data = ensure_data(os.path.join(a.out, "data"), "shapes_5_cap_per_img_5_min_word_freq")
    enc = encoder_settings(data, progress=False)
    rows = []
    for variant in ("paper", "no_global"):
        cfg = dict(
            decoder_cfg(RECIPE, "adaptive"),
            data_folder=data["data_folder"],
            data_name=data["data_name"],
            output_dir=os.path.join(a.out, variant),
            overwrite=True,
            workers=0,
            print_freq=0,
            device="cpu",
            **enc,
        )
        if a.epochs:
            cfg["epochs"] = a.epochs
        restore = zero_global(DecoderWithAdaptiveAttention) if variant == "no_global" else None
        try:
            best = fit(cfg)["best_checkpoint"]
            r = evaluate(
                best,
                "TEST",
                beam_size=RECIPE["beam_size"],
                length_penalty=RECIPE["length_penalty"],
                coco=False,
                progress=False,
            )
            beta = mean_beta(best, "TEST")
        finally:
            if restore:
                restore()
        g = r["grounding"] or {}
        rows.append(
            [
                variant,
                f"{r['bleu4']:.3f}",
                f"{g.get('all') or 0:.2f} ({g.get('chance') or 0:.2f})",
                *(f"{beta[k]:.2f}" if beta[k] is not None else "-" for k in ("shape/colour", "function", "other")),
            ]
        )
    print()
    print(
        table(
            ["decoder", "BLEU-4", "pointing (chance)", "β shape/colour words", "β function words", "β other words"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
