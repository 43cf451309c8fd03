"""Karpathy JSON + images -> the ten input files (captioning.data.prepare)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import captioning.data.images as images
import captioning.data.prepare as prepare
from captioning.data.images import load_image
from captioning.data.prepare import build_word_map, choose_captions, create_input_files
from captioning.internals.errors import KitError

KINDS = ("IMAGES", "CAPTIONS", "CAPLENS")

# The course's example record (section 2.2), verbatim apart from dropping "cocoid".
COURSE_RECORD = {
    "filepath": "val2014",
    "sentids": [770337, 771687, 772707, 776154, 781998],
    "filename": "COCO_val2014_000000391895.jpg",
    "imgid": 0,
    "split": "test",
    "sentences": [
        {
            "tokens": [
                "a",
                "man",
                "with",
                "a",
                "red",
                "helmet",
                "on",
                "a",
                "small",
                "moped",
                "on",
                "a",
                "dirt",
                "road",
            ],
            "raw": "A man with a red helmet on a small moped on a dirt road. ",
            "imgid": 0,
            "sentid": 770337,
        },
        {
            "tokens": ["man", "riding", "a", "motor", "bike", "on", "a", "dirt", "road", "on", "the", "countryside"],
            "raw": "Man riding a motor bike on a dirt road on the countryside.",
            "imgid": 0,
            "sentid": 771687,
        },
        {
            "tokens": ["a", "man", "riding", "on", "the", "back", "of", "a", "motorcycle"],
            "raw": "A man riding on the back of a motorcycle.",
            "imgid": 0,
            "sentid": 772707,
        },
        {
            "tokens": [
                "a",
                "dirt",
                "path",
                "with",
                "a",
                "young",
                "person",
                "on",
                "a",
                "motor",
                "bike",
                "rests",
                "to",
                "the",
                "foreground",
                "of",
                "a",
                "verdant",
                "area",
                "with",
                "a",
                "bridge",
                "and",
                "a",
                "background",
                "of",
                "cloud",
                "wreathed",
                "mountains",
            ],
            "raw": "A dirt path with a young person on a motor bike rests to the foreground of a verdant area with a "
            "bridge and a background of cloud-wreathed mountains. ",
            "imgid": 0,
            "sentid": 776154,
        },
        {
            "tokens": [
                "a",
                "man",
                "in",
                "a",
                "red",
                "shirt",
                "and",
                "a",
                "red",
                "hat",
                "is",
                "on",
                "a",
                "motorcycle",
                "on",
                "a",
                "hill",
                "side",
            ],
            "raw": "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
            "imgid": 0,
            "sentid": 781998,
        },
    ],
}


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def record(filename, split, sentences, filepath=None, **extra) -> dict:
    rec = {"filename": filename, "split": split, "sentences": [{"tokens": s.split()} for s in sentences], **extra}
    if filepath is not None:
        rec["filepath"] = filepath
    return rec


def write_image(path: Path, color=(200, 30, 30), size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_dataset(root: Path, records: list[dict], images=True) -> tuple[Path, Path]:
    """Write dataset.json and (unless images=False) a solid-colour PNG per record; return (json, image folder)."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    if images:
        for i, rec in enumerate(records):
            write_image(folder / rec.get("filepath", "") / rec["filename"], color=(10 * i, 100, 200))
    path = root / "dataset.json"
    path.write_text(json.dumps({"images": records}))
    return path, folder


def simple_records(n_train=3) -> list[dict]:
    recs = [
        record(f"tr{i}.png", "train", [f"a red square number {i}", "a red box", "red square"]) for i in range(n_train)
    ]
    recs.append(record("va.png", "val", ["a blue circle", "blue round thing"]))
    recs.append(record("te.png", "test", ["a green star", "green star shape"]))
    return recs


def run(root: Path, json_path, folder, **kwargs) -> dict:
    args = dict(captions_per_image=3, min_word_freq=0, output_folder=root / "out", image_size=16, workers=1)
    args.update(kwargs)
    return create_input_files("toy", json_path, folder, **args)


def outputs(out: Path, base: str) -> dict:
    """Everything in the ten files, as Python / numpy objects keyed by file name."""
    data = {}
    for split in ("TRAIN", "VAL", "TEST"):
        with h5py.File(out / f"{split}_IMAGES_{base}.hdf5", "r") as h:
            data[f"{split}_IMAGES"] = {k: h[k][:] for k in h}
            data[f"{split}_IMAGES"]["cpi"] = h.attrs["captions_per_image"]
        for kind in ("CAPTIONS", "CAPLENS"):
            data[f"{split}_{kind}"] = json.loads((out / f"{split}_{kind}_{base}.json").read_text())
    data["WORDMAP"] = json.loads((out / f"WORDMAP_{base}.json").read_text())
    return data


