"""Karpathy-format JSON + image folder -> the ten input files that training and evaluation read.

For a base name ``{dataset}_{cpi}_cap_per_img_{mwf}_min_word_freq`` (e.g. ``coco_5_cap_per_img_5_min_word_freq``)
``create_input_files`` writes into ``output_folder``::

    {TRAIN,VAL,TEST}_IMAGES_{base}.hdf5    images      uint8 (N, 3, S, S), attribute captions_per_image
                                           image_ids   (N,) utf-8 str, the image path relative to image_folder
                                           objects     (N,) utf-8 str, JSON list of the record's objects with
                                                       bboxes rescaled to S x S (only if the JSON has "objects")
    {TRAIN,VAL,TEST}_CAPTIONS_{base}.json  N * cpi encoded captions, image i owns entries i*cpi ... i*cpi+cpi-1;
                                           each is [<start>, w1, ..., wn, <end>, <pad>, ...] of length max_len + 2
    {TRAIN,VAL,TEST}_CAPLENS_{base}.json   N * cpi ints, n + 2 (the words plus <start> and <end>)
    WORDMAP_{base}.json                    {word: index}, <pad> = 0

The run is all-or-nothing: every problem we can detect up front (bad JSON, missing fields, missing images, empty
splits, unwritable folder) is reported before any image is decoded; all files are written under ``.tmp-`` names
and renamed into place only after the last one succeeded.
"""

from __future__ import annotations

import collections
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from captioning.data.images import CHUNK, die_with_parent
from captioning.data.images_h5 import write_images
from captioning.data.karpathy import SPLIT_OF, check_duplicates, load_records, relative_path
from captioning.data.manifest import set_id_of, write_manifest
from captioning.internals.errors import KitError
from captioning.internals.locks import DATA_LOCK, folder_lock

SPLITS = ("TRAIN", "VAL", "TEST")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<start>", "<end>")
TMP_PREFIX = ".tmp-"
MAX_EXAMPLES = 5  # how many offending file names an error message lists


def base_name(dataset: str, captions_per_image: int, min_word_freq: int) -> str:
    """The name shared by the ten files, e.g. ``coco_5_cap_per_img_5_min_word_freq``."""
    return f"{dataset}_{captions_per_image}_cap_per_img_{min_word_freq}_min_word_freq"


# -------------------------------------------------------------------------------------- word map and caption encoding


def build_word_map(captions, min_word_freq: int) -> dict[str, int]:
    """Word map from tokenised captions (an iterable of token lists).

    Words seen more than ``min_word_freq`` times are kept, most frequent first (ties alphabetical, so the map
    is deterministic); ``<pad>`` is 0, then the kept words, then ``<unk>``, ``<start>``, ``<end>``.
    """
    freq = collections.Counter(w for c in captions for w in c if w not in SPECIAL_TOKENS)
    words = sorted((w for w, n in freq.items() if n > min_word_freq), key=lambda w: (-freq[w], w))
    word_map = {"<pad>": 0}
    for w in words + ["<unk>", "<start>", "<end>"]:
        word_map[w] = len(word_map)
    return word_map


def encode_caption(tokens: list[str], word_map: dict[str, int], max_len: int) -> list[int]:
    """[<start>, w1..wn, <end>, <pad>...] of length max_len + 2; unknown words become <unk>, and so do the
    special tokens written literally in a caption ("<end>", "<pad>", "<start>"): as their own indices they would
    end the caption early, pad it, or restart it inside the training targets and the BLEU references."""
    unk = word_map["<unk>"]
    return (
        [word_map["<start>"]]
        + [unk if w in SPECIAL_TOKENS else word_map.get(w, unk) for w in tokens]
        + [word_map["<end>"]]
        + [word_map["<pad>"]] * (max_len - len(tokens))
    )


