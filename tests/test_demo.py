"""A short `demo` run end to end (tiny sizes): every step runs and writes its outputs."""
import json

from captioning.cli import main
from captioning.solver import load_checkpoint


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "n_train=30", "n_val=8", "n_test=8", "image_size=64", "epochs=1",
               "embed_dim=16", "decoder_dim=24", "attention_dim=16", "beam_size=2", "coco=False", "pretrain_epochs=1",
               "rnn_pretrain_epochs=2", "dropout=0.2", "rnn_dropout=0.0", "alpha_c=0.5"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["decoders"]) == {"rnn", "attention"}
    pre = summary["encoder_pretraining"]  # the default encoder: shapes_cnn pretrained on the boxes first
    assert pre["epochs"] == 1 and (out / "shapes_cnn.pth").exists() and 0 <= pre["val_accuracy"]["shape"] <= 1
    for d in summary["decoders"].values():
        assert 0 <= d["bleu4"] <= 1 and d["epochs"] == 1  # epochs=1 alone: every decoder, rnn_epochs included
    cfgs = {k: load_checkpoint(d["checkpoint"])["cfg"] for k, d in summary["decoders"].items()}
    assert cfgs["rnn"]["dropout"] == 0.0 and cfgs["attention"]["dropout"] == 0.2  # rnn_dropout wins for rnn
    assert cfgs["attention"]["alpha_c"] == 0.5
    assert cfgs["attention"]["init_state"] == "learned"  # the demo's default (course: "mean")
    # the decoder without attention trains on its own, longer-pretrained encoder
    assert cfgs["rnn"]["encoder_weights"].endswith("shapes_cnn_2ep.pth")
    assert cfgs["attention"]["encoder_weights"].endswith("shapes_cnn.pth")
    assert sorted(p["epochs"] for p in summary["encoder_pretrainings"]) == [1, 2]
    figs = {p.name for p in (out / "figures").iterdir()}
    assert "training_curves.png" in figs and "attention_astronaut.png" in figs and "rnn_astronaut.png" in figs
    assert (out / "report" / "report.md").exists() and (out / "report" / "report.html").stat().st_size > 1000
    assert "| rnn |" in capsys.readouterr().out


def test_demo_pretrain_epochs_alone_sets_every_decoders_encoder(tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "n_train=20", "n_val=4", "n_test=4", "image_size=64", "epochs=1",
               "embed_dim=16", "decoder_dim=24", "beam_size=1", "coco=False", "pretrain_epochs=1", "decoders=rnn"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["epochs"] for p in summary["encoder_pretrainings"]] == [1]
    assert summary["decoders"]["rnn"]["encoder_weights"].endswith("shapes_cnn.pth")
    assert not list(out.glob("shapes_cnn_*ep.pth"))


def test_demo_rejects_an_unknown_encoder(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "n_train=10", "n_val=4", "n_test=4", "image_size=64",
               "encoder=vgg"])
    assert rc == 2 and "demo encoder='vgg'" in capsys.readouterr().err


def test_demo_rejects_a_non_positive_epoch_count(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "rnn_epochs=0"])
    assert rc == 2 and "demo rnn_epochs=0: give a whole number of epochs" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything is written
