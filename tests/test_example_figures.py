"""The figures that explain a wrong caption: the right/wrong rule, the caption grid and the pointing-game misses,
on tiny hand-made input; and progress bars that leave one line each in an executed notebook."""

import matplotlib

matplotlib.use("Agg")
import re  # noqa: E402

import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from captioning.evaluation.example_figures import (  # noqa: E402
    caption_grid,
    judge,
    named_objects,
    pick_examples,
    pointing_misses,
    verdict_summary,
)

RED_CIRCLE = {"shape": "circle", "color": "red", "size": "large", "bbox": [0, 0, 16, 16]}
SMALL_STAR = {"shape": "star", "color": "yellow", "size": "small", "bbox": [16, 16, 32, 32]}


def test_named_objects_reads_count_size_colour_shape():
    words = "there are two small red circles beside a big blue square and a green star".split()
    assert named_objects(words) == {
        ("red", "circle"): (2, ("small", "small")),
        ("blue", "square"): (1, ("large",)),
        ("green", "star"): (1, ()),
    }
    assert named_objects("a large blue star and a blue star".split()) == {("blue", "star"): (2, ("large",))}


def test_judge_by_objects_names_each_mistake():
    objs = [RED_CIRCLE, SMALL_STAR]
    ok = judge("a big red circle left of a yellow star on a dark background", [], objs)
    assert ok == {"right": True, "reasons": [], "kind": None}
    # the example: a yellow circle and a small yellow star, captioned "two yellow circles"
    two = judge("two yellow circles", [], [dict(RED_CIRCLE, color="yellow"), SMALL_STAR])
    assert not two["right"] and two["kind"] == "wrong count"
    assert two["reasons"] == [
        "says two yellow circles, the image has one yellow circle",
        "does not name the yellow star",
    ]
    assert judge("a red circle and a small blue star", [], objs)["reasons"] == [
        "no blue star in the image",
        "does not name the yellow star",
    ]
    assert judge("a small red circle and a yellow star", [], objs)["kind"] == "wrong size"
    # two phrases of one colour and shape: a size given for one of them is checked against one of the objects
    stars = [dict(SMALL_STAR, color="blue"), dict(SMALL_STAR, color="blue", size="large")]
    assert judge("a large blue star and a blue star", [], stars)["right"]
    assert judge("a large blue star and a small blue star", [], stars)["right"]
    two_large = judge("two large blue stars", [], stars)
    assert two_large["kind"] == "wrong size" and two_large["reasons"] == ["says large blue star, it is large and small"]
    # without object records: word for word one of the references
    assert judge("a red circle", ["a red circle", "red circle"])["right"]
    assert judge("a red ball", ["a red circle"])["kind"] == "not a reference"


def _rows():
    pixels = np.zeros((32, 32, 3), np.uint8)
    captions = ["a red circle and a yellow star", "two red circles", "a red circle", "a big red circle"]
    rows = []
    for i, cap in enumerate(captions):
        objs = [RED_CIRCLE, SMALL_STAR]
        rows.append(
            {
                "index": i,
                "image_id": f"test_{i}.jpg",
                "caption": cap,
                "references": ["a red circle with a small yellow star"],
                "objects": objs,
                "pixels": pixels,
                "verdict": judge(cap, [], objs),
                "pointing": [[1, True], [2, i != 0]],  # image 0: "circle" missed
            }
        )
    return rows


