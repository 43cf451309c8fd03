"""The shapes_cnn encoder and its pretraining on the shapes boxes (the offline stand-in for ImageNet weights)."""

import h5py
import pytest
import torch

from captioning.cli import main
from captioning.data.pretrain import NONE, cell_targets, pretrain_encoder
from captioning.datasets import split_paths
from captioning.internals.errors import KitError
from captioning.models import Encoder


def test_cell_targets_mark_cells_whose_centre_is_in_the_box():
    # 64 px, grid 4: cells of 16 px, centres at 8, 24, 40, 56
    objs = [{"shape": "star", "color": "blue", "size": "large", "bbox": [0, 20, 30, 45]}]
    t = cell_targets(objs, 64, 4)
    assert t.shape == (3, 4, 4)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 0:2] = True  # rows with centre 24, 40; columns with centre 8, 24
    assert (t[0][inside] == 3).all() and (t[1][inside] == 2).all() and (t[2][inside] == 1).all()
    assert (t[:, ~inside] == NONE).all()


def test_cell_targets_reject_unknown_shape():
    with pytest.raises(KitError, match="'shape' must be one of"):
        cell_targets([{"shape": "hexagon", "color": "red", "size": "small", "bbox": [0, 0, 9, 9]}], 64, 4)


def test_shapes_cnn_encoder_gives_a_grid():
    enc = Encoder(4, weights=None, arch="shapes_cnn")
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4, 4, 256) and enc.encoder_dim == 256


def test_shapes_cnn_has_no_imagenet_weights():
    with pytest.raises(KitError, match="pretrain-encoder"):
        Encoder(4, weights="imagenet", arch="shapes_cnn")


def test_pretrain_writes_a_loadable_encoder_that_learned(shapes_data, tmp_path):
    folder, name, _ = shapes_data
    out = tmp_path / "enc" / "shapes_cnn.pth"
    res = pretrain_encoder(folder, name, str(out), epochs=12, batch_size=8, lr=3e-3, progress=False)
    assert out.exists() and not (tmp_path / "enc" / "shapes_cnn.pth.tmp").exists()
    acc = res["val_accuracy"]
    assert set(acc) == {"object", "shape", "color", "size", "shape_color", "background"}
    # 40 images of 64 px are very little; still, colour and background must be learned, not guessed
    # (5 colours: chance 0.2; background dark/light from brightness)
    assert acc["color"] > 0.5 and acc["background"] >= 0.9, acc
    enc = Encoder(4, weights=str(out), arch="shapes_cnn")
    state = torch.load(out, weights_only=True)
    assert torch.equal(enc.resnet[0][0].weight, state["features.0.0.weight"])


def test_pretrain_needs_object_boxes(shapes_data, tmp_path):
    folder, name, _ = shapes_data
    # a copy of the prepared TRAIN images without the "objects" dataset
    src = split_paths(folder, name, "TRAIN")[0]
    dst_folder = tmp_path / "noboxes"
    dst_folder.mkdir()
    with h5py.File(src, "r") as f, h5py.File(split_paths(dst_folder, name, "TRAIN")[0], "w") as g:
        g.create_dataset("images", data=f["images"][:])
    with pytest.raises(KitError, match="has no object boxes"):
        pretrain_encoder(dst_folder, name, str(tmp_path / "x.pth"), epochs=1, progress=False)


def test_pretrain_cli_names_a_missing_file(tmp_path, capsys):
    rc = main(
        ["pretrain-encoder", "--data-folder", str(tmp_path), "--data-name", "nope", "--out", str(tmp_path / "x.pth")]
    )
    assert rc == 2 and "TRAIN_IMAGES_nope.hdf5' does not exist" in capsys.readouterr().err


def test_ensure_encoder_pretrains_once_and_again_when_data_or_settings_change(shapes_data, tmp_path):
    import os
    import shutil

    from captioning.data.pretrain import ensure_encoder

    folder, name, _ = shapes_data
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    first = ensure_encoder(str(data), name, epochs=1, images=20, progress=False)
    assert first["status"] == "pretrained" and first["train_images"] == 20
    assert (data / "shapes_cnn.pth").exists() and (data / "shapes_cnn.json").exists()
    again = ensure_encoder(str(data), name, epochs=1, images=20, progress=False)
    assert again["status"] == "found" and again["val_accuracy"] == first["val_accuracy"]
    assert ensure_encoder(str(data), name, epochs=2, images=20, progress=False)["status"] == "pretrained"
    # regenerated data (a new TRAIN file) means a new encoder
    train = split_paths(data, name, "TRAIN")[0]
    st = os.stat(train)
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ensure_encoder(str(data), name, epochs=2, images=20, progress=False)["status"] == "pretrained"
    # weights without their stamp (a pretraining killed between the two writes) are not trusted
    (data / "shapes_cnn.json").unlink()
    assert ensure_encoder(str(data), name, epochs=2, images=20, progress=False)["status"] == "pretrained"
    # an unreadable stamp is not trusted either (and is no traceback)
    (data / "shapes_cnn.json").write_text("{not json")
    assert ensure_encoder(str(data), name, epochs=2, images=20, progress=False)["status"] == "pretrained"
    assert ensure_encoder(str(data), name, epochs=2, images=20, progress=False)["status"] == "found"
