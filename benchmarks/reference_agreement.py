"""How much the five references of a shapes image agree: each reference scored (nltk corpus BLEU) against the
other four, over the test split of the demo's data. A caption model has to be nearly perfect to beat this.

    python benchmarks/reference_agreement.py [--n-test 100 --image-size 160 --seed 0]
"""
import argparse
import json
import tempfile

from captioning.metrics import bleu
from captioning.shapes import generate_shapes

p = argparse.ArgumentParser()
p.add_argument("--n-test", type=int, default=100)
p.add_argument("--image-size", type=int, default=160)
p.add_argument("--seed", type=int, default=0)
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
        refs.append(caps[:i] + caps[i + 1:])
scores = bleu(refs, hyps)
print(f"{len(records)} test images (demo data: seed {a.seed}, {a.image_size} px), each reference vs the other four:")
print("  ".join(f"{k.upper()} {v:.3f}" for k, v in scores.items()))
