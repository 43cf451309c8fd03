"""Using a trained checkpoint: BLEU on a split with beam search (``evaluate``), captions for any image files
(``caption_images``), and the attention "pointing game" on data whose images carry object boxes (``grounding``).
"""

from __future__ import annotations

import json
import math
import os
import sys

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioning.checkpoints import data_folder_of, load_checkpoint, word_map_id
from captioning.data.features import build_feature_cache
from captioning.datasets import ImageCaptions, load_word_map, normalize, split_paths
from captioning.decoding import beam_search, decode_words, words_and_alphas
from captioning.evaluation import familiarity
from captioning.evaluation.metrics import beta_by_class, bleu, strip_special
from captioning.evaluation.outputs import check_file, write_json
from captioning.internals import threads
from captioning.internals.errors import KitError
from captioning.solver import encode_batch, models_from_checkpoint


@torch.no_grad()
def evaluate(
    checkpoint,
    split="TEST",
    beam_size=5,
    data_folder=None,
    data_name=None,
    device="cpu",
    batch_images=50,
    max_images=None,
    max_len=50,
    out=None,
    progress=True,
    coco=True,
    length_penalty=None,
    keep_alphas=False,
):
    """Caption every image of ``split`` with beam search and score BLEU-1..4 against all its references.

    ``length_penalty``: see :func:`decoding.beam_search` (0, the course's choice, favours short captions); None:
    the checkpoint's cfg ``length_penalty`` (0 unless it was trained with another).

    Returns a dict: ``bleu1`` … ``bleu4``, ``split``, ``beam_size``, ``length_penalty``, ``n_images``,
    ``decoder``, ``checkpoint``,
    ``grounding`` (pointing-game scores when the data has object boxes and the decoder attends, else None),
    ``coco`` (pycocoevalcap BLEU/METEOR/ROUGE-L/CIDEr-D when ``coco``, see ``cocoeval``) and ``captions`` (per
    image: ``image_id``, ``caption``, ``references``). Written to ``out`` as JSON if given: that place is checked
    before the work starts, and the file read back before it is renamed into place (``outputs``).

    On a data folder that cannot be written (and holds no feature cache for this encoder) the images are encoded
    batch by batch instead of through the cache: the same scores up to the cache's fp16 rounding.

    ``data_folder`` and ``data_name`` of the result name the data scored; with the pointing game each row also has
    ``pointing``: [word position in ``caption``, hit] per word scored. ``keep_alphas``: the result also holds
    ``alphas``, per image the (words, P') attention of each caption word or None (not written to ``out``).
    """
    device = _checked_arguments(device, max_images, data_name, beam_size, out)
    ckpt, encoder, decoder, word_map, cfg = _checked_models(checkpoint, device, data_folder, data_name)
    length_penalty = cfg["length_penalty"] if length_penalty is None else length_penalty
    data_folder = data_folder or data_folder_of(cfg, checkpoint)
    data_name = data_name or cfg["data_name"]
    rev = {v: k for k, v in word_map.items()}
    # folded once, and the unfolded weights freed: the copy stands for them in the cache key too
    encoder = encoder.for_inference()
    data, cached = _split_data(encoder, cfg, data_folder, data_name, split, device, max_images, progress)
    loader = DataLoader(data, batch_size=batch_images, shuffle=False, num_workers=0)
    refs, hyps, rows, all_alphas = _beam_all(
        loader, encoder, decoder, word_map, cached, device, beam_size, max_len, length_penalty, split, progress
    )
    result = {
        "checkpoint": os.fspath(checkpoint),
        "decoder": ckpt["decoder_type"],
        "split": split,
        "beam_size": beam_size,
        "length_penalty": length_penalty,
        "n_images": len(hyps),
        "data_folder": os.fspath(data_folder),
        "data_name": data_name,
    }
    result.update(bleu(refs, hyps))
    ids, objects = _image_records(split_paths(data_folder, data_name, split)[0], len(rows))
    for row, image_id in zip(rows, ids):
        row["image_id"] = image_id
    result["grounding"] = None
    if decoder.has_attention and any(objects):  # the pointing game, and each row's hits
        result["grounding"] = grounding(hyps, all_alphas, objects, rev, data.image_shape[-1])
        for row, hits in zip(rows, result["grounding"].pop("per_image")):
            row["pointing"] = hits
    if result["decoder"] == "adaptive":  # how much of each kind of word came from the image (Lu et al. 2017)
        words = [[rev[i] for i in h] for h in hyps]
        result["beta_by_class"] = beta_by_class(words, all_alphas)
    result["coco"] = _coco(rows) if coco else None
    result["captions"] = rows
    if out:
        write_json(result, out, "out")
    if keep_alphas:
        result["alphas"] = all_alphas
    return result


