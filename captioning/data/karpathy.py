"""Reading the Karpathy-format caption JSON (COCO, Flickr, the shapes data) and checking it before anything is
written: every record, field and box is checked, and each problem is a KitError naming the record and field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from captioning.internals.errors import KitError

# Karpathy's "restval" is the part of COCO val2014 that is not in his 5k val / 5k test: it is training data.
SPLIT_OF = {"train": "TRAIN", "restval": "TRAIN", "val": "VAL", "test": "TEST"}
MAX_EXAMPLES = 5  # how many offending file names a warning lists


def load_records(json_path: Path, image_folder: Path) -> list[dict]:
    """The checked ``images`` records of the Karpathy JSON at ``json_path``, whose files are under
    ``image_folder``."""
    records = _load_karpathy_json(json_path)
    for i, rec in enumerate(records):
        _check_record(rec, i, json_path)
    if not image_folder.is_dir():
        raise KitError(
            f"image folder {image_folder} does not exist or is not a folder. Pass the folder that the "
            f'"filepath"/"filename" entries of {json_path.name} are relative to.'
        )
    return records


def _load_karpathy_json(path: Path) -> list[dict]:
    if not path.is_file():
        raise KitError(
            f"Karpathy JSON file {path} does not exist. Download caption_datasets.zip (dataset_coco.json, "
            "dataset_flickr8k.json, ...) or generate one with `python -m captioning shapes --out DIR`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise KitError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (character {e.pos}). "
            "The file is probably truncated or edited by hand; download or generate it again."
        ) from e
    except UnicodeDecodeError as e:
        raise KitError(f"{path} is not UTF-8 text (byte {e.start}); is it really the Karpathy JSON?") from e
    except OSError as e:
        raise KitError(f"cannot read {path}: {e.strerror or e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise KitError(
            f'{path} has no top-level "images" list; expected the Karpathy format '
            '{"images": [{"filename": ..., "split": ..., "sentences": [{"tokens": [...]}]}, ...]}'
        )
    return data["images"]


def _check_record(rec, index: int, path: Path) -> None:
    """Raise KitError naming the record and field if ``rec`` is not a usable Karpathy image record."""
    if not isinstance(rec, dict):
        raise KitError(f'record {index} of "images" in {path} is a {type(rec).__name__}, not an object')
    name = rec.get("filename")
    where = f'record {index} (filename {name!r}) of "images" in {path}'
    if not isinstance(name, str) or not name:
        raise KitError(f'record {index} of "images" in {path} has no "filename" string (got {name!r})')
    if "filepath" in rec and not isinstance(rec["filepath"], str):
        raise KitError(f'{where}: "filepath" must be a string, got {rec["filepath"]!r}')
    if "split" not in rec:
        raise KitError(f'{where} has no "split" field (one of {sorted(SPLIT_OF)})')
    if not isinstance(rec["split"], str) or rec["split"] not in SPLIT_OF:
        raise KitError(f"{where} has split {rec['split']!r}; expected one of {sorted(SPLIT_OF)}")
    sentences = rec.get("sentences")
    if not isinstance(sentences, list):
        raise KitError(f'{where} has no "sentences" list (got {sentences!r:.60})')
    for k, s in enumerate(sentences):
        tokens = s.get("tokens") if isinstance(s, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise KitError(f'{where}: sentence {k} has no "tokens" list of strings (got {s!r:.80})')
    objects = rec.get("objects", [])
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise KitError(f'{where}: "objects" must be a list of objects, got {objects!r:.80}')
    for o in objects:
        box = o.get("bbox")
        if box is not None and (
            not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
        ):
            raise KitError(f"{where}: object bbox must be [x0, y0, x1, y1] numbers, got {box!r:.80}")


def relative_path(rec: dict) -> str:
    # COCO records say which folder (train2014 / val2014) the file is in; Flickr records have no filepath.
    return f"{rec['filepath']}/{rec['filename']}" if rec.get("filepath") else rec["filename"]


def check_duplicates(records):
    """{image path: its first split}. An image listed twice is stored once (the first record); one listed in two
    splits leaks the test (or validation) data into training: both are reported on stderr, not silently kept."""
    first, repeats, leaks = {}, [], []
    for rec in records:
        rel, split = relative_path(rec), SPLIT_OF[rec["split"]]
        if rel not in first:
            first[rel] = split
        elif first[rel] == split:
            repeats.append(rel)
        else:
            leaks.append(f"{rel} ({first[rel]} and {split})")
    for what, names in (
        ("is listed more than once; only its first record is used", repeats),
        (
            "is in two splits (a leak: the model is tested on an image it trained on, or validated "
            "on one); only its first record is used",
            leaks,
        ),
    ):
        if names:
            shown = ", ".join(names[:MAX_EXAMPLES]) + (" …" if len(names) > MAX_EXAMPLES else "")
            print(f"warning: {len(names)} image(s) {what}: {shown}", file=sys.stderr, flush=True)
    return first
