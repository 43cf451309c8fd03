"""The data a notebook trains on, made ready: ``ensure_data`` generates and prepares the built-in shapes data on
first use (or when its settings changed), ``encoder_settings`` picks the encoder (the shapes CNN pretrained on
first use, or ResNet-101), ``data_summary`` says what was found. ``captioning.notebooks`` re-exports all three."""

from __future__ import annotations

import json
import os
import re

from captioning.data.recipe import RECIPE
from captioning.internals.atomic import write_json
from captioning.internals.errors import KitError

SHAPES_SETTINGS = "shapes_settings.json"
SHAPES_NAME = re.compile(r"^shapes_(\d+)_cap_per_img_(\d+)_min_word_freq$")


def _prepared_files(data_folder, data_name):
    from captioning.datasets import split_paths, word_map_path

    files = [word_map_path(data_folder, data_name)]
    for split in ("TRAIN", "VAL", "TEST"):
        files += split_paths(data_folder, data_name, split)
    return files


def _complete(data_folder, data_name):
    from captioning.data.manifest import check_prepared

    try:
        check_prepared(data_folder, data_name)
        return True
    except KitError:  # a prepare run was interrupted: generate the built-in data again
        return False


def ensure_data(
    data_folder,
    data_name,
    shapes_n_train=RECIPE["n_train"],
    shapes_n_val=RECIPE["n_val"],
    shapes_n_test=RECIPE["n_test"],
    shapes_image_size=RECIPE["image_size"],
    shapes_seed=RECIPE["seed"],
):
    """Make sure the prepared files of ``data_name`` are in ``data_folder``; returns a summary dict.

    For the built-in shapes data (``data_name`` ``shapes_{cpi}_cap_per_img_{mwf}_min_word_freq``) missing files, or
    files generated with other ``shapes_*`` settings or by another ``shapes.DATA_VERSION`` (``shapes_settings.json``
    beside them), are (re)generated into ``data_folder/shapes_raw`` and prepared into ``data_folder``. For any other
    data the ``shapes_*`` arguments are ignored and missing files are a KitError saying how to prepare them.

    Returns: data_folder, data_name, status ("generated" | "found"), n_train, n_val, n_test, image_size,
    captions_per_image, vocab_size, shapes (True for the built-in data), seed (its shapes_seed) and karpathy_json
    (shapes only).
    """
    data_folder, files = str(data_folder), _prepared_files(data_folder, data_name)
    m = SHAPES_NAME.match(data_name)
    status, karpathy = "found", None
    if m:
        shapes = dict(n_train=shapes_n_train, n_val=shapes_n_val, n_test=shapes_n_test)
        shapes.update(image_size=shapes_image_size, seed=shapes_seed)
        status, karpathy = _ensure_shapes(data_folder, data_name, files, int(m.group(1)), int(m.group(2)), shapes)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise KitError(
            f"data_folder '{data_folder}' has no prepared data '{data_name}' ({missing[0]} is missing): "
            f"prepare it with `python -m captioning prepare --dataset … --output-folder {data_folder}`, "
            f"or check data_folder / data_name (the built-in data is named "
            f"shapes_5_cap_per_img_5_min_word_freq)"
        )
    return dict(
        _describe(data_folder, data_name),
        status=status,
        shapes=bool(m),
        seed=shapes_seed if m else None,
        karpathy_json=str(karpathy) if karpathy and os.path.isfile(karpathy) else None,
    )


