"""``caption`` warns when an image is far from the training data (``evaluation/familiarity.py``): shapes images
pass, a photo, noise and a colour gradient are flagged. Tiny data: the session's shapes data (40/10/10 images,
64 px) and a one-epoch shapes_cnn checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from captioning.checkpoints import load_checkpoint, save_checkpoint
from captioning.evaluation import familiarity
from captioning.evaluation.evaluate import caption_images


@pytest.fixture(scope="module")
def trained(shapes_data, tmp_path_factory):
    """(checkpoint path, its data folder: a copy of the session's shapes data). The recipe's encoder: shapes_cnn
    pretrained on the boxes (briefly), not random weights, whose features need not tell noise from shapes."""
    from captioning.data.pretrain import ensure_encoder
    from captioning.solver import fit

    root = tmp_path_factory.mktemp("familiar")
    data = root / "data"
    data.mkdir()
    for f in shapes_data.data_folder.iterdir():
        if f.is_file():
            shutil.copy(f, data / f.name)
    weights = ensure_encoder(str(data), shapes_data.data_name, epochs=4, progress=False)["path"]
    res = fit(
        dict(
            data_folder=str(data),
            data_name=shapes_data.data_name,
            encoder="shapes_cnn",
            encoder_weights=weights,
            encoded_image_size=4,
            embed_dim=16,
            decoder_dim=24,
            attention_dim=16,
            batch_size=40,
            epochs=1,
            workers=0,
            print_freq=0,
            output_dir=str(root / "run"),
            progress=False,
            device="cpu",
            decoder="attention",
        )
    )
    return res["best_checkpoint"], data


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Three images unlike the shapes data: the astronaut photo, uniform noise, a saturated colour gradient."""
    from skimage.data import astronaut

    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 1, 128), np.linspace(0, 1, 128))
    images = {
        "astronaut": astronaut(),
        "noise": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "gradient": (np.stack([x, 0.3 + 0.5 * y, 1 - x], -1) * 255).astype(np.uint8),  # a sunset-like sky
    }
    paths = []
    for name, pixels in images.items():
        paths.append(folder / f"{name}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_shapes_images_pass_and_a_photo_noise_and_a_gradient_are_flagged(trained, odd_images, shapes_data):
    ckpt, data = trained
    tests = sorted((shapes_data.karpathy_json.parent / "images").glob("test_*.jpg"))
    assert len(tests) == 10
    results = caption_images(ckpt, tests + odd_images, beam_size=1)
    fam = [r["familiarity"] for r in results]
    scores = [f["score"] for f in fam]
    assert [f["unfamiliar"] for f in fam[:10]] == [False] * 10, scores
    assert [f["unfamiliar"] for f in fam[10:]] == [True] * 3, scores
    assert all(r["warning"] is None for r in results[:10])
    for r in results[10:]:
        assert r["warning"] == r["familiarity"]["warning"]
        assert r["warning"].startswith("this image looks unlike the training data (score ")
        assert "the model only knows 1-3 coloured shapes" in r["warning"] and "its caption is a guess" in r["warning"]
    assert min(scores[10:]) > max(scores[:10])
    # computed once and stored beside the feature cache, keyed by the images and the encoder
    (stored,) = (data / "features").glob("FAMILIARITY_*.pt")
    assert torch.load(stored, weights_only=True)["state"]["threshold"] == fam[0]["threshold"]


def test_stored_statistics_are_loaded_not_recomputed(trained, odd_images, monkeypatch):
    ckpt, _ = trained
    caption_images(ckpt, odd_images[:1], beam_size=1)  # stored by now (whatever the test order)

    def encode(*args, **kwargs):
        raise AssertionError("the stored statistics were not used")

    monkeypatch.setattr(familiarity, "_split_features", encode)
    (r,) = caption_images(ckpt, odd_images[:1], beam_size=1)
    assert r["familiarity"]["unfamiliar"]


def test_without_its_data_folder_a_checkpoint_captions_with_a_note_and_no_warning(
    trained, odd_images, tmp_path, capsys
):
    state = load_checkpoint(trained[0])
    state["cfg"]["data_folder"] = str(tmp_path / "gone")
    (tmp_path / "elsewhere").mkdir()
    moved = save_checkpoint(state, tmp_path / "elsewhere" / "moved.pth.tar")
    (r,) = caption_images(moved, odd_images[:1], beam_size=1)
    assert r["words"] and r["familiarity"] is None and r["warning"] is None
    err = capsys.readouterr().err
    assert "note: no check of how familiar the images are" in err and "gone" in err


def test_caption_command_prints_the_warning_and_draws_it(trained, odd_images, tmp_path, capsys):
    from captioning.cli import main

    assert main(["caption", str(odd_images[0]), "--checkpoint", str(trained[0]), "--beam-size", "1",
                 "--out", str(tmp_path / "figs")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "  warning: this image looks unlike the training data" in out
    assert (tmp_path / "figs" / "astronaut.caption.png").stat().st_size > 0


def test_fit_flags_points_off_the_training_cloud_and_few_from_it():
    """A Gaussian cloud whose variance lies in 4 of 32 directions: new points from it pass (up to the 1 % false
    alarms the threshold is set for), points a little off its plane are flagged."""
    g = torch.Generator().manual_seed(0)
    scale = torch.cat([torch.full((4,), 3.0), torch.full((28,), 0.1)])

    def cloud(n):
        return torch.randn(n, 32, generator=g, dtype=torch.float64) * scale

    fam = familiarity.fit({"dots": cloud(300)}, {"dots": cloud(100)}, "dots")
    new = [s > fam.threshold for s in fam.score({"dots": cloud(400)})]
    assert sum(new) <= 12  # 1 % expected: 4 of 400
    off = cloud(20)
    off[:, 10] += 3.0  # 30 standard deviations in a direction the training points hardly vary in
    assert (fam.score({"dots": off}) > fam.threshold).all()
    assert fam.score({"dots": torch.zeros(1, 32)}) < fam.threshold  # the centre of the cloud


def test_describe_data_names_the_dataset():
    assert familiarity.describe_data("coco_5_cap_per_img_5_min_word_freq") == "the everyday scenes of COCO photos"
    assert "'mine'" in familiarity.describe_data("mine_3_cap_per_img_1_min_word_freq")