def _checked_arguments(device, max_images, data_name, beam_size, out):
    """The device to use; a KitError naming a bad argument, or an ``out`` file that cannot be written, before any
    work starts."""
    from captioning.config import RULES, _int, _optional, check_device, check_value

    device = check_device(device)
    check_value("max_images", max_images, _optional(_int(1)))
    check_value("data_name", data_name, _optional(RULES["data_name"]))
    check_value("beam_size", beam_size, _int(1))
    if out:
        check_file(out, "out")
    return device


def _beam_all(loader, encoder, decoder, word_map, cached, device, beam_size, max_len, length_penalty, split, progress):
    """Beam search over every batch of ``loader``: (references, hypotheses) as word indices without the special
    tokens, the per-image rows (caption, finished, references as text) and each caption's attention maps."""
    rev = {v: k for k, v in word_map.items()}
    refs, hyps, rows, all_alphas = [], [], [], []
    for x, caps, _ in tqdm(loader, desc=f"{split.lower()} beam {beam_size}", disable=not progress):
        threads.adapt()  # fewer CPU threads while other processes compete for the cores
        enc = encode_batch(encoder, x, cached, torch.device(device))
        for img_caps, cap in zip(
            caps.tolist(), beam_search(decoder, enc, word_map, beam_size, max_len, length_penalty=length_penalty)
        ):
            refs.append([strip_special(c, word_map) for c in img_caps])
            hyps.append(strip_special(cap.tokens, word_map))
            all_alphas.append(words_and_alphas(cap.tokens, cap.alphas, rev)[1])  # the rows of hyps' words
            rows.append(
                {
                    "caption": " ".join(decode_words(cap.tokens, rev)),
                    "finished": cap.finished,
                    "references": [" ".join(decode_words(c, rev)) for c in img_caps],
                }
            )
    return refs, hyps, rows, all_alphas


def _checked_models(checkpoint, device, data_folder, data_name):
    """(ckpt without its weights, encoder, decoder, word_map, cfg); a KitError when the data's word map is not
    the checkpoint's."""
    ckpt = load_checkpoint(checkpoint)
    encoder, decoder, word_map, cfg = models_from_checkpoint(ckpt, device, checkpoint)
    for key in ("encoder_state", "decoder_state", "encoder_optimizer", "decoder_optimizer"):
        ckpt.pop(key, None)  # loaded into the models: the copies would only add to the peak memory
    data_folder = data_folder or data_folder_of(cfg, checkpoint)
    data_name = data_name or cfg["data_name"]
    if word_map_id(load_word_map(data_folder, data_name)) != ckpt["word_map_id"]:
        raise KitError(
            f"checkpoint '{checkpoint}' was trained with another word map than the data in "
            f"'{data_folder}' ({data_name}): evaluate it on the data it was trained on"
        )
    return ckpt, encoder, decoder, word_map, cfg


def _split_data(encoder, cfg, data_folder, data_name, split, device, max_images, progress):
    """(ImageCaptions of ``split``, whether it reads the feature cache). The cache is built on first use when the
    encoder is frozen; a data folder that cannot be written means encoding batch by batch."""
    cached = not cfg["fine_tune_encoder"]
    features = None
    if cached:
        features = build_feature_cache(
            encoder, data_folder, data_name, split, device=device, progress=progress, required=False
        )
    if cached and features is None:
        print(
            f"note: no feature cache can be written in {data_folder} (not writable): encoding the {split} images "
            f"batch by batch instead",
            file=sys.stderr,
            flush=True,
        )
        cached = False
    return ImageCaptions(data_folder, data_name, split, features=features, limit=max_images), cached


def _coco(rows):
    """pycocoevalcap's scores of the generated captions against the references (``cocoeval``)."""
    from captioning.evaluation.cocoeval import coco_metrics

    plain = lambda text: text.replace("<unk>", "unk")  # noqa: E731  (keep the tokenizer off '<', '>')
    return coco_metrics(
        {i: [plain(r) for r in row["references"]] for i, row in enumerate(rows)},
        {i: plain(row["caption"]) for i, row in enumerate(rows)},
    )


