"""Fixtures shared by the whole test suite."""
from __future__ import annotations

from typing import NamedTuple
from pathlib import Path

import pytest

from captioning.prepare import create_input_files
from captioning.shapes import generate_shapes


class PreparedData(NamedTuple):
    data_folder: Path       # holds the ten prepared files
    data_name: str          # e.g. "shapes_5_cap_per_img_1_min_word_freq"
    karpathy_json: Path     # the generated dataset_shapes.json (images under its folder)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> PreparedData:
    """A tiny shapes dataset (40 train / 10 val / 10 test images, 64 px, 5 captions each, min_word_freq 1),
    generated and prepared once per test session.  Unpacks as (data_folder, data_name, karpathy_json); treat
    the files as read-only."""
    root = tmp_path_factory.mktemp("shapes")
    json_path = generate_shapes(root / "raw", n_train=40, n_val=10, n_test=10, image_size=64, seed=0)
    summary = create_input_files("shapes", json_path, root / "raw", captions_per_image=5, min_word_freq=1,
                                 output_folder=root / "prepared", max_len=50, image_size=64, seed=0, workers=1)
    return PreparedData(root / "prepared", summary["data_name"], json_path)