def _check_vocabulary(word_map, captions, min_word_freq):
    """A KitError when ``min_word_freq`` keeps no word at all (every caption would be all <unk>), a warning when it
    keeps fewer than 10; and a warning naming how many captions hold a special token literally."""
    words = len(word_map) - len(SPECIAL_TOKENS)
    freq = collections.Counter(w for c in captions for w in c if w not in SPECIAL_TOKENS)
    top = freq.most_common(1)
    if words == 0:
        most = f"the most frequent, {top[0][0]!r}, occurs {top[0][1]} times" if top else "they hold no words"
        raise KitError(
            f"min_word_freq = {min_word_freq} keeps no word of the training captions ({most}; a word is "
            f"kept when it occurs more than min_word_freq times): every caption would be <unk>. Lower "
            f"--min-word-freq (the course uses 5)"
        )
    if words < 10:
        print(
            f"warning: min_word_freq = {min_word_freq} keeps only {words} word(s) of {len(freq)} "
            f"({', '.join(w for w in word_map if w not in SPECIAL_TOKENS)}); the others become <unk>. Lower "
            f"--min-word-freq for a useful vocabulary",
            file=sys.stderr,
            flush=True,
        )
    literal = sum(any(w in SPECIAL_TOKENS for w in c) for c in captions)
    if literal:
        print(
            f"warning: {literal} training caption(s) contain a special token ({', '.join(SPECIAL_TOKENS)}) as a "
            f"word; it is stored as <unk>",
            file=sys.stderr,
            flush=True,
        )


def choose_captions(captions: list[list[str]], cpi: int, rng: random.Random) -> list[list[str]]:
    """Exactly ``cpi`` captions: all of them topped up with draws with replacement if there are fewer, a sample
    without replacement if there are more (the course tutorial's rule)."""
    if len(captions) < cpi:
        return captions + [rng.choice(captions) for _ in range(cpi - len(captions))]
    return rng.sample(captions, cpi)


# ------------------------------------------------------------------------------------------------------------ writing


def _write_json(tmp_path: Path, obj) -> None:
    text = json.dumps(obj)  # json.dump() would run the slow pure-Python encoder chunk by chunk
    with open(tmp_path, "w", encoding="utf-8") as f:
        f.write(text)


def _prepare_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise KitError(
            f"cannot create output folder {folder}: {e.filename or folder} is a file, not a folder. "
            "Choose another --output-folder."
        ) from e
    except OSError as e:
        raise KitError(
            f"cannot create output folder {folder}: {e.strerror or e}. Choose another --output-folder."
        ) from e
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=TMP_PREFIX):
            pass
    except OSError as e:
        raise KitError(
            f"output folder {folder} is not writable: {e.strerror or e}. "
            "Fix its permissions or choose another --output-folder."
        ) from e