def _ensure_shapes(data_folder, data_name, files, cpi, mwf, shapes):
    """(status, karpathy json path): (re)generate and prepare the shapes data unless its files are complete and
    were made with these settings (``SHAPES_SETTINGS`` beside them)."""
    from captioning.data.shapes import DATA_VERSION

    wanted = dict(shapes, captions_per_image=cpi, min_word_freq=mwf, generator_version=DATA_VERSION)
    stamp_path = os.path.join(data_folder, SHAPES_SETTINGS)
    stamp = None
    if os.path.isfile(stamp_path):
        with open(stamp_path) as fh:
            stamp = json.load(fh)
    raw = os.path.join(data_folder, "shapes_raw")
    karpathy = os.path.join(raw, "dataset_shapes.json")
    fresh = all(os.path.isfile(f) for f in files) and stamp in (None, wanted) and _complete(data_folder, data_name)
    if fresh:
        return "found", karpathy
    from captioning.data.prepare import create_input_files
    from captioning.data.shapes import generate_shapes

    print(
        f"generating the shapes data ({shapes['n_train']}/{shapes['n_val']}/{shapes['n_test']} images of "
        f"{shapes['image_size']} px) into {data_folder}",
        flush=True,
    )
    karpathy = generate_shapes(raw, **shapes)
    create_input_files(
        "shapes",
        karpathy,
        raw,
        captions_per_image=cpi,
        min_word_freq=mwf,
        output_folder=data_folder,
        max_len=50,
        image_size=shapes["image_size"],
        seed=shapes["seed"],
        workers=1,
    )
    write_json(wanted, stamp_path)
    return "generated", karpathy


def _describe(data_folder, data_name):
    """The sizes of prepared data: data_folder, data_name, n_train/n_val/n_test, image_size, captions_per_image,
    vocab_size."""
    import h5py

    from captioning.datasets import load_word_map, split_paths

    counts = {}
    for split in ("TRAIN", "VAL", "TEST"):
        with h5py.File(split_paths(data_folder, data_name, split)[0], "r") as f:
            counts[split] = f["images"].shape[0]
            if split == "TRAIN":
                image_size, cpi = int(f["images"].shape[-1]), int(f.attrs["captions_per_image"])
    return {
        "data_folder": data_folder,
        "data_name": data_name,
        "n_train": counts["TRAIN"],
        "n_val": counts["VAL"],
        "n_test": counts["TEST"],
        "image_size": image_size,
        "captions_per_image": cpi,
        "vocab_size": len(load_word_map(data_folder, data_name)),
    }


def encoder_settings(data, encoder_weights=None, encoded_image_size=None, progress=True):
    """The encoder cfg keys (``encoder``, ``encoder_weights``, ``encoded_image_size``) of a training notebook.

    * ``encoder_weights`` None on the built-in shapes data: the recipe's ``shapes_cnn``, pretrained on the TRAIN
      boxes on first use and cached beside the data (``pretrain.ensure_encoder``), one S×S grid cell per 16 px.
    * ``encoder_weights`` given ("imagenet" or a ResNet-101 .pth): the course's ResNet-101, ``encoded_image_size``
      (default 14) on a side — the path for real photos (COCO, Flickr) on a GPU.
    * None on other data: a ResNet-101 with random weights (BatchNorm recalibrated); it carries little shape
      information, so the captions will be poor — a message says so.
    """
    if encoder_weights is None and data.get("shapes"):
        from captioning.data.pretrain import STRIDE, ensure_encoder

        pre = ensure_encoder(
            data["data_folder"],
            data["data_name"],
            RECIPE["pretrain_epochs"],
            seed=data["seed"],
            images=RECIPE["pretrain_images"],
            progress=progress,
        )
        acc = pre["val_accuracy"]
        print(
            f"encoder: shapes_cnn pretrained on the TRAIN boxes for {pre['epochs']} epochs ({pre['status']}; "
            f"VAL cells: shape {acc['shape']:.2f}, colour {acc['color']:.2f})"
        )
        return {
            "encoder": "shapes_cnn",
            "encoder_weights": pre["path"],
            "encoded_image_size": encoded_image_size or data["image_size"] // STRIDE,
        }
    if encoder_weights is None:
        print(
            "encoder: ResNet-101 with random weights (no ImageNet weights given): expect poor captions; set "
            "encoder_weights to 'imagenet' or a ResNet-101 .pth"
        )
    return {"encoder": "resnet101", "encoder_weights": encoder_weights, "encoded_image_size": encoded_image_size or 14}


def data_summary(data):
    """One line about the data of ``ensure_data`` (no paths: the line is the same wherever the data lives)."""
    return (
        f"{data['data_name']}: {data['n_train']} / {data['n_val']} / {data['n_test']} images (train / val / "
        f"test) of {data['image_size']}×{data['image_size']} px, {data['captions_per_image']} captions each, "
        f"vocabulary of {data['vocab_size']} words (incl. <pad> <unk> <start> <end>)"
    )
