"""Figures that explain a wrong caption (test.ipynb, caption.ipynb): test images with their generated and
reference captions, each judged right or wrong by one stated rule, and the attention maps of pointing-game
misses.

The rule (``judge``): on data whose images carry object records (the shapes data) a caption is right when it
names exactly the image's objects — every colour + shape, how many of each, and the size when it gives one;
spatial words and the wording are not judged. On other data (COCO, Flickr) it is right when it equals one of
the image's references word for word, a strict rule: most good captions of real photos fail it.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections import Counter

import h5py
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from skimage.transform import resize

from captioning.data.shapes import COLORS, COUNT_WORDS, PLURAL, SHAPES, SIZE_WORDS, cells_in_box

RULE_OBJECTS = "names exactly the image's objects (colour, shape, count, and size when it gives one)"
RULE_REFERENCES = "equals one of its references word for word"
_SINGULAR = {p: s for s, p in PLURAL.items()}
_COUNT = {w: n for n, w in COUNT_WORDS.items()}
_SIZE = {w: size for size, words in SIZE_WORDS.items() for w in words}


# ------------------------------------------------------------------------------------------------ the rule
def named_objects(words):
    """The object phrases of a caption: {(colour, shape): (count, sizes)}, ``sizes`` a tuple with the size of each
    object a phrase gave one ("two small red circles": ("small", "small")). A phrase is a colour word followed by a
    shape word, after an optional size word and count word; a plural without a count word counts 2. Phrases of the
    same colour and shape add up: "a large blue star and a blue star" is (2, ("large",))."""
    found = {}
    for i, word in enumerate(words):
        shape = word if word in SHAPES else _SINGULAR.get(word)
        if shape is None or i == 0 or words[i - 1] not in COLORS:
            continue
        j = i - 2
        size = _SIZE.get(words[j]) if j >= 0 else None
        j -= size is not None
        count = 1 if word in SHAPES else _COUNT.get(words[j], 2) if j >= 0 else 2
        old = found.get((words[i - 1], shape), (0, ()))
        found[(words[i - 1], shape)] = (old[0] + count, old[1] + ((size,) * count if size else ()))
    return found


def judge(caption, references, objects=None):
    """{"right": bool, "reasons": [str, …] (empty when right), "kind": the first reason's kind or None}.

    caption: the generated caption (str); references: its reference captions (str); objects: the image's object
    records ({"shape", "color", "size", …}) or None/[] when the data has none (then the rule is an exact match
    with a reference). Kinds: "wrong count", "wrong size", "object not in the image", "object missed",
    "not a reference".
    """
    if not objects:
        if caption in references:
            return {"right": True, "reasons": [], "kind": None}
        return {"right": False, "reasons": [f"not one of its {len(references)} references"], "kind": "not a reference"}
    said = named_objects(caption.split())
    shown = Counter((o["color"], o["shape"]) for o in objects)
    sizes = {key: Counter(o.get("size") for o in objects if (o["color"], o["shape"]) == key) for key in shown}
    reasons = []
    for (color, shape), (count, said_sizes) in said.items():
        if (color, shape) not in shown:
            reasons.append(("object not in the image", f"no {color} {shape} in the image"))
        elif count != shown[(color, shape)]:
            has = _phrase(shown[(color, shape)], color, shape)
            reasons.append(("wrong count", f"says {_phrase(count, color, shape)}, the image has {has}"))
        elif surplus := Counter(said_sizes) - sizes[(color, shape)]:  # a size said of more objects than have it
            wrong = min(surplus)
            actual = " and ".join(sorted(map(str, sizes[(color, shape)].elements())))
            reasons.append(("wrong size", f"says {wrong} {color} {shape}, it is {actual}"))
    for color, shape in shown:
        if (color, shape) not in said:
            n = shown[(color, shape)]
            reasons.append(
                ("object missed", f"does not name the {_phrase(n, color, shape) if n > 1 else color + ' ' + shape}")
            )
    return {"right": not reasons, "reasons": [r for _, r in reasons], "kind": reasons[0][0] if reasons else None}


def _phrase(count, color, shape):
    if count == 1:
        return f"one {color} {shape}"
    return f"{COUNT_WORDS.get(count, count)} {color} {PLURAL[shape]}"


def rule_text(has_objects):
    return RULE_OBJECTS if has_objects else RULE_REFERENCES


def split_records(data_folder, data_name, split, n=None):
    """(objects per image, uint8 pixels (n, S, S, 3)) of the first ``n`` images of a prepared split (all: None);
    objects are [] per image when the data has no object records."""
    from captioning.datasets import split_paths

    with h5py.File(split_paths(data_folder, data_name, split)[0], "r") as f:
        n = f["images"].shape[0] if n is None else min(n, f["images"].shape[0])
        pixels = f["images"][:n].transpose(0, 2, 3, 1)
        objects = [json.loads(v) for v in f["objects"][:n]] if "objects" in f else [[]] * n
    return objects, pixels


def judged(result):
    """The rows of ``evaluate``'s result, each with ``index``, ``objects``, ``pixels`` (S, S, 3) and ``verdict``
    (``judge``)."""
    objects, pixels = split_records(
        result["data_folder"], result["data_name"], result["split"], len(result["captions"])
    )
    return [
        {**row, "index": i, "objects": objs, "pixels": px, "verdict": judge(row["caption"], row["references"], objs)}
        for i, (row, objs, px) in enumerate(zip(result["captions"], objects, pixels))
    ]


def verdict_summary(rows):
    """How many captions are right by the rule, and the failures by kind, most frequent first."""
    right = sum(r["verdict"]["right"] for r in rows)
    kinds = Counter(r["verdict"]["kind"] for r in rows if not r["verdict"]["right"])
    rule = rule_text(any(r["objects"] for r in rows))
    lines = [f"{right} of {len(rows)} captions are right (a caption is right when it {rule})"]
    if kinds:
        lines.append("first failure of each wrong caption: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    return "\n".join(lines)


def pick_examples(rows, n_right=4, n_wrong=8):
    """The first ``n_right`` right rows and ``n_wrong`` wrong ones in split order, the wrong ones taken in turn
    from each kind of failure, the most frequent kind first (so the grid shows the typical failures, not eight of
    the same)."""
    right = [r for r in rows if r["verdict"]["right"]][:n_right]
    wrong = [r for r in rows if not r["verdict"]["right"]]
    kinds = [k for k, _ in Counter(r["verdict"]["kind"] for r in wrong).most_common()]
    queues = {k: [r for r in wrong if r["verdict"]["kind"] == k] for k in kinds}
    picked = []
    while len(picked) < n_wrong and any(queues.values()):
        for k in kinds:
            if queues[k] and len(picked) < n_wrong:
                picked.append(queues[k].pop(0))
    return right, picked


# ---------------------------------------------------------------------------------------------------- figures
def caption_grid(rows, cols=4, panel=3.0):
    """One panel per row: the image, RIGHT/WRONG with the reason, the generated caption and the first reference.
    ``rows``: items of ``judged`` (``pixels``, ``caption``, ``references``, ``verdict``, ``image_id``)."""
    cols = max(1, min(cols, len(rows)))
    n_rows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(panel * cols, (panel + 1.3) * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(row["pixels"])
        v = row["verdict"]
        head = "RIGHT" if v["right"] else "WRONG: " + "; ".join(v["reasons"])
        wrap = lambda text: textwrap.fill(text, 34)  # noqa: E731
        ax.set_title(wrap(head), fontsize=8, color="darkgreen" if v["right"] else "firebrick", loc="left")
        ax.text(
            0,
            -0.03,
            wrap("generated: " + row["caption"]) + "\n" + wrap("reference: " + row["references"][0]),
            transform=ax.transAxes,
            fontsize=7.5,
            va="top",
            family="monospace",
        )
    fig.tight_layout(h_pad=2.5)
    return fig


def pointing_misses(result, rows, n=4, panel=3.2):
    """The attention maps of the first ``n`` pointing-game misses (one per image, in split order): the image
    under the map of the missed word, the boxes of the objects that word names (green) and the map's peak cell
    (white ×). None when the result has no pointing game, no kept alphas (``evaluate(keep_alphas=True)``) or no
    miss. ``rows``: ``judged(result)``."""
    alphas = result.get("alphas")
    if not result.get("grounding") or alphas is None:
        return None
    misses = []
    for row in rows:
        missed = [pos for pos, hit in row.get("pointing", []) if not hit]
        if missed and alphas[row["index"]] is not None:
            misses.append((row, missed[0]))
        if len(misses) == n:
            break
    if not misses:
        return None
    fig, axes = plt.subplots(1, len(misses), figsize=(panel * len(misses), panel + 1.4), squeeze=False)
    size = rows[0]["pixels"].shape[0]
    for ax, (row, pos) in zip(axes.flat, misses):
        _miss_panel(ax, row, pos, alphas[row["index"]], size)
    fig.tight_layout()
    return fig


def _miss_panel(ax, row, pos, alphas, size):
    words = row["caption"].split()
    side = math.isqrt(alphas.shape[1])
    grid = alphas[pos, : side * side].float().numpy().reshape(side, side)
    ax.imshow(row["pixels"])
    ax.imshow(
        resize(grid, (size, size), order=1, mode="edge", anti_aliasing=False),
        alpha=0.6,
        cmap="magma",
        vmin=0.0,
        vmax=float(grid.max()),
    )
    word = words[pos]
    named = [o for o in row["objects"] if word in (o.get("color"), o.get("shape"), PLURAL.get(o.get("shape")))]
    for o in named:
        x0, y0, x1, y1 = o["bbox"]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
    r, c = divmod(int(grid.argmax()), side)
    cell = size / side
    ax.plot((c + 0.5) * cell - 0.5, (r + 0.5) * cell - 0.5, "x", color="white", ms=10, mew=2)
    on = [o for o in row["objects"] if o not in named and cells_in_box(o["bbox"], size, side)[r, c]]
    where = f"the {on[0]['color']} {on[0]['shape']}" if on else "the background"
    shown = " ".join(f"[{w}]" if i == pos else w for i, w in enumerate(words))
    ax.set_title(textwrap.fill(f"{shown}\n", 40) + f"\nmap of '{word}' peaks on {where}", fontsize=8)
    ax.axis("off")


# ----------------------------------------------------------------------------------------- caption.ipynb's pair
def right_and_wrong(results, references, objects):
    """Of captioned images (``caption_images`` results, in split order) with their references and object records:
    the first one captioned right and the first failure of the most common kind, each given ``references``,
    ``verdict`` and ``label`` (which one it is, and why). One only when there is no right or no wrong caption."""
    for res, refs, objs in zip(results, references, objects):
        res.update(references=refs, verdict=judge(" ".join(res["words"]), refs, objs))
    n, rule = len(results), rule_text(any(objects))
    right = [res for res in results if res["verdict"]["right"]]
    wrong = [res for res in results if not res["verdict"]["right"]]
    shown = []
    if right:
        right[0]["label"] = f"RIGHT: the first of the first {n} test images whose caption {rule} ({len(right)} are)"
        shown.append(right[0])
    if wrong:
        kind, count = Counter(res["verdict"]["kind"] for res in wrong).most_common(1)[0]
        res = next(res for res in wrong if res["verdict"]["kind"] == kind)
        res["label"] = (
            f"WRONG: {'; '.join(res['verdict']['reasons'])}. A typical failure: '{kind}' is the most common first "
            f"mistake of the {len(wrong)} wrong captions among the first {n} test images ({count} of them); this is "
            f"its first image"
        )
        shown.append(res)
    return shown


def caption_text(res, beam_size):
    """What caption.ipynb prints for one captioned image: its caption, and for ``right_and_wrong``'s images which
    one it is and its first reference."""
    caption = " ".join(res["words"])
    lines = [f"{os.path.basename(res['path'])} ({res['decoder']} decoder, beam {beam_size}): {caption}"]
    if res.get("label"):
        lines += [textwrap.fill(res["label"], 110, initial_indent="  ", subsequent_indent="  ")]
        lines += ["  first reference: " + res["references"][0]]
    return "\n".join(lines)