def _image_records(images_path, n):
    """(image ids, objects lists) stored by ``prepare`` in the images HDF5 (empty when absent)."""
    with h5py.File(images_path, "r") as f:
        ids = (
            [v.decode() if isinstance(v, bytes) else str(v) for v in f["image_ids"][:n]]
            if "image_ids" in f
            else [str(i) for i in range(n)]
        )
        objs = [json.loads(v) for v in f["objects"][:n]] if "objects" in f else [[] for _ in range(n)]
    return ids, objs


def _names(word, obj):
    from captioning.data.shapes import PLURAL

    return word in (obj.get("shape"), PLURAL.get(obj.get("shape")), obj.get("color"))


def grounding(hypotheses, alphas, objects, rev_word_map, image_size):
    """Pointing game: for each generated word that names a shape or colour present in the image, does the peak
    of its attention map (upsampled to the image) fall inside the box of an object it names?

    Args:
        hypotheses: per image, generated word indices (no special tokens), aligned with ``alphas`` rows.
        alphas: per image, (len(words), P) or (len, P + 1) attention (sentinel column ignored).
        objects: per image, list of {"shape", "color", "bbox": [x0, y0, x1, y1]} in pixels of the image.
    Returns: {"shape": hit rate, "color": hit rate, "all": …, "chance": …, "n_words": …, "misses": …} where
        chance is the mean fraction of the image covered by the named boxes (a uniformly random point's hit
        rate), misses counts where the missed peaks fell: {"other_object": on an object the word does not
        name, "background": on no object, "next_to_named": how many of those background peaks touch (8-neighbour)
        a cell of an object the word names}, and by_position splits the words by where they stand, each as
        {"rate", "n"}: "only_object" (the image shows one kind of object), "first_named" (the caption's first
        object phrase, in an image with several kinds) and "named_later" (a later phrase). The split shows
        the decoder's blind spot: its map for word t comes from h_{t-1}, computed before word t-1 was chosen, so
        for the first object it names it cannot know which of several it is about to describe. by_size splits
        the words by the size of the objects they name ("large", "small", "mixed" when both): a map that spreads
        the same mass over a large object's many cells peaks less high than on a small object's few.
        per_image: per image, [position of the word in its hypothesis, hit] of each word scored (``evaluate``
        moves it into the rows as ``pointing``).
    """
    from captioning.data.shapes import COLORS, PLURAL, SHAPES, cells_in_box

    shape_words = set(SHAPES) | set(PLURAL.values())
    hits = {"shape": [], "color": []}
    chance = []
    misses = {"other_object": 0, "background": 0, "next_to_named": 0}
    by_position = {"only_object": [], "first_named": [], "named_later": []}
    by_size = {"large": [], "small": [], "mixed": []}
    per_image = []  # per image: [word position, hit] of each word scored
    for words, al, objs in zip(hypotheses, alphas, objects):
        per_image.append([])
        if al is None or not objs:
            continue
        side = math.isqrt(al.shape[1])  # P = side², or side² + 1 with the adaptive decoder's sentinel
        several = len({(o.get("color"), o.get("shape")) for o in objs}) > 1
        phrase = 0  # index of the object phrase a word belongs to: a phrase ends with its shape word
        for pos, (w_idx, al_row) in enumerate(zip(words, al)):
            word = rev_word_map[w_idx]
            kind = "shape" if word in shape_words else "color" if word in COLORS else None
            if kind is None:
                continue
            position = "named_later" if phrase else "first_named" if several else "only_object"
            phrase += kind == "shape"
            named = [o for o in objs if _names(word, o)]
            if not named:
                continue  # the caption is wrong about the object: nothing to point at
            grid = al_row[: side * side].reshape(side, side).float()
            r, c = divmod(int(grid.argmax()), side)
            mask = np.zeros((side, side), bool)  # cells whose centre is in a named box
            for o in named:
                mask |= cells_in_box(o["bbox"], image_size, side)
            hit = bool(mask[r, c])  # the peak cell's centre lies in a named box
            hits[kind].append(hit)
            per_image[-1].append([pos, hit])
            by_position[position].append(hit)
            sizes = {o.get("size") for o in named}
            size = "mixed" if len(sizes) > 1 else sizes.pop()
            if size in by_size:  # boxes without a size (made by hand) stay out of this split
                by_size[size].append(hit)
            if not hit:
                _count_miss(misses, objs, named, mask, (r, c), image_size)
            chance.append(mask.mean())  # a uniformly random cell's hit rate
    both = hits["shape"] + hits["color"]
    rate = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {
        "shape": rate(hits["shape"]),
        "color": rate(hits["color"]),
        "all": rate(both),
        "chance": rate(chance),
        "n_words": len(both),
        "misses": misses,
        "by_position": {k: {"rate": rate(v), "n": len(v)} for k, v in by_position.items()},
        "by_size": {k: {"rate": rate(v), "n": len(v)} for k, v in by_size.items()},
        "per_image": per_image,
    }


