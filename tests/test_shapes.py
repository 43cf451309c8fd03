"""The procedurally generated shapes dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from captioning.data import shapes
from captioning.data.shapes import COLORS, PLURAL, SHAPES, SIZE_RANGE, generate_shapes
from captioning.internals.errors import KitError


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    path = generate_shapes(out, n_train=30, n_val=6, n_test=6, image_size=96, seed=3)
    return out, json.loads(path.read_text())


def test_json_layout_and_splits(generated):
    out, data = generated
    assert data["dataset"] == "shapes"
    images = data["images"]
    assert [im["split"] for im in images] == ["train"] * 30 + ["val"] * 6 + ["test"] * 6
    assert [im["imgid"] for im in images] == list(range(42))
    for im in images:
        assert (out / im["filepath"] / im["filename"]).is_file()
        assert len(im["sentids"]) == len(im["sentences"]) == 5
        assert [s["sentid"] for s in im["sentences"]] == im["sentids"]
        assert all(s["imgid"] == im["imgid"] for s in im["sentences"])


def test_five_distinct_short_captions_small_vocabulary(generated):
    _, data = generated
    vocab = set()
    for im in data["images"]:
        captions = [tuple(s["tokens"]) for s in im["sentences"]]
        assert len(set(captions)) == 5
        assert all(1 <= len(c) <= 16 for c in captions)
        vocab.update(w for c in captions for w in c)
    assert len(vocab) < 60


def test_captions_name_the_objects(generated):
    _, data = generated
    for im in data["images"]:
        words = {w for s in im["sentences"] for w in s["tokens"]}
        for o in im["objects"]:
            assert o["color"] in words
            assert o["shape"] in words or o["shape"] + "s" in words or o["shape"] + "es" in words


def _first_named(sentence, objects):
    """The objects of the first colour–shape phrase of a caption."""
    tokens = sentence["tokens"]
    singular = {v: k for k, v in PLURAL.items()}
    i = next(i for i, w in enumerate(tokens) if w in COLORS)
    color, shape = tokens[i], singular.get(tokens[i + 1], tokens[i + 1])
    return [o for o in objects if (o["color"], o["shape"]) == (color, shape)]


def _larger_first_rate(data):
    """Among captions of images whose objects differ in size: how often the first phrase names a large object."""
    firsts = [
        any(o["size"] == "large" for o in _first_named(s, im["objects"]))
        for im in data["images"]
        if len({o["size"] for o in im["objects"]}) == 2
        for s in im["sentences"]
    ]
    return float(np.mean(firsts)), len(firsts)


def test_captions_name_larger_objects_first(tmp_path, monkeypatch):
    data = json.loads(
        generate_shapes(tmp_path / "a", n_train=120, n_val=0, n_test=0, image_size=96, seed=5).read_text()
    )
    rate, n = _larger_first_rate(data)
    assert n > 150 and rate == 1.0
    monkeypatch.setattr(shapes, "LARGER_FIRST", 0.0)
    shuffled = json.loads(
        generate_shapes(tmp_path / "b", n_train=120, n_val=0, n_test=0, image_size=96, seed=5).read_text()
    )
    assert 0.3 < _larger_first_rate(shuffled)[0] < 0.8  # a random order: a large group is one of two or three
    # the grammar has its own random stream: the pictures do not depend on how captions are drawn
    assert [im["objects"] for im in shuffled["images"]] == [im["objects"] for im in data["images"]]


def test_objects_inside_image_apart_and_sized(generated):
    out, data = generated
    size = 96
    for im in data["images"]:
        objects = im["objects"]
        assert 1 <= len(objects) <= 3
        for o in objects:
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in SIZE_RANGE
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            lo, hi = SIZE_RANGE[o["size"]]
            assert lo * size - 1 <= x1 - x0 <= hi * size + 1
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                overlap_w = min(a["bbox"][2], b["bbox"][2]) - max(a["bbox"][0], b["bbox"][0])
                overlap_h = min(a["bbox"][3], b["bbox"][3]) - max(a["bbox"][1], b["bbox"][1])
                assert overlap_w <= 0 or overlap_h <= 0


def test_images_show_the_objects_in_their_colours(generated):
    out, data = generated
    for im in data["images"]:
        pixels = np.asarray(Image.open(out / im["filepath"] / im["filename"]))
        assert pixels.shape == (96, 96, 3)
        for o in im["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            # The middle of every shape's box is filled (the star's centre too).
            centre = pixels[(y0 + y1) // 2 - 1 : (y0 + y1) // 2 + 2, (x0 + x1) // 2 - 1 : (x0 + x1) // 2 + 2]
            mean = centre.reshape(-1, 3).mean(0)
            nearest = min(COLORS, key=lambda c: np.abs(np.asarray(COLORS[c]) - mean).sum())
            assert nearest == o["color"], (im["filename"], o, mean)


def test_deterministic_for_a_seed(tmp_path):
    a = generate_shapes(tmp_path / "a", n_train=8, n_val=2, n_test=2, image_size=64, seed=7)
    b = generate_shapes(tmp_path / "b", n_train=8, n_val=2, n_test=2, image_size=64, seed=7)
    c = generate_shapes(tmp_path / "c", n_train=8, n_val=2, n_test=2, image_size=64, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for f in sorted((tmp_path / "a" / "images").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / "images" / f.name).read_bytes()


def test_parallel_drawing_matches_serial(tmp_path):
    # 130 images are drawn by a process pool (>= 64 per worker), 12 in-process: same pixels either way.
    big = generate_shapes(tmp_path / "big", n_train=130, n_val=0, n_test=0, image_size=32, seed=1)
    small = generate_shapes(tmp_path / "small", n_train=12, n_val=0, n_test=0, image_size=32, seed=1)
    big_images = json.loads(big.read_text())["images"][:12]
    assert big_images == json.loads(small.read_text())["images"]
    for im in big_images:
        assert (tmp_path / "big/images" / im["filename"]).read_bytes() == (
            tmp_path / "small/images" / im["filename"]
        ).read_bytes()


@pytest.mark.parametrize("kwargs", [dict(n_train=-1), dict(n_train=0, n_val=0, n_test=0), dict(image_size=16)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(KitError):
        generate_shapes(tmp_path, **kwargs)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KitError, match="file"):
        generate_shapes(blocker / "out", n_train=2, n_val=0, n_test=0, image_size=32)