def as_json(data) -> str:
    """A canonical text form of ``outputs()`` for comparing two runs."""

    def default(x):
        if isinstance(x, np.ndarray):
            return [default(v) for v in x] if x.dtype == object else x.tolist()
        if isinstance(x, bytes):
            return x.decode()
        return x.item()

    return json.dumps(data, default=default, sort_keys=True)


def decode(caption: list[int], word_map: dict) -> list[str]:
    rev = {i: w for w, i in word_map.items()}
    words = [rev[i] for i in caption]
    assert words[0] == "<start>"
    return words[1 : words.index("<end>")]


def expected_names(base: str) -> set[str]:
    return {
        f"{s}_{k}_{base}.{'hdf5' if k == 'IMAGES' else 'json'}" for s in ("TRAIN", "VAL", "TEST") for k in KINDS
    } | {f"WORDMAP_{base}.json", f"MANIFEST_{base}.json"}


# ----------------------------------------------------------------------------------------------------------------
# the happy path
# ----------------------------------------------------------------------------------------------------------------


def test_course_example_record(tmp_path):
    train = record(
        "COCO_train2014_000000000009.jpg",
        "train",
        ["a man riding a motorcycle on a road", "a red motorcycle on a dirt road"],
        filepath="train2014",
    )
    val = record("COCO_val2014_000000000042.jpg", "val", ["a man on a bike"], filepath="val2014")
    folder = tmp_path / "coco2014"
    for rec, size in ((train, (640, 480)), (val, (500, 375)), (COURSE_RECORD, (500, 375))):
        write_image(folder / rec["filepath"] / rec["filename"], size=size)
    json_path = tmp_path / "dataset_coco.json"
    json_path.write_text(json.dumps({"images": [train, val, COURSE_RECORD], "dataset": "coco"}))

    summary = create_input_files(
        "coco",
        json_path,
        folder,
        captions_per_image=5,
        min_word_freq=0,
        output_folder=tmp_path / "out",
        max_len=50,
        image_size=32,
        workers=1,
    )
    base = "coco_5_cap_per_img_0_min_word_freq"
    assert summary["data_name"] == base
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (1, 1, 1)
    assert {p.name for p in (tmp_path / "out").iterdir()} == expected_names(base)

    data = outputs(tmp_path / "out", base)
    test = data["TEST_IMAGES"]
    assert test["images"].shape == (1, 3, 32, 32) and test["images"].dtype == np.uint8
    assert test["cpi"] == 5
    assert [s.decode() for s in test["image_ids"]] == ["val2014/COCO_val2014_000000391895.jpg"]
    wm = data["WORDMAP"]
    # Exactly five captions: every one is used once, in some order; words never seen in TRAIN are <unk>.
    assert len(data["TEST_CAPTIONS"]) == 5 and all(len(c) == 52 for c in data["TEST_CAPTIONS"])
    got = sorted(decode(c, wm) for c in data["TEST_CAPTIONS"])
    want = sorted([t if t in wm else "<unk>" for t in s["tokens"]] for s in COURSE_RECORD["sentences"])
    assert got == want
    assert "moped" not in wm and "motorcycle" in wm
    assert sorted(data["TEST_CAPLENS"]) == sorted(len(s["tokens"]) + 2 for s in COURSE_RECORD["sentences"])


def test_encoding_layout(shapes_data):
    folder, base, _ = shapes_data
    # files only: other tests share this folder and add the feature cache in its own subfolder, and training's
    # shared lock on the set (.lock-data-{base}, docs/data.md) once they train on it
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert files - {f".lock-data-{base}"} == expected_names(base)
    data = outputs(folder, base)
    wm = data["WORDMAP"]
    assert wm["<pad>"] == 0 and len(set(wm.values())) == len(wm) == max(wm.values()) + 1
    for split, n in (("TRAIN", 40), ("VAL", 10), ("TEST", 10)):
        caps, lens = data[f"{split}_CAPTIONS"], data[f"{split}_CAPLENS"]
        assert data[f"{split}_IMAGES"]["images"].shape == (n, 3, 64, 64)
        assert len(caps) == len(lens) == 5 * n
        for c, n_tok in zip(caps, lens):
            assert len(c) == 52 and c[0] == wm["<start>"] and c[n_tok - 1] == wm["<end>"]
            assert all(i == 0 for i in c[n_tok:]) and 0 not in c[:n_tok]