def _check_arguments(dataset, captions_per_image, min_word_freq, max_len, image_size, workers):
    """KitError for a bad argument; returns the number of worker processes."""
    if not isinstance(dataset, str) or not dataset or any(c in dataset for c in "/\\"):
        raise KitError(f"dataset must be a plain name such as 'coco' (it becomes part of file names), got {dataset!r}")
    for name, value, low in (
        ("captions_per_image", captions_per_image, 1),
        ("min_word_freq", min_word_freq, 0),
        ("max_len", max_len, 1),
        ("image_size", image_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise KitError(f"{name} must be an integer >= {low}, got {value!r}")
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise KitError(f"workers must be an integer >= 1 (or None for all cores), got {workers!r}")
    return workers


def _group_by_split(records, image_folder, max_len):
    """The records as items per split ({split: [dict(path, image_id, captions, objects)]}), keeping only captions
    of 1 to ``max_len`` tokens; returns (items, captions dropped as too long, images without captions, images
    whose file is missing)."""
    items = {s: [] for s in SPLITS}
    too_long, no_captions, missing = 0, [], []
    split_of = check_duplicates(records)
    for rec in records:
        rel = relative_path(rec)
        if split_of.pop(rel, None) is None:  # a later record of an image already taken: stored once
            continue
        tokens = [s["tokens"] for s in rec["sentences"]]
        kept = [t for t in tokens if 0 < len(t) <= max_len]  # empty token lists are no captions either
        too_long += sum(len(t) > max_len for t in tokens)
        if not kept:
            no_captions.append(rel)
            continue
        path = image_folder / rel
        if not path.is_file():
            missing.append(rel)
            continue
        items[SPLIT_OF[rec["split"]]].append(
            {"path": str(path), "image_id": rel, "captions": kept, "objects": rec.get("objects", [])}
        )
    return items, too_long, no_captions, missing


def _check_splits(items, records, missing, skip_missing, json_path, image_folder, max_len):
    """KitError for missing image files (unless ``skip_missing``) and for a split left without images."""
    if missing and not skip_missing:
        total = sum(map(len, items.values())) + len(missing)
        shown = "\n  ".join(missing[:MAX_EXAMPLES]) + ("\n  ..." if len(missing) > MAX_EXAMPLES else "")
        raise KitError(
            f"{len(missing)} of {total} image files named in {json_path} are missing under {image_folder}:"
            f"\n  {shown}\nCheck --image-folder (for COCO it must contain train2014/ and val2014/), or "
            "pass --skip-missing (skip_missing=True) to leave those images out."
        )
    listed = collections.Counter(SPLIT_OF[rec["split"]] for rec in records)
    for split in SPLITS:
        if items[split]:
            continue
        name = "train' or 'restval" if split == "TRAIN" else split.lower()
        if not listed[split]:
            raise KitError(
                f"no images in split '{name}' of {json_path}. Every split (train, val, test) needs at "
                'least one image; edit the "split" fields or regenerate the JSON.'
            )
        raise KitError(
            f"all {listed[split]} images in split '{name}' of {json_path} were dropped: none has a "
            f"caption of 1 to max_len={max_len} tokens, or their files are missing (skip_missing). "
            "Raise --max-len or fix the image folder."
        )


def _write_all(output_folder, base, items, word_map, cpi, max_len, image_size, seed, workers, with_objects):
    """Write the ten files under temporary names, then rename them all into place (nothing on any error)."""
    rng = random.Random(seed)
    done: list[tuple[Path, Path]] = []  # (temporary, final) pairs written so far
    set_id = set_id_of(
        [
            base,
            cpi,
            max_len,
            image_size,
            seed,
            word_map,
            {s: [(it["image_id"], it["captions"]) for it in items[s]] for s in SPLITS},
        ]
    )

    def tmp_for(name: str) -> Path:
        final = output_folder / name
        tmp = output_folder / (TMP_PREFIX + name)
        done.append((tmp, final))
        return tmp

    n_chunks = sum(-(-len(items[s]) // CHUNK) for s in SPLITS)
    workers = min(workers, n_chunks)
    # One pool for all three splits; workers=1 decodes in this process (no pickling of pixels at all).
    pool = ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent) if workers > 1 else None
    try:
        _write_json(tmp_for(f"WORDMAP_{base}.json"), word_map)
        for split in SPLITS:
            enc_captions, caplens = [], []
            for it in items[split]:
                for c in choose_captions(it["captions"], cpi, rng):
                    enc_captions.append(encode_caption(c, word_map, max_len))
                    caplens.append(len(c) + 2)
            write_images(
                tmp_for(f"{split}_IMAGES_{base}.hdf5"),
                items[split],
                image_size,
                cpi,
                pool,
                workers,
                with_objects,
                desc=f"{split} images",
                set_id=set_id,
            )
            _write_json(tmp_for(f"{split}_CAPTIONS_{base}.json"), enc_captions)
            _write_json(tmp_for(f"{split}_CAPLENS_{base}.json"), caplens)
        # the set is committed as one: readers refuse it while the manifest says "renaming" (a kill in between)
        names = [final.name for _, final in done]
        write_manifest(output_folder, base, set_id, [], "renaming")
        for tmp, final in done:
            os.replace(tmp, final)
        write_manifest(output_folder, base, set_id, names, "complete")
    except BaseException as e:
        for tmp, _final in done:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise KitError(f"writing into {output_folder} failed: {e}. Check free disk space and try again.") from e
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------- public entry point


def create_input_files(
    dataset,
    karpathy_json_path,
    image_folder,
    captions_per_image=5,
    min_word_freq=5,
    output_folder=".",
    max_len=50,
    image_size=256,
    seed=0,
    skip_missing=False,
    workers=None,
) -> dict:
    """Turn a Karpathy-format JSON and its images into the ten input files (see the module docstring).

    - ``restval`` images join TRAIN; captions with more than ``max_len`` tokens are dropped, and an image left
      without captions is dropped (both counted in the summary).
    - Each image gets exactly ``captions_per_image`` captions (``choose_captions``), drawn with a
      ``random.Random(seed)``: the same inputs and seed give byte-identical files.
    - The word map is built from the TRAIN (incl. restval) captions only, so that val/test words unseen in
      training become ``<unk>`` exactly as they would for a model deployed on new data; a word is kept if it
      occurs more than ``min_word_freq`` times.
    - Images are converted to RGB (``to_rgb``) and resized to ``image_size`` x ``image_size`` (bilinear,
      antialiased) by ``workers`` processes (None: all cores; 1: in this process) and streamed into HDF5.
    - Missing image files are all listed before anything is written; with ``skip_missing=True`` their
      records are left out and reported instead.

    Returns a summary dict: data_name, output_folder, n_train / n_val / n_test (images), vocab_size,
    captions_dropped_too_long, images_dropped_no_captions, skipped_missing (count) and, when non-zero,
    the first few names of what was skipped / dropped, and seconds.
    Raises KitError for every problem in the input, the arguments or the output folder.
    """
    t0 = time.time()
    workers = _check_arguments(dataset, captions_per_image, min_word_freq, max_len, image_size, workers)
    json_path, image_folder, output_folder = Path(karpathy_json_path), Path(image_folder), Path(output_folder)
    records = load_records(json_path, image_folder)
    items, too_long, no_captions, missing = _group_by_split(records, image_folder, max_len)
    _check_splits(items, records, missing, skip_missing, json_path, image_folder, max_len)
    word_map = build_word_map((c for it in items["TRAIN"] for c in it["captions"]), min_word_freq)
    _check_vocabulary(word_map, [c for it in items["TRAIN"] for c in it["captions"]], min_word_freq)
    _prepare_output_folder(output_folder)
    base = base_name(dataset, captions_per_image, min_word_freq)
    with (
        folder_lock(output_folder, f"prepare-{base}", wait=False, what=f"the output folder {output_folder}"),
        folder_lock(
            output_folder, DATA_LOCK.format(data_name=base), wait=False, what=f"the data '{base}' in {output_folder}"
        ),
    ):  # a training run reading it, say
        _write_all(
            output_folder,
            base,
            items,
            word_map,
            captions_per_image,
            max_len,
            image_size,
            seed,
            workers,
            with_objects=any("objects" in rec for rec in records),
        )
    summary = {
        "data_name": base,
        "output_folder": str(output_folder.resolve()),
        "n_train": len(items["TRAIN"]),
        "n_val": len(items["VAL"]),
        "n_test": len(items["TEST"]),
        "vocab_size": len(word_map),
        "captions_dropped_too_long": too_long,
        "images_dropped_no_captions": len(no_captions),
        "skipped_missing": len(missing),
    }
    if no_captions:
        summary["dropped_examples"] = no_captions[:MAX_EXAMPLES]
    if missing:
        summary["skipped_examples"] = missing[:MAX_EXAMPLES]
    summary["seconds"] = round(time.time() - t0, 1)
    return summary