def _count_miss(misses, objs, named, mask, peak, image_size):
    """Count where a missed peak (row, column of the S×S grid) fell: on an object the word does not name, or on
    the background, and then whether it touches a cell of a named object (``mask``)."""
    from captioning.data.shapes import cells_in_box

    (r, c), side = peak, mask.shape[0]
    on_other = any(cells_in_box(o["bbox"], image_size, side)[r, c] for o in objs if o not in named)
    misses["other_object" if on_other else "background"] += 1
    # a peak one cell off the box: the map found the object but leaked onto a neighbour
    misses["next_to_named"] += not on_other and bool(mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].any())


def caption_images(checkpoint, images, beam_size=5, device="cpu", max_len=50, length_penalty=None):
    """Caption image files of any size/mode (JPEG, PNG, greyscale, RGBA…); the first unreadable one is a KitError.
    ``length_penalty``: as in :func:`evaluate` (None: the checkpoint's).

    Returns per image a dict: ``path``, ``words`` (list of str), ``alphas`` ((len(words), P) tensor or None),
    ``pixels`` (uint8 (S, S, 3) as the model saw it), ``decoder``, ``finished``, ``warning`` (str, or None when
    the image looks like the training data or its data cannot be found) and ``familiarity``: how far the image is
    from the TRAIN images (``familiarity.Familiarity.judge``: ``score``, ``threshold``, ``unfamiliar``, ``data``,
    ``warning``), or None without the checkpoint's data folder (a note on stderr says so).
    """
    out = []
    for res in iter_captions(checkpoint, images, beam_size, device, max_len, length_penalty):
        if "error" in res:
            raise KitError(res["error"])
        out.append(res)
    return out


@torch.no_grad()
def iter_captions(checkpoint, images, beam_size=5, device="cpu", max_len=50, length_penalty=None):
    """As ``caption_images``, one image at a time; an image that cannot be read yields ``{"path", "error"}`` (the
    message names the file) and the others are still captioned."""
    from captioning.config import _int, check_device, check_value
    from captioning.data.images import load_image

    device = check_device(device)
    check_value("beam_size", beam_size, _int(1))
    ckpt = load_checkpoint(checkpoint)
    encoder, decoder, word_map, cfg = models_from_checkpoint(ckpt, device, checkpoint)
    length_penalty = cfg["length_penalty"] if length_penalty is None else length_penalty
    decoder_type, size = ckpt["decoder_type"], ckpt.get("image_size") or 256
    del ckpt  # its state dicts are loaded into the models
    familiar, note = familiarity.for_checkpoint(encoder, cfg, checkpoint, device)
    if note:
        print(note, file=sys.stderr, flush=True)
    rev = {v: k for k, v in word_map.items()}
    for path in images:
        path = os.fspath(path)
        if os.path.isdir(path):
            yield {"path": path, "error": f"'{path}' is a folder, not an image file: name the image files in it"}
            continue
        if not os.path.isfile(path):
            yield {"path": path, "error": f"image '{path}' does not exist"}
            continue
        try:
            pixels, _ = load_image(path, size)  # (3, S, S) uint8
        except KitError as e:
            yield {"path": path, "error": str(e)}
            continue
        enc = encoder(normalize(torch.from_numpy(pixels.copy())[None]).to(device))
        cap = beam_search(decoder, enc, word_map, beam_size, max_len, length_penalty=length_penalty)[0]
        judged = familiar.judge(familiarity.mean_features(enc), pixels[None])[0] if familiar else None
        words, alphas = words_and_alphas(cap.tokens, cap.alphas, rev)
        yield {
            "path": path,
            "words": words,
            "alphas": alphas,
            "pixels": pixels.transpose(1, 2, 0),
            "decoder": decoder_type,
            "finished": cap.finished,
            "warning": judged and judged["warning"],
            "familiarity": judged,
        }
