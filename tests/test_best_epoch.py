"""Which epoch BEST_ keeps (issue 29, item 5): validation BLEU-4 smoothed over neighbouring epochs, so that one
lucky epoch on the 200 validation images is not the one kept; and the bootstrap error that measures that noise."""

from __future__ import annotations

import pytest
from test_reliability import cfg_for

from captioning.checkpoints import load_checkpoint
from captioning.config import make_cfg
from captioning.evaluation.metrics import bleu
from captioning.evaluation.selection import BestKeeper, bootstrap_bleu4, kept_epoch, newly_best, smoothed
from captioning.internals.errors import KitError
from captioning.solver import Trainer, fit

# a rising, noisy curve with one lucky spike (epoch 3) well above the epochs around it
SPIKY = [0.30, 0.42, 0.47, 0.60, 0.49, 0.52, 0.55, 0.54, 0.56, 0.55]


def run_online(values, window):
    """The epochs BEST_ holds as training would decide them, epoch by epoch, then at the end."""
    history, held = [], []
    keeper = BestKeeper(window, best_path=None)
    for epoch, v in enumerate(values):
        history.append({"epoch": epoch, "bleu4": v, "best": False})
        keeper.mark(history, newly_best(history, window))
        keeper.remember({"epoch": epoch, "history": history})  # what the trainer keeps until the epoch is judged
        held.append(kept_epoch(history))
    keeper.mark(history, newly_best(history, window, at_end=True))
    return kept_epoch(history), held


def test_smoothed_is_a_centred_mean_cut_short_at_the_ends():
    assert smoothed([1.0, 2.0, 6.0, 3.0], 3) == [1.5, 3.0, 11 / 3, 4.5]
    assert smoothed([1.0, 2.0, 6.0], 1) == [1.0, 2.0, 6.0]
    with pytest.raises(ValueError, match="odd"):
        smoothed([1.0], 2)


def test_a_lucky_spike_is_not_kept():
    assert max(range(len(SPIKY)), key=SPIKY.__getitem__) == 3  # the course's rule keeps the spike
    assert run_online(SPIKY, 1)[0] == 3
    final, held = run_online(SPIKY, 3)
    assert final == 7  # 0.55, 0.54, 0.56 around it: the best mean over three epochs
    assert held[:3] == [None, 0, 1]  # a decision waits for the epoch after
    assert held[4] == 3 and held[-1] == 7  # on the rise the spike's window led for a while, then the plateau won
    assert run_online(SPIKY + [0.70], 3)[0] == 9  # a lucky last epoch is not kept: at most its neighbour


def test_the_end_of_a_run_and_ties():
    assert run_online([0.1, 0.2, 0.3, 0.5, 0.6], 3)[0] == 3  # the last epoch has no whole window: its neighbour
    assert run_online([0.3, 0.3, 0.3, 0.3], 3)[0] == 0  # on a tie the earlier epoch stays
    assert run_online([0.0], 3)[0] == 0  # one epoch, BLEU 0: it is kept all the same
    assert run_online([0.0, 0.0], 5)[0] == 1  # too short for any whole window: the last


def test_corpus_bleu4_from_image_statistics_is_nltks_and_its_bootstrap_error():
    refs = [
        [["a", "red", "square"], ["a", "big", "red", "square"]],
        [["two", "blue", "circles"], ["an", "image", "of", "two", "blue", "circles"]],
        [["a", "green", "star", "and", "a", "red", "cross"]],
        [["a", "yellow", "circle"], ["one", "yellow", "circle"]],
    ]
    hyps = [["a", "red", "square"], ["two", "blue", "circles"], ["a", "green", "star", "and", "a", "cross"], ["x"]]
    value, se = bootstrap_bleu4(refs, hyps, samples=400)
    assert value == pytest.approx(bleu(refs, hyps)["bleu4"], abs=1e-12)
    assert se > 0
    same, zero = bootstrap_bleu4([refs[2]] * 20, [refs[2][0]] * 20, samples=50)
    assert same == pytest.approx(1.0) and zero == pytest.approx(0.0, abs=1e-12)  # every resample is the same
    # 16 times the images (20 -> 320): the value stays, the error shrinks about fourfold (1 / sqrt(16))
    small_value, small_se = bootstrap_bleu4(refs * 5, hyps * 5, samples=400)
    big_value, big_se = bootstrap_bleu4(refs * 80, hyps * 80, samples=400)
    assert small_value == pytest.approx(value) and big_value == pytest.approx(value)
    assert 0.2 < big_se / small_se < 0.3
    with pytest.raises(ValueError, match="2 reference sets for 1 hypotheses"):
        bootstrap_bleu4(refs[:2], hyps[:1])


def test_best_window_must_be_odd():
    with pytest.raises(KitError, match="best_window = 2 is not allowed: best_window must be an odd integer"):
        make_cfg(best_window=2)


def test_training_keeps_the_smoothed_best_and_a_resume_agrees(shapes_data, tmp_path, monkeypatch, capsys):
    """A real (tiny) run with scripted validation BLEU-4: BEST_ holds the epoch the smoothed rule picks, its
    history marks it, and continuing the run finds BEST_ consistent (nothing to repair) and moves it on."""
    scripted = [0.30, 0.40, 0.62, 0.41, 0.45, 0.70]  # epoch 2: a spike; epoch 3: the best mean over 3 of 0..4
    real = Trainer.validate

    def validate(self, epoch=0, **k):
        return dict(real(self, epoch, **k), bleu4=scripted[epoch])

    monkeypatch.setattr(Trainer, "validate", validate)
    cfg = cfg_for(shapes_data, tmp_path / "run", epochs=5, max_train_images=8, max_val_images=2)
    res = fit(cfg)
    kept = load_checkpoint(res["best_checkpoint"])
    assert kept["epoch"] == 3 and res["best_bleu4"] == pytest.approx(0.41)
    assert [h["best"] for h in res["history"]] == [True, True, True, True, False]
    assert kept["history"][-1] == res["history"][3] and kept["best_bleu4"] == pytest.approx(0.41)
    capsys.readouterr()
    res = fit(dict(cfg, epochs=6))  # continued: epoch 5 completes epoch 4's window; 4's weights: the resumed ones
    said = capsys.readouterr().out
    assert "repaired" not in said and "best so far: epoch 4" in said
    assert [h["best"] for h in res["history"]] == [True] * 5 + [False]
    kept = load_checkpoint(res["best_checkpoint"])
    assert kept["epoch"] == 4 and kept["history"][-1] == res["history"][4]


def test_training_curves_draw_the_smoothed_bleu_and_the_kept_epoch():
    from captioning.evaluation.figures import training_curves

    _, held = run_online(SPIKY, 3)
    hist = [
        {"epoch": i, "train_loss": 1.0, "val_loss": 1.0, "train_top5": 50.0, "val_top5": 50.0, "bleu4": v}
        for i, v in enumerate(SPIKY)
    ]
    hist[held[-1]]["best"] = True
    fig = training_curves(hist, labels=["attention"])
    lines = {ln.get_label(): ln for ln in fig.axes[2].get_lines()}
    mean = lines["attention mean over 3 epochs"]
    assert list(mean.get_xdata()) == list(range(9))  # the last epoch has no whole window
    assert mean.get_ydata()[3] == pytest.approx((0.47 + 0.60 + 0.49) / 3)
    assert list(lines["attention kept (BEST_)"].get_xdata()) == [7]
    import matplotlib.pyplot as plt

    plt.close(fig)
