"""The caption figure shows attention on one scale a reader can trust."""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from captioning.evaluation.figures import caption_figure  # noqa: E402


def _result(alphas, words):
    return {"pixels": np.zeros((48, 48, 3), np.uint8), "words": words, "alphas": alphas}


def test_a_uniform_map_looks_uniform_and_all_panels_share_one_scale():
    # 3×3 grid: a nearly uniform map (0.111–0.113) and a focused one (0.9 on one cell)
    uniform = torch.full((9,), 1 / 9) + torch.linspace(-0.001, 0.001, 9)
    focused = torch.full((9,), 0.1 / 8)
    focused[4] = 0.9
    fig = caption_figure(_result(torch.stack([uniform, focused]), ["a", "circle"]))
    maps = [im for ax in fig.axes for im in ax.get_images()[1:]]  # the overlays (the first image is the photo)
    assert len(maps) == 2
    assert {im.norm.vmin for im in maps} == {0.0} and {im.norm.vmax for im in maps} == {float(focused.max())}
    # the uniform map sits in a narrow band of the shared scale, not stretched to its own min-max
    shown = maps[0].get_array()
    assert (shown.max() - shown.min()) / maps[0].norm.vmax < 0.01
    titles = [ax.get_title() for ax in fig.axes]
    assert any("peak 0.11" in t for t in titles) and any("peak 0.90" in t for t in titles)
    bars = [ax for ax in fig.axes if "uniform: 1/9 = 0.111" in ax.get_ylabel()]
    assert len(bars) == 1  # one colour bar naming the uniform level


def test_adaptive_titles_give_beta_and_the_scale_ignores_the_sentinel():
    alphas = torch.tensor([[0.05] * 4 + [0.8], [0.2, 0.3, 0.1, 0.1, 0.3]])
    fig = caption_figure(_result(alphas, ["a", "red"]))
    maps = [im for ax in fig.axes for im in ax.get_images()[1:]]
    assert {round(im.norm.vmax, 6) for im in maps} == {0.3}  # the regions' largest weight, not β's 0.8
    assert any("β=0.80" in ax.get_title() for ax in fig.axes)


def test_without_attention_the_figure_is_the_image_and_caption():
    fig = caption_figure(_result(None, ["a", "red", "circle"]))
    assert fig.axes[0].get_title() == "a red circle"


def test_the_caption_figure_heads_with_the_caption_and_its_warning_however_long():
    import warnings

    import numpy as np

    from captioning.evaluation.figures import caption_figure

    warning = "this image looks unlike the training data: " + "its caption is a guess " * 8
    for words in (["a"], "a red circle and a big blue star on a dark background".split()):
        r = {"pixels": np.zeros((32, 32, 3), np.uint8), "words": words, "warning": warning}
        r["alphas"] = torch.rand(len(words), 16).softmax(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "tight layout not applied": the figure grows with the heading
            fig = caption_figure(r)
        heading = fig._suptitle.get_text().replace("\n", " ")
        assert heading.startswith("WARNING: this image looks unlike") and heading.endswith(" ".join(words))
