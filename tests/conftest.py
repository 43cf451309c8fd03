"""Fixtures and hooks shared by the whole test suite."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from captioning.data.prepare import create_input_files
from captioning.data.shapes import generate_shapes


class PreparedData(NamedTuple):
    data_folder: Path  # holds the ten prepared files
    data_name: str  # e.g. "shapes_5_cap_per_img_1_min_word_freq"
    karpathy_json: Path  # the generated dataset_shapes.json (images under its folder)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> PreparedData:
    """A tiny shapes dataset (40 train / 10 val / 10 test images, 64 px, 5 captions each, min_word_freq 1),
    generated and prepared once per test session.  Unpacks as (data_folder, data_name, karpathy_json); treat
    the files as read-only."""
    root = tmp_path_factory.mktemp("shapes")
    json_path = generate_shapes(root / "raw", n_train=40, n_val=10, n_test=10, image_size=64, seed=0)
    summary = create_input_files(
        "shapes",
        json_path,
        root / "raw",
        captions_per_image=5,
        min_word_freq=1,
        output_folder=root / "prepared",
        max_len=50,
        image_size=64,
        seed=0,
        workers=1,
    )
    return PreparedData(root / "prepared", summary["data_name"], json_path)


# ------------------------------------------------------------------------------------------------ a full disk
# The suite writes ResNet-101 checkpoints. When the disk fills up, dozens of unrelated tests fail with OSError at
# random places (CI's run at 53610b3: 19 failed, 10 errors). The header (shown without -q) says how much room
# there was, and the summary names the cause once.
NO_SPACE = "No space left on device"


def _free_space(config):
    places = {"temporary files": Path(tempfile.gettempdir()), "the checkout": config.rootpath}
    return "; ".join(f"{shutil.disk_usage(p).free / 2**30:.1f} GB free for {what} ({p})" for what, p in places.items())


def pytest_report_header(config):
    return "disk: " + _free_space(config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    full = [
        r.nodeid
        for key in ("failed", "error")
        for r in terminalreporter.stats.get(key, [])
        if NO_SPACE in str(getattr(r, "longrepr", ""))
    ]
    if full:
        terminalreporter.section("the disk is full", red=True)
        terminalreporter.write_line(
            f"{len(full)} test(s) failed with '{NO_SPACE}', the first: {full[0]}. Now {_free_space(config)}. "
            "make test needs the free space the README gives (next to `make test`): free some, or set TMPDIR to "
            "a folder on a larger disk."
        )
