"""CaptionDataset over prepared files."""

from __future__ import annotations

import json
import pickle

import h5py
import pytest
import torch
from torch.utils.data import DataLoader

from captioning.datasets import IMAGENET_MEAN, IMAGENET_STD, CaptionDataset, load_word_map
from captioning.internals.errors import KitError


def test_train_items(shapes_data):
    folder, name, _ = shapes_data
    ds = CaptionDataset(folder, name, "TRAIN")
    assert (ds.cpi, ds.n_images, len(ds)) == (5, 40, 200)
    img, caption, caplen = ds[7]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert caption.shape == (52,) and caption.dtype == torch.long
    assert caplen.shape == (1,) and caplen.dtype == torch.long
    assert caption[0] == ds.word_map["<start>"] and caption[caplen.item() - 1] == ds.word_map["<end>"]
    captions = json.loads((folder / f"TRAIN_CAPTIONS_{name}.json").read_text())
    assert caption.tolist() == captions[7]
    assert torch.equal(img, ds.image(1))  # caption 7 belongs to image 7 // 5


def test_val_items_carry_all_captions(shapes_data):
    folder, name, _ = shapes_data
    ds = CaptionDataset(folder, name, "val")
    img, caption, caplen, allcaps = ds[13]
    assert allcaps.shape == (5, 52) and allcaps.dtype == torch.long
    assert torch.equal(allcaps[13 % 5], caption)
    assert torch.equal(allcaps, torch.stack([ds[i][1] for i in range(10, 15)]))


def test_normalisation_and_transform(shapes_data):
    folder, name, _ = shapes_data
    with h5py.File(folder / f"TEST_IMAGES_{name}.hdf5", "r") as h:
        raw = torch.from_numpy(h["images"][3]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ds = CaptionDataset(folder, name, "TEST")
    assert torch.allclose(ds.image(3), (raw - mean) / std, atol=1e-6)
    seen = []
    plain = CaptionDataset(folder, name, "TEST", transform=lambda x: seen.append(x) or x)
    assert torch.equal(plain.image(3), raw) and 0 <= seen[0].min() and seen[0].max() <= 1


def test_word_map_ids_and_objects(shapes_data):
    folder, name, json_path = shapes_data
    ds = CaptionDataset(folder, name, "TEST")
    assert ds.word_map == load_word_map(folder, name) and ds.word_map["<pad>"] == 0
    records = {f"{r['filepath']}/{r['filename']}": r for r in json.loads(json_path.read_text())["images"]}
    assert len(ds.image_ids) == 10 and all(records[i]["split"] == "test" for i in ds.image_ids)
    assert ds.objects(2) == records[ds.image_ids[2]]["objects"]


def test_files_without_objects(shapes_data, tmp_path):
    # Files written by other tools may lack the extra datasets.
    folder, name, _ = shapes_data
    for f in folder.iterdir():
        if f.suffix == ".json" and not f.name.startswith("MANIFEST_"):  # other tools write no manifest
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with (
        h5py.File(folder / f"VAL_IMAGES_{name}.hdf5", "r") as src,
        h5py.File(tmp_path / f"VAL_IMAGES_{name}.hdf5", "w") as dst,
    ):
        dst.create_dataset("images", data=src["images"][:])
        dst.attrs["captions_per_image"] = 5
    ds = CaptionDataset(tmp_path, name, "VAL")
    assert ds.objects(0) == [] and ds.image_ids == [str(i) for i in range(10)]


def test_missing_files_and_bad_split(shapes_data, tmp_path):
    folder, name, _ = shapes_data
    with pytest.raises(KitError, match="TRAIN_IMAGES_nothing.hdf5.*python -m captioning prepare"):
        CaptionDataset(tmp_path, "nothing", "TRAIN")
    with pytest.raises(KitError, match="WORDMAP_nothing.json"):
        load_word_map(tmp_path, "nothing")
    with pytest.raises(KitError, match="split"):
        CaptionDataset(folder, name, "DEV")


def test_index_errors(shapes_data):
    folder, name, _ = shapes_data
    ds = CaptionDataset(folder, name, "TEST")
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.image(10)


def test_pickles_without_the_open_file(shapes_data):
    folder, name, _ = shapes_data
    ds = CaptionDataset(folder, name, "TEST")
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn-started DataLoader worker receives
    assert all(torch.equal(a, b) for a, b in zip(first, clone[0]))
    ds.close()
    assert torch.equal(ds[0][0], first[0])  # reopens after close()


@pytest.mark.parametrize("split", ["TRAIN", "VAL"])
def test_dataloader_workers_match_single_process(shapes_data, split):
    folder, name, _ = shapes_data
    ds = CaptionDataset(folder, name, split)
    ds.image(0)  # the parent holds an open handle before forking: workers must not reuse it
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == -(-len(ds) // 16)
    for b0, b2 in zip(batches[0], batches[2]):
        assert len(b0) == len(b2) == (3 if split == "TRAIN" else 4)
        assert all(torch.equal(x, y) for x, y in zip(b0, b2))
