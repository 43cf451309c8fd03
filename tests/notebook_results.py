"""What the four notebooks achieved in `make test`'s nbval run, checked after it from their metrics files.

nbval compares only the cells that print the same text on every machine (the TODO check, the data summary). The
trained numbers and captions depend on the CPU's instruction set and math library in their last digits, and so
after a few epochs in more than that; they are checked here against the floors the README states, with a margin,
so that `make test` passes on any machine where the reference solution learns as documented and fails where it
does not. `make test` runs this file after the notebooks (it is not named test_*.py, so plain `pytest tests`
skips it) and deletes the metrics files of earlier runs first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest

from captioning.notebooks import NBVAL_ENV

OUT = Path(os.environ.get(NBVAL_ENV) or Path(__file__).resolve().parent.parent / "outputs" / "nbval")
DATA_NAME = "shapes_5_cap_per_img_5_min_word_freq"


def metrics(name):
    path = OUT / f"{name}.metrics.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the notebooks did not run (or failed) before this check; run `make test`")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name, floor", [("train1", 0.40), ("train2", 0.45)])
def test_training_learned(name, floor):
    m = metrics(name)
    first, last = m["history"][0], m["history"][-1]
    assert last["train_loss"] < 0.7 * first["train_loss"], (first["train_loss"], last["train_loss"])
    assert m["best_bleu4"] >= floor, f"{name}: best validation BLEU-4 {m['best_bleu4']:.4f} < {floor}"


def test_the_test_split_scores_and_the_attention_points_at_the_objects():
    m = metrics("test_attention")
    assert (m["split"], m["n_images"], m["beam_size"]) == ("TEST", 1000, 5)
    assert m["bleu4"] >= 0.50, f"test BLEU-4 {m['bleu4']:.4f} < 0.50"
    g = m["grounding"]
    assert g["all"] >= 0.75 and g["all"] > 3 * g["chance"], g


def test_the_captions_are_finished_and_the_right_one_names_a_colour_of_its_image():
    """caption.ipynb captions two test images by default, the first right one and a typical failure, in that order
    (each under ``images`` of its metrics, by path)."""
    m = metrics("caption_attention")
    data = OUT / "data"
    vocab = json.loads((data / f"WORDMAP_{DATA_NAME}.json").read_text())
    assert len(m["images"]) == 2, list(m["images"])
    for path, entry in m["images"].items():
        assert entry["finished"] and len(entry["words"]) >= 3, (path, entry["words"])
        assert set(entry["words"]) <= set(vocab), set(entry["words"]) - set(vocab)
    right = next(iter(m["images"]))  # shown first
    with h5py.File(data / f"TEST_IMAGES_{DATA_NAME}.hdf5", "r") as f:
        names = [os.path.basename(i.decode() if isinstance(i, bytes) else i) for i in f["image_ids"][:]]
        objects = json.loads(f["objects"][names.index(os.path.basename(right))])
    words = m["images"][right]["words"]
    colours = {o["color"] for o in objects}
    assert colours & set(words), f"caption {' '.join(words)!r} names none of the image's colours {colours}"