def test_captions_belong_to_their_image_and_objects_are_kept(shapes_data):
    folder, base, json_path = shapes_data
    records = {f"{r['filepath']}/{r['filename']}": r for r in json.loads(json_path.read_text())["images"]}
    data = outputs(folder, base)
    wm = data["WORDMAP"]
    for split in ("TRAIN", "VAL", "TEST"):
        ids = [s.decode() for s in data[f"{split}_IMAGES"]["image_ids"]]
        for i, image_id in enumerate(ids):
            rec = records[image_id]
            mine = [decode(c, wm) for c in data[f"{split}_CAPTIONS"][5 * i : 5 * i + 5]]
            assert sorted(mine) == sorted([w if w in wm else "<unk>" for w in s["tokens"]] for s in rec["sentences"])
            assert json.loads(data[f"{split}_IMAGES"]["objects"][i]) == rec["objects"]


def test_pixels_and_rescaled_bboxes(shapes_data, tmp_path):
    _, _, json_path = shapes_data
    summary = create_input_files(
        "shapes", json_path, json_path.parent, min_word_freq=1, image_size=32, output_folder=tmp_path, workers=1
    )
    data = outputs(tmp_path, summary["data_name"])
    rec = json.loads(json_path.read_text())["images"][0]
    original = np.asarray(
        Image.open(json_path.parent / rec["filepath"] / rec["filename"]).resize((32, 32), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(data["TRAIN_IMAGES"]["images"][0], original.transpose(2, 0, 1))
    objects = json.loads(data["TRAIN_IMAGES"]["objects"][0])
    assert [o["bbox"] for o in objects] == [[v / 2 for v in o["bbox"]] for o in rec["objects"]]


def test_flickr_records_without_filepath_and_restval(tmp_path):
    recs = simple_records(n_train=1) + [record("rv.png", "restval", ["a red restval square"])]
    json_path, folder = make_dataset(tmp_path, recs)
    summary = run(tmp_path, json_path, folder)
    assert summary["n_train"] == 2
    data = outputs(tmp_path / "out", summary["data_name"])
    assert [s.decode() for s in data["TRAIN_IMAGES"]["image_ids"]] == ["tr0.png", "rv.png"]
    assert "objects" not in data["TRAIN_IMAGES"]  # the records carry no objects
    assert "restval" in data["WORDMAP"]


def test_rerun_overwrites(tmp_path):
    json_path, folder = make_dataset(tmp_path, simple_records())
    first = run(tmp_path, json_path, folder)
    before = outputs(tmp_path / "out", first["data_name"])
    run(tmp_path, json_path, folder)
    after = outputs(tmp_path / "out", first["data_name"])
    assert as_json(before) == as_json(after)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------------------------------------------
# caption semantics
# ----------------------------------------------------------------------------------------------------------------


def test_word_map_min_word_freq_and_order():
    captions = [["b", "a", "c"], ["b", "a"], ["b", "d"], ["<unk>"]]
    assert build_word_map(captions, 0) == {
        "<pad>": 0,
        "b": 1,
        "a": 2,
        "c": 3,
        "d": 4,
        "<unk>": 5,
        "<start>": 6,
        "<end>": 7,
    }
    # Kept means seen MORE than min_word_freq times: "a" (2x) survives 1 but not 2.
    assert list(build_word_map(captions, 1)) == ["<pad>", "b", "a", "<unk>", "<start>", "<end>"]
    assert list(build_word_map(captions, 2)) == ["<pad>", "b", "<unk>", "<start>", "<end>"]


def test_word_map_from_train_only_and_unknown_words(tmp_path):
    json_path, folder = make_dataset(tmp_path, simple_records())
    summary = run(tmp_path, json_path, folder, min_word_freq=1)
    data = outputs(tmp_path / "out", summary["data_name"])
    wm = data["WORDMAP"]
    # "number" occurs 3x in train, "0" once, "blue" only in val.
    assert "number" in wm and "0" not in wm and "blue" not in wm
    decoded = [decode(c, wm) for c in data["VAL_CAPTIONS"]]
    assert ["a", "<unk>", "<unk>"] in decoded
    assert summary["vocab_size"] == len(wm)


def test_long_captions_dropped(tmp_path):
    recs = simple_records()
    recs[0]["sentences"].append({"tokens": ["long"] * 6})
    recs.append(record("all_long.png", "train", ["w " * 7]))
    json_path, folder = make_dataset(tmp_path, recs)
    summary = run(tmp_path, json_path, folder, max_len=5)
    assert summary["captions_dropped_too_long"] == 2
    assert summary["images_dropped_no_captions"] == 1 and summary["dropped_examples"] == ["all_long.png"]
    data = outputs(tmp_path / "out", summary["data_name"])
    assert summary["n_train"] == 3 and len(data["TRAIN_CAPTIONS"]) == 9
    assert all(len(c) == 7 for c in data["TRAIN_CAPTIONS"])
    assert "long" not in data["WORDMAP"]


def test_choose_captions_top_up_and_sample():
    import random

    rng = random.Random(0)
    few = [["a"], ["b"]]
    topped = choose_captions(few, 5, rng)
    assert len(topped) == 5 and topped[:2] == few and all(c in few for c in topped)
    many = [[str(i)] for i in range(8)]
    sampled = choose_captions(many, 5, rng)
    assert len(sampled) == 5 and len({c[0] for c in sampled}) == 5 and all(c in many for c in sampled)


def test_top_up_through_prepare(tmp_path):
    json_path, folder = make_dataset(tmp_path, simple_records())
    summary = run(tmp_path, json_path, folder, captions_per_image=5)
    data = outputs(tmp_path / "out", summary["data_name"])
    first = [" ".join(decode(c, data["WORDMAP"])) for c in data["TRAIN_CAPTIONS"][:5]]
    assert first[:3] == ["a red square number 0", "a red box", "red square"]  # all three kept, in order
    assert set(first[3:]) <= set(first[:3])  # plus two repeats
    assert len(data["VAL_CAPTIONS"]) == 5 and data["VAL_CAPLENS"][:2] == [5, 5]


def test_deterministic_for_a_seed(tmp_path):
    recs = [record(f"tr{i}.png", "train", [f"caption {k} of {i}" for k in range(6)]) for i in range(4)]
    recs += [record("va.png", "val", ["one"]), record("te.png", "test", ["two"])]
    json_path, folder = make_dataset(tmp_path, recs)
    results = [
        outputs(
            tmp_path / name, run(tmp_path, json_path, folder, seed=seed, output_folder=tmp_path / name)["data_name"]
        )
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    dump = [as_json(r) for r in results]
    assert dump[0] == dump[1]
    assert results[0]["TRAIN_CAPTIONS"] != results[2]["TRAIN_CAPTIONS"]
    for file in expected_names("toy_3_cap_per_img_0_min_word_freq"):  # the HDF5 files too: no timestamps
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_parallel_workers_match_serial(shapes_data, tmp_path):
    _, _, json_path = shapes_data
    kw = dict(min_word_freq=1, image_size=48)
    s1 = create_input_files("shapes", json_path, json_path.parent, output_folder=tmp_path / "w1", workers=1, **kw)
    create_input_files("shapes", json_path, json_path.parent, output_folder=tmp_path / "w2", workers=2, **kw)
    one, two = outputs(tmp_path / "w1", s1["data_name"]), outputs(tmp_path / "w2", s1["data_name"])
    assert as_json(one) == as_json(two)


# ----------------------------------------------------------------------------------------------------------------
# odd image modes
# ----------------------------------------------------------------------------------------------------------------

TIFF_ONLY = ("CMYK", "I32")  # modes Pillow cannot write as PNG


def _odd_images():
    """(name, PIL image, expected RGB of every pixel)."""
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    pal = red.convert("P")
    pal_transparent = Image.new("P", (8, 6), 0)
    pal_transparent.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    pal_transparent.info["transparency"] = 0
    return [
        ("L", Image.new("L", (8, 6), 77), (77, 77, 77)),
        ("LA_opaque", Image.new("LA", (8, 6), (60, 255)), (60, 60, 60)),
        ("LA_clear", Image.new("LA", (8, 6), (60, 0)), (255, 255, 255)),
        ("RGBA_half", Image.new("RGBA", (8, 6), (255, 0, 0, 128)), (255, 127, 127)),
        ("RGBA_clear", Image.new("RGBA", (8, 6), (0, 0, 0, 0)), (255, 255, 255)),
        ("P", pal, (255, 0, 0)),
        ("P_transparent", pal_transparent, (255, 255, 255)),
        ("CMYK", Image.new("CMYK", (8, 6), (0, 255, 255, 0)), (255, 0, 0)),
        ("I16", Image.fromarray(np.full((6, 8), 32896, np.uint16)), (128, 128, 128)),
        ("I16_white", Image.fromarray(np.full((6, 8), 65535, np.uint16)), (255, 255, 255)),
        ("I32", Image.fromarray(np.full((6, 8), 13107, np.int32)), (51, 51, 51)),  # 16-bit data in mode "I"
    ]


@pytest.mark.parametrize("name,img,rgb", _odd_images(), ids=[c[0] for c in _odd_images()])
def test_odd_modes_become_rgb(tmp_path, name, img, rgb):
    path = tmp_path / (name + (".tif" if name in TIFF_ONLY else ".png"))
    img.save(path)
    if name.startswith("I16"):
        assert Image.open(path).mode in ("I;16", "I")  # the 16-bit file really is read back as 16-bit
    pixels, original = load_image(str(path), 4)
    assert original == (8, 6)
    assert pixels.shape == (3, 4, 4) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - np.array(rgb)[:, None, None]).max() <= 1, pixels[:, 0, 0]


def test_odd_modes_through_prepare(tmp_path):
    cases = _odd_images()
    recs = [record(f"{name}.png", "train", ["x y"]) for name, _, _ in cases]
    recs += [record("va.png", "val", ["x"]), record("te.png", "test", ["y"])]
    json_path, folder = make_dataset(tmp_path, recs)
    for name, img, _ in cases:
        (folder / f"{name}.png").unlink()
        img.save(folder / f"{name}.png", format="TIFF" if name in TIFF_ONLY else "PNG")
    summary = run(tmp_path, json_path, folder, image_size=5)
    images = outputs(tmp_path / "out", summary["data_name"])["TRAIN_IMAGES"]["images"]
    for (name, _, rgb), pixels in zip(cases, images):
        assert np.abs(pixels.astype(int) - np.array(rgb)[:, None, None]).max() <= 1, name


# ----------------------------------------------------------------------------------------------------------------
# bad input: a clear KitError and nothing that looks like output
# ----------------------------------------------------------------------------------------------------------------


def assert_no_output(out: Path) -> None:
    assert not out.exists() or not [p.name for p in out.iterdir()]


def test_missing_images_all_listed_before_writing(tmp_path):
    recs = simple_records(n_train=9)
    json_path, folder = make_dataset(tmp_path, recs)
    for i in range(7):
        (folder / f"tr{i}.png").unlink()
    with pytest.raises(KitError) as e:
        run(tmp_path, json_path, folder)
    msg = str(e.value)
    assert "7 of 11 image files" in msg and str(folder) in msg and "--skip-missing" in msg
    assert all(f"tr{i}.png" in msg for i in range(5)) and "tr5.png" not in msg
    assert_no_output(tmp_path / "out")

    summary = run(tmp_path, json_path, folder, skip_missing=True)
    assert summary["skipped_missing"] == 7 and summary["skipped_examples"] == [f"tr{i}.png" for i in range(5)]
    assert summary["n_train"] == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_named(tmp_path, damage):
    json_path, folder = make_dataset(tmp_path, simple_records())
    victim = folder / "tr1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(victim)
    content = victim.read_bytes()
    victim.write_bytes(
        {"garbage": b"this is not a png" * 10, "truncated": content[: len(content) // 2], "empty": b""}[damage]
    )
    with pytest.raises(KitError, match="tr1.png"):
        run(tmp_path, json_path, folder)
    assert_no_output(tmp_path / "out")


def test_malformed_json_names_position(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [\n  {"filename": "a.png",, "split": "train"}\n]}')
    with pytest.raises(KitError) as e:
        run(tmp_path, path, tmp_path)
    assert str(path) in str(e.value) and "line 2, column" in str(e.value)


@pytest.mark.parametrize(
    "breakage,needle",
    [
        (lambda r: r.pop("sentences"), "record 1 (filename 'tr1.png')"),
        (lambda r: r.pop("split"), '"split"'),
        (lambda r: r.update(split="training"), "'training'"),
        (lambda r: r.pop("filename"), 'record 1 of "images"'),
        (lambda r: r["sentences"].__setitem__(0, {"raw": "no tokens"}), "sentence 0"),
        (lambda r: r.update(filepath=3), '"filepath"'),
    ],
)
def test_missing_or_bad_field(tmp_path, breakage, needle):
    recs = simple_records()
    breakage(recs[1])
    json_path, folder = make_dataset(tmp_path, recs, images=False)
    with pytest.raises(KitError, match="dataset.json") as e:
        run(tmp_path, json_path, folder)
    assert needle in str(e.value)


def test_not_karpathy_format(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(KitError, match='"images"'):
        run(tmp_path, path, tmp_path)


def test_missing_json_and_image_folder(tmp_path):
    with pytest.raises(KitError, match="nope.json"):
        run(tmp_path, tmp_path / "nope.json", tmp_path)
    json_path, _ = make_dataset(tmp_path, simple_records())
    with pytest.raises(KitError, match="image folder"):
        run(tmp_path, json_path, tmp_path / "no_such_folder")


def test_empty_split(tmp_path):
    recs = [r for r in simple_records() if r["split"] != "val"]
    json_path, folder = make_dataset(tmp_path, recs)
    with pytest.raises(KitError, match=r"no images in split 'val' of .*dataset.json"):
        run(tmp_path, json_path, folder)


@pytest.mark.parametrize("where", ["parent_is_file", "folder_is_file"])
def test_output_folder_not_usable(tmp_path, where):
    json_path, folder = make_dataset(tmp_path, simple_records())
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    out = blocker / "out" if where == "parent_is_file" else blocker
    with pytest.raises(KitError, match="output folder"):
        run(tmp_path, json_path, folder, output_folder=out)
    assert blocker.read_text() == "a regular file"


def test_bad_arguments(tmp_path):
    json_path, folder = make_dataset(tmp_path, simple_records())
    for kw in (dict(captions_per_image=0), dict(max_len=0), dict(min_word_freq=-1), dict(workers=0)):
        with pytest.raises(KitError):
            run(tmp_path, json_path, folder, **kw)


# ----------------------------------------------------------------------------------------------------------------
# atomic writing
# ----------------------------------------------------------------------------------------------------------------


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    json_path, folder = make_dataset(tmp_path, simple_records(n_train=40))
    real, calls = images.load_image, []

    def flaky(path, size):
        calls.append(path)
        if len(calls) == 30:  # TRAIN is half written (chunks of 16): its HDF5 temp file exists
            raise RuntimeError("simulated crash")
        return real(path, size)

    monkeypatch.setattr(images, "load_image", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, json_path, folder)
    assert_no_output(tmp_path / "out")


def test_crash_keeps_previous_complete_outputs(tmp_path, monkeypatch):
    json_path, folder = make_dataset(tmp_path, simple_records())
    base = run(tmp_path, json_path, folder)["data_name"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def crash_on_test_captions(path, obj):
        if "TEST_CAPTIONS" in path.name:
            raise KeyboardInterrupt
        prepare_write_json(path, obj)

    prepare_write_json = prepare._write_json
    monkeypatch.setattr(prepare, "_write_json", crash_on_test_captions)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, json_path, folder, seed=5)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before and set(after) == expected_names(base)


def test_disk_error_becomes_kit_error(tmp_path, monkeypatch):
    json_path, folder = make_dataset(tmp_path, simple_records())

    def full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare, "_write_json", full)
    with pytest.raises(KitError, match="No space left"):
        run(tmp_path, json_path, folder)
    assert_no_output(tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# command lines
# ----------------------------------------------------------------------------------------------------------------


def test_cli_and_course_script(tmp_path, capsys):
    from captioning.cli import main as cli_main
    from data_prep.create_input_files import main as script_main

    json_path, folder = make_dataset(tmp_path, simple_records())
    common = [
        "--dataset",
        "shapes",
        "--karpathy-json",
        str(json_path),
        "--image-folder",
        str(folder),
        "--min-word-freq",
        "0",
        "--image-size",
        "8",
        "--workers",
        "1",
    ]
    assert script_main(common + ["--output-folder", str(tmp_path / "s")]) == 0
    assert "data_name: shapes_5_cap_per_img_0_min_word_freq" in capsys.readouterr().out
    assert cli_main(["prepare"] + common + ["--output-folder", str(tmp_path / "c")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(p.name for p in (tmp_path / "c").iterdir())
    capsys.readouterr()
    bad = common[:3] + [str(tmp_path / "missing.json")] + common[4:]
    assert script_main(bad + ["--output-folder", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
