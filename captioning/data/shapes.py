"""The built-in "shapes" caption dataset: procedurally drawn images with 1-3 coloured shapes and five different
captions each, written in the same Karpathy JSON format as COCO / Flickr so that every later step of the kit
(``prepare``, training, evaluation, attention maps) runs offline on a CPU in minutes.

What an image looks like
    A low-saturation background (dark or light grey, slightly tinted, with a gradient and pixel noise) and 1-3
    filled shapes (circle, square, triangle, star, cross) in one of five saturated colours (red, green, blue,
    yellow, purple) and two sizes (small ~ 1/6 of the side, large ~ 1/3).  Shapes never touch, so each one
    covers whole cells of an 8x8 or 14x14 attention grid.  Now and then a shape is repeated in the same colour,
    so that captions can count ("two red circles").

What a caption looks like
    A small grammar (45 words) with synonyms ("large"/"big", "below"/"under"), word orders, openings ("a picture
    of ...", "there are ..."), the background ("on a dark background") and spatial relations ("a red circle to the
    left of a blue square").  The five references of an image differ but share n-grams, so BLEU behaves as it does
    on real data.  Captions are at most 16 tokens.

JSON record (one per image, in ``dataset_shapes.json``)::

    {"filepath": "images", "filename": "train_000000.jpg", "imgid": 0, "split": "train",
     "sentids": [0, 1, 2, 3, 4],
     "sentences": [{"tokens": ["a", "red", "circle"], "raw": "A red circle.", "imgid": 0, "sentid": 0}, ...],
     "objects": [{"shape": "circle", "color": "red", "size": "large", "bbox": [x0, y0, x1, y1]}, ...]}

``bbox`` is in pixels of the saved image (x1, y1 exclusive).  Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from captioning.internals.atomic import write_text
from captioning.internals.errors import KitError

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
# Saturated and far apart in hue, while backgrounds are nearly grey: a colour word is never a judgement call.
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 165, 50),
    "blue": (40, 70, 225),
    "yellow": (240, 215, 25),
    "purple": (145, 45, 185),
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
# Side of an object's bounding box as a fraction of the image side; the gap between the two ranges keeps
# "small" and "large" visually distinct.
SIZE_RANGE = {"small": (0.15, 0.19), "large": (0.30, 0.36)}
COUNT_WORDS = {2: "two", 3: "three"}
# Share of captions that name larger objects before smaller ones (objects of one size stay in random order), as
# people name the main object first. In a random order the attention decoder cannot know which object its first
# words will describe: its map for word t comes from h_{t-1}, computed before word t-1 was chosen (students'
# README, "Where this kit differs from the course text"). Lower it to mix in random orders.
LARGER_FIRST = 1.0
MAX_TOKENS = 16
# Bumped whenever the same arguments start to produce different data, so that cached copies are regenerated
# (``notebooks.ensure_data``). 2: captions name larger objects first; the grammar has its own random stream.
DATA_VERSION = 2
CAPTIONS_PER_IMAGE = 5


def cells_in_box(bbox, image_size: float, side: int) -> np.ndarray:
    """(side, side) bool: the cells of a side×side grid over an image of ``image_size`` pixels whose centre lies in
    ``bbox`` = [x0, y0, x1, y1] (x1, y1 exclusive). The one rule for "this cell shows that object", used by the
    pointing game and by the encoder pretraining."""
    x0, y0, x1, y1 = bbox
    centres = (np.arange(side) + 0.5) * (image_size / side)
    return ((centres >= y0) & (centres < y1))[:, None] & ((centres >= x0) & (centres < x1))[None, :]


# ---------------------------------------- scene layout (main process, one seeded random.Random for the whole dataset)


def _place_objects(rng: random.Random, size: int, n_objects: int) -> list[dict]:
    """Objects with non-overlapping boxes (at least ~3% of the side apart), or fewer if they do not fit."""
    gap = max(1, round(size / 32))
    while n_objects > 0:
        for _attempt in range(20):
            objects = []
            for k in range(n_objects):
                if k > 0 and rng.random() < 0.3:
                    # Repeat an earlier object's colour and shape so that counting captions occur.
                    twin = rng.choice(objects)
                    shape, color = twin["shape"], twin["color"]
                else:
                    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
                size_name = rng.choice(("small", "large"))
                lo, hi = SIZE_RANGE[size_name]
                side = max(4, round(size * rng.uniform(lo, hi)))
                for _try in range(60):
                    x0 = rng.randint(gap, size - gap - side)
                    y0 = rng.randint(gap, size - gap - side)
                    box = [x0, y0, x0 + side, y0 + side]
                    if all(_apart(box, o["bbox"], gap) for o in objects):
                        objects.append({"shape": shape, "color": color, "size": size_name, "bbox": box})
                        break
                else:
                    break
            if len(objects) == n_objects:
                return objects
        n_objects -= 1
    raise AssertionError("unreachable: a single object always fits")


def _apart(a, b, gap) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _background(rng: random.Random) -> dict:
    dark = rng.random() < 0.5
    level = rng.uniform(25, 85) if dark else rng.uniform(165, 225)
    tint = [rng.uniform(-12, 12) for _ in range(3)]
    return {
        "tone": "dark" if dark else "light",
        "rgb": [min(255.0, max(0.0, level + t)) for t in tint],
        "gradient": rng.uniform(0, 30),  # total brightness change across the image
        "angle": rng.uniform(0, 2 * math.pi),
        "noise": rng.randint(0, 12),  # per-pixel noise is uniform in [-noise, noise]
    }


# ----------------------------------------------------------------------------------------------------------- captions


def _groups(objects: list[dict]) -> list[list[dict]]:
    """Objects with the same colour and shape, in order of first appearance."""
    groups: dict[tuple, list] = {}
    for o in objects:
        groups.setdefault((o["color"], o["shape"]), []).append(o)
    return list(groups.values())


def _group_phrase(rng: random.Random, group: list[dict]) -> list[str]:
    """'a red circle', 'a big red circle', 'two red circles', 'two small red circles'."""
    first = group[0]
    sizes = {o["size"] for o in group}
    words = []
    if len(sizes) == 1 and rng.random() < 0.5:
        words.append(rng.choice(SIZE_WORDS[first["size"]]))
    words.append(first["color"])
    if len(group) == 1:
        return ["a"] + words + [first["shape"]]
    return [COUNT_WORDS[len(group)]] + words + [PLURAL[first["shape"]]]


def _relation(a: list[dict], b: list[dict], image_size: int) -> str | None:
    """Where group a lies relative to group b: 'left', 'right', 'above', 'below', or None when not clear cut."""

    def centres(g, axis):
        return [(o["bbox"][axis] + o["bbox"][axis + 2]) / 2 for o in g]

    margin = image_size / 10
    best, best_gap = None, margin
    for axis, (before, after) in ((0, ("left", "right")), (1, ("above", "below"))):
        ca, cb = centres(a, axis), centres(b, axis)
        if min(cb) - max(ca) > best_gap:
            best, best_gap = before, min(cb) - max(ca)
        if min(ca) - max(cb) > best_gap:
            best, best_gap = after, min(ca) - max(cb)
    return best


RELATION_WORDS = {
    "left": (["left", "of"], ["to", "the", "left", "of"]),
    "right": (["right", "of"], ["to", "the", "right", "of"]),
    "above": (["above"], ["over"]),
    "below": (["below"], ["under"]),
}


def _mention_order(rng: random.Random, groups: list[list[dict]]) -> list[list[dict]]:
    """The order a caption names the groups in: larger first with probability ``LARGER_FIRST``, else random."""
    order = groups[:]
    rng.shuffle(order)
    if rng.random() < LARGER_FIRST:
        order.sort(key=lambda g: not any(o["size"] == "large" for o in g))  # stable: same-size ties stay random
    return order


def _list_phrase(rng: random.Random, order: list[list[dict]]) -> list[str]:
    phrases = [_group_phrase(rng, g) for g in order]
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + ["and"] + phrases[1]
    return phrases[0] + ["with"] + phrases[1] + ["and"] + phrases[2]


def _background_phrase(rng: random.Random, tone: str) -> list[str]:
    return [rng.choice(("on", "with")), "a", tone, "background"]


def _caption(rng: random.Random, objects: list[dict], tone: str, image_size: int) -> list[str]:
    """One random caption from the grammar; the caller keeps drawing until it has five distinct ones."""
    groups = _groups(objects)
    plural = len(objects) > 1
    order = _mention_order(rng, groups)
    # the first pair in mention order whose relation is clear cut (a, then b)
    pairs = [(a, b, r) for i, a in enumerate(order) for b in order[i + 1 :] if (r := _relation(a, b, image_size))]
    kind = rng.choice(("list", "list", "relation", "relation") if pairs else ("list",))
    if kind == "list":
        body = _list_phrase(rng, order)
        opening = rng.choice(
            (
                [],
                [],
                ["a", "picture", "of"],
                ["an", "image", "of"],
                ["an", "image", "with"],
                ["there", "are"] if plural else ["there", "is"],
            )
        )
        tokens = opening + body
        if rng.random() < 0.4:
            tokens += _background_phrase(rng, tone)
        return tokens
    a, b, rel = pairs[0]
    pa, pb = _group_phrase(rng, a), _group_phrase(rng, b)
    if rel in ("left", "right") and rng.random() < 0.25:
        rel_words = rng.choice((["next", "to"], ["beside"]))
    else:
        rel_words = rng.choice(RELATION_WORDS[rel])
    verb = (["are"] if len(a) > 1 else ["is"]) if rng.random() < 0.4 else []
    tokens = pa + verb + rel_words + pb
    rest = [g for g in order if g is not a and g is not b]
    if rest:
        tokens += ["and"] + _group_phrase(rng, rest[0])
    elif rng.random() < 0.3:
        tokens += _background_phrase(rng, tone)
    return tokens


def _captions(rng: random.Random, objects: list[dict], tone: str, image_size: int) -> list[list[str]]:
    found: list[list[str]] = []
    for _ in range(500):
        tokens = _caption(rng, objects, tone, image_size)
        if len(tokens) <= MAX_TOKENS and tokens not in found:
            found.append(tokens)
            if len(found) == CAPTIONS_PER_IMAGE:
                return found
    # The grammar yields >= 20 distinct captions even for a single object, so this is a bug, not bad luck.
    raise AssertionError(f"could not draw {CAPTIONS_PER_IMAGE} distinct captions for {objects}")


# --------------------------------------------------------- drawing (worker processes; pure function of the job tuple)


def _polygon(shape: str, box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "triangle":
        return [(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = w / 2 if k % 2 == 0 else w * 0.22
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(ang), cy + 2 + r * math.sin(ang)))
        return pts
    if shape == "cross":
        t = w / 6  # half the bar thickness: bars are a third of the side wide
        return [
            (cx - t, y0),
            (cx + t, y0),
            (cx + t, cy - t),
            (x1 - 1, cy - t),
            (x1 - 1, cy + t),
            (cx + t, cy + t),
            (cx + t, y1 - 1),
            (cx - t, y1 - 1),
            (cx - t, cy + t),
            (x0, cy + t),
            (x0, cy - t),
            (cx - t, cy - t),
        ]
    raise ValueError(shape)


def _render(job) -> None:
    path, size, background, objects, noise_seed = job
    gen = np.random.default_rng(noise_seed)
    # Background: base colour plus a linear gradient in a random direction.
    ramp_1d = np.linspace(-0.5, 0.5, size, dtype=np.float32) * background["gradient"]
    ramp = np.cos(background["angle"]) * ramp_1d[None, :] + np.sin(background["angle"]) * ramp_1d[:, None]
    base = np.asarray(background["rgb"], np.float32)[None, None, :] + ramp[:, :, None]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for o, jitter in zip(objects, gen.integers(-12, 13, size=(len(objects), 3))):
        fill = tuple(int(v) for v in np.clip(np.asarray(COLORS[o["color"]]) + jitter, 0, 255))
        x0, y0, x1, y1 = o["bbox"]
        if o["shape"] == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:
            draw.polygon(_polygon(o["shape"], o["bbox"]), fill=fill)
    # Uniform integer noise: Gaussian noise looks no different to a CNN and costs five times as much to draw.
    amplitude = int(background["noise"])
    pixels = np.asarray(img)
    if amplitude > 0:
        noise = gen.integers(-amplitude, amplitude + 1, size=pixels.shape, dtype=np.int16)
        pixels = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    out = Image.fromarray(pixels, "RGB")
    # JPEG like COCO/Flickr; 4:4:4 chroma and high quality so colours stay true up to the object edges.
    out.save(path, "JPEG", quality=95, subsampling=0)


# ------------------------------------------------------------------------------------------------- public entry point


def generate_shapes(out_dir, n_train=1000, n_val=100, n_test=100, image_size=256, seed=0) -> pathlib.Path:
    """Write ``out_dir/dataset_shapes.json`` (Karpathy format) and ``out_dir/images/{split}_{imgid:06d}.jpg``.

    Images are RGB ``image_size`` x ``image_size`` JPEGs; each record's ``filepath`` is ``"images"`` so that
    ``prepare`` with ``image_folder=out_dir`` finds them.  The same arguments always produce byte-identical files.
    Returns the path of the JSON file.  Raises KitError for bad arguments or an unwritable ``out_dir``.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise KitError(f"{name} must be a whole number >= 0, got {value!r}")
    if n_train + n_val + n_test == 0:
        raise KitError("n_train + n_val + n_test is 0: ask for at least one image")
    if not isinstance(image_size, int) or image_size < 32:
        raise KitError(f"image_size must be an integer >= 32 (shapes need room), got {image_size!r}")

    out_dir = pathlib.Path(out_dir)
    image_dir = out_dir / "images"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KitError(
            f"cannot create the output folder {image_dir}: {e.strerror or e}. Choose another --out folder."
        ) from e

    rng = random.Random(seed)
    caption_rng = random.Random(f"captions-{seed}")  # its own stream: the grammar never moves the layouts
    records, jobs = [], []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for imgid, split in enumerate(splits):
        n_objects = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
        objects = _place_objects(rng, image_size, n_objects)
        background = _background(rng)
        captions = _captions(caption_rng, objects, background["tone"], image_size)
        filename = f"{split}_{imgid:06d}.jpg"
        sentids = [imgid * CAPTIONS_PER_IMAGE + k for k in range(CAPTIONS_PER_IMAGE)]
        records.append(
            {
                "filepath": "images",
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentids": sentids,
                "sentences": [
                    {"tokens": t, "raw": " ".join(t).capitalize() + ".", "imgid": imgid, "sentid": s}
                    for t, s in zip(captions, sentids)
                ],
                "objects": objects,
            }
        )
        jobs.append((str(image_dir / filename), image_size, background, objects, (seed, imgid)))

    workers = min(os.cpu_count() or 1, max(1, len(jobs) // 64))
    progress = tqdm(total=len(jobs), desc="drawing shapes", unit="img")
    try:
        if workers > 1:
            with Pool(workers) as pool:
                for _ in pool.imap_unordered(_render, jobs, chunksize=16):
                    progress.update()
        else:
            for job in jobs:
                _render(job)
                progress.update()
    except OSError as e:
        raise KitError(f"cannot write images into {image_dir}: {e}. Check free disk space and permissions.") from e
    finally:
        progress.close()

    json_path = out_dir / "dataset_shapes.json"
    try:
        write_text(json.dumps({"dataset": "shapes", "images": records}), json_path)
    except OSError as e:
        raise KitError(f"cannot write {json_path}: {e}") from e
    return json_path
