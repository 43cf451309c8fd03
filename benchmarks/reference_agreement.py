"""How much the five references of a shapes image agree: each reference scored (nltk corpus BLEU) against the
other four, over the test split of the demo's data. A caption model has to be nearly perfect to beat this.

    python benchmarks/reference_agreement.py [--n-test 100 --image-size 160 --seed 0 --samples 30]
"""

import argparse
import json
import tempfile

from captioning.data.shapes import generate_shapes
from captioning.evaluation.metrics import bleu

p = argparse.ArgumentParser()
p.add_argument("--n-test", type=int, default=100)
p.add_argument("--image-size", type=int, default=160)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--samples", type=int, default=30, help="captions drawn per image for the perfect-recognition estimate")
a = p.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    path = generate_shapes(tmp, n_train=1000, n_val=100, n_test=a.n_test, image_size=a.image_size, seed=a.seed)
    with open(path) as fh:
        records = [r for r in json.load(fh)["images"] if r["split"] == "test"]
refs, hyps = [], []
for r in records:
    caps = [s["tokens"] for s in r["sentences"]]
    for i, c in enumerate(caps):
        hyps.append(c)
        refs.append(caps[:i] + caps[i + 1 :])
scores = bleu(refs, hyps)
print(f"{len(records)} test images (demo data: seed {a.seed}, {a.image_size} px), each reference vs the other four:")
print("  ".join(f"{k.upper()} {v:.3f}" for k, v in scores.items()))

# What a model that recognises everything perfectly could score: for each image draw --samples captions from the
# same grammar (fresh random choices; the background tone is read from the references), keep the one that agrees
# best with the others (minimum Bayes risk under sentence BLEU-4) and score it against the five real references.
import random  # noqa: E402

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402

from captioning.data.shapes import _caption  # noqa: E402

smooth = SmoothingFunction().method1
mbr_hyps, mbr_refs = [], []
for r in records:
    caps = [s["tokens"] for s in r["sentences"]]
    tone = "dark" if any("dark" in c for c in caps) else "light"
    rng = random.Random(f"mbr-{a.seed}-{r['imgid']}")
    pool = [_caption(rng, r["objects"], tone, a.image_size) for _ in range(a.samples)]
    best = max(pool, key=lambda c: sum(sentence_bleu([o], c, smoothing_function=smooth) for o in pool if o is not c))
    mbr_hyps.append(best)
    mbr_refs.append(caps)
scores = bleu(mbr_refs, mbr_hyps)
print(f"the most typical of {a.samples} fresh captions from the grammar per image (perfect recognition), vs all five:")
print("  ".join(f"{k.upper()} {v:.3f}" for k, v in scores.items()))
