"""A short `demo` run end to end (tiny sizes): every step runs and writes its outputs, on the shapes recipe."""

import json

from captioning.checkpoints import load_checkpoint
from captioning.data.recipe import DEMO, RECIPE, decoder_cfg
from instructor.cli import main


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "n_train=30",
            "n_val=8",
            "n_test=8",
            "image_size=64",
            "epochs=1",
            "embed_dim=16",
            "decoder_dim=24",
            "attention_dim=16",
            "beam_size=2",
            "coco=False",
            "pretrain_epochs=1",
            "dropout=0.2",
            "alpha_c=0.5",
            "decoders=rnn,attention,adaptive",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["decoders"]) == {"rnn", "attention", "adaptive"}
    pre = summary["encoder_pretraining"]  # the default encoder: shapes_cnn pretrained on the boxes first
    assert pre["epochs"] == 1 and (out / "data" / "shapes_cnn.pth").exists()
    assert 0 <= pre["val_accuracy"]["shape"] <= 1
    for d in summary["decoders"].values():
        assert 0 <= d["bleu4"] <= 1 and d["epochs"] == 1  # epochs=1 alone: every decoder
    cfgs = {k: load_checkpoint(d["checkpoint"])["cfg"] for k, d in summary["decoders"].items()}
    assert cfgs["rnn"]["dropout"] == cfgs["attention"]["dropout"] == 0.2
    assert cfgs["attention"]["alpha_c"] == 0.5
    assert cfgs["attention"]["init_state"] == RECIPE["init_state"]
    # one encoder for both decoders
    assert cfgs["rnn"]["encoder_weights"] == cfgs["attention"]["encoder_weights"] == pre["path"]
    figs = {p.name for p in (out / "figures").iterdir()}
    assert "training_curves.png" in figs and "attention_astronaut.png" in figs and "rnn_astronaut.png" in figs
    # the adaptive decoder: β per word beside its maps, and β by word class in the summary
    assert "adaptive_astronaut.png" in figs and "beta_adaptive_astronaut.png" in figs
    assert set(summary["decoders"]["adaptive"]["beta_by_class"]) == {"shape/colour", "function", "other"}
    assert summary["decoders"]["rnn"]["beta_by_class"] is None
    assert (out / "report" / "report.md").exists() and (out / "report" / "report.html").stat().st_size > 1000
    assert "| rnn |" in capsys.readouterr().out


def test_demo_is_the_recipe_at_a_larger_size():
    size_keys = {"n_train", "n_val", "n_test"}
    assert {k: v for k, v in DEMO.items() if k not in size_keys | {"epochs"}} == {
        k: v for k, v in RECIPE.items() if k not in size_keys | {"epochs"}
    }
    assert DEMO["n_train"] >= RECIPE["n_train"]
    for decoder in ("rnn", "attention"):
        assert decoder_cfg(RECIPE, decoder)["decoder"] == decoder


def test_demo_rejects_an_unknown_encoder(tmp_path, capsys):
    rc = main(
        ["demo", "--out", str(tmp_path / "d"), "n_train=10", "n_val=4", "n_test=4", "image_size=64", "encoder=vgg"]
    )
    assert rc == 2 and "demo encoder='vgg'" in capsys.readouterr().err


def test_demo_rejects_a_non_positive_epoch_count_and_the_old_rnn_settings(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "epochs=0"])
    assert rc == 2 and "demo epochs[rnn]=0: give a whole number, 1 or more" in capsys.readouterr().err
    rc = main(["demo", "--out", str(tmp_path / "d"), "rnn_epochs=3"])
    assert rc == 2 and "unknown demo setting(s) ['rnn_epochs']" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written