def test_examples_summary_and_grid():
    rows = _rows()
    right, wrong = pick_examples(rows, n_right=2, n_wrong=2)
    assert [r["index"] for r in right] == [0]
    # one of each kind first: "object missed" (2 images) is the most frequent, then "wrong count"
    assert [r["verdict"]["kind"] for r in wrong] == ["object missed", "wrong count"]
    text = verdict_summary(rows)
    assert text.startswith("1 of 4 captions are right (a caption is right when it names exactly the image's objects")
    assert "object missed 2" in text
    fig = caption_grid(right + wrong, cols=2)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0] == "RIGHT" and titles[1].startswith("WRONG: does not name")
    assert any("generated: two red circles" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_pointing_misses_show_the_missed_words_map_and_box():
    rows = _rows()
    al = torch.full((7, 4), 0.1)
    al[:, 3] = 0.7  # 2×2 grid: every word peaks on the bottom-right cell, the yellow star's
    result = {"grounding": {"all": 0.5}, "alphas": [al, None, None, None]}
    fig = pointing_misses(result, rows, n=3)
    assert len(fig.axes) == 1  # only image 0 has a miss
    ax = fig.axes[0]
    assert "a red [circle] and" in ax.get_title() and "peaks on the yellow star" in ax.get_title()
    assert len(ax.patches) == 1  # the box of the one red circle
    assert pointing_misses({"grounding": None, "alphas": None}, rows) is None
    assert pointing_misses({"grounding": {"all": 1.0}}, rows) is None  # alphas not kept


def test_an_executed_notebook_keeps_one_line_per_progress_bar(tmp_path):
    from instructor.notebook_runs import _execute, venv_kernel

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import time\nfrom tqdm.auto import tqdm\n"
            "for _ in tqdm(range(4), desc='kept', mininterval=0, miniters=1):\n    time.sleep(0.2)\n"
            "for _ in tqdm(range(3), desc='gone', mininterval=0, miniters=1, leave=False):\n    time.sleep(0.2)\n"
            "print('done')"
        )
    ]
    src = tmp_path / "bars.ipynb"
    nbformat.write(nb, str(src))
    with venv_kernel():
        _execute(src, tmp_path / "out.ipynb", None, 120, cwd=tmp_path, progress=False)
    outputs = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells[0].outputs
    err = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert re.findall(r"kept: *\d+%", err) == ["kept: 100%"], repr(err)
    assert "gone" not in err and not re.search(r"\r[^\n]", err), repr(err)
    assert "done" in "".join(o.text for o in outputs if o.name == "stdout")


@pytest.mark.parametrize("name", ["train1", "train2", "test", "caption"])
def test_committed_notebooks_hold_no_progress_bar_redraws(name):
    from instructor.notebook_runs import NOTEBOOKS_DIR

    nb = nbformat.read(str(NOTEBOOKS_DIR / f"{name}.ipynb"), as_version=4)
    for cell in nb.cells:
        streams = [o for o in cell.get("outputs", []) if o.output_type == "stream"]
        assert len(streams) == len({o.name for o in streams}), f"{name}.ipynb: a cell's output is split into pieces"
        for o in streams:
            assert not re.search(r"\r[^\n]", o.text), f"{name}.ipynb keeps a progress bar's redraws: {o.text[:200]!r}"
            bars = re.findall(r"^([^\n:]+): +\d+%\|", o.text, flags=re.M)
            assert len(bars) == len(set(bars)), f"{name}.ipynb: one progress bar printed several lines: {bars}"


def test_caption_notebooks_pair_is_the_first_right_and_the_first_typical_failure():
    from captioning.evaluation.example_figures import caption_text, right_and_wrong

    objs = [RED_CIRCLE, SMALL_STAR]
    captions = ["two red circles", "a red circle", "a red circle and a yellow star", "a big red circle", "x"]
    results = [{"path": f"d/test_{i}.jpg", "words": c.split(), "decoder": "attention"} for i, c in enumerate(captions)]
    refs = [["a red circle and a small yellow star"]] * len(results)
    right, wrong = right_and_wrong(results, refs, [objs] * len(results))
    assert right["path"] == "d/test_2.jpg" and right["label"].startswith("RIGHT: the first of the first 5")
    # "object missed" is the first mistake of 3 wrong captions ("a red circle", "a big red circle", "x"),
    # "wrong count" of 1: the typical failure is the first image that misses an object
    assert wrong["path"] == "d/test_1.jpg" and "'object missed' is the most common" in wrong["label"]
    text = caption_text(wrong, 5)
    assert text.startswith("test_1.jpg (attention decoder, beam 5): a red circle\n  WRONG: does not name")
    assert text.endswith("first reference: a red circle and a small yellow star")
    only = right_and_wrong(results[:1], refs[:1], [objs])
    assert len(only) == 1 and only[0]["label"].startswith("WRONG")
