"""cfg ``precision``: which training steps run under bf16 autocast (captioning/internals/precision.py), and a
training run in each precision on the tiny shapes data. The speed-up is measured in benchmarks/cpu_precision.py,
not here."""

from __future__ import annotations

import pytest
import torch

from captioning.config import make_cfg
from captioning.internals import precision
from captioning.internals.errors import KitError


@pytest.mark.parametrize(
    ("setting", "device", "native", "want"),
    [
        ("auto", "cpu", True, False),  # opt-in on a CPU: faster, but the pointing game came out lower (results.md)
        ("auto", "cpu", False, False),
        ("auto", "cuda", False, True),  # the kit's GPU setting since the start
        ("fp32", "cpu", True, False),
        ("fp32", "cuda", True, False),
        ("bf16", "cpu", False, True),
    ],
)
def test_the_precision_rule(monkeypatch, setting, device, native, want):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.bf16_training(setting, torch.device(device)) is want


def test_native_bf16_is_a_bool_and_never_raises():
    assert precision.cpu_has_native_bf16() in (True, False)


def test_a_wrong_precision_names_the_setting():
    with pytest.raises(KitError, match="precision"):
        make_cfg(precision="fp16")


def test_training_in_bf16_and_fp32_both_learn(shapes_data, tmp_path):
    """Two epochs of the attention decoder in each precision from the same seed: the loss falls in both, the run
    records its precision, and the two runs' losses stay close (bf16 keeps about 3 significant digits). The decoder
    without attention goes through the same autocast block."""
    decoder = "attention"
    from captioning.solver import fit
    from tests.test_solver import tiny_cfg

    losses = {}
    for setting in ("fp32", "bf16"):
        res = fit(tiny_cfg(shapes_data, tmp_path / setting, decoder=decoder, precision=setting, alpha_c=0.0))
        hist = res["history"]
        assert [h["train_bf16"] for h in hist] == [setting == "bf16"] * 2
        assert hist[1]["train_loss"] < hist[0]["train_loss"]
        losses[setting] = hist[0]["train_loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_continuing_a_run_in_another_precision_is_refused_naming_it(shapes_data, tmp_path):
    """The precision changes the numbers a run computes: continuing an fp32 run in bf16 is another run, refused
    with the setting named (as for any such setting), before anything in the folder changes."""
    from captioning.solver import fit
    from tests.test_solver import tiny_cfg

    fit(tiny_cfg(shapes_data, tmp_path, decoder="rnn", precision="fp32", epochs=1))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    with pytest.raises(KitError, match="precision = 'fp32' there, 'bf16' now"):
        fit(tiny_cfg(shapes_data, tmp_path, decoder="rnn", precision="bf16", epochs=2))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before
