"""A short `demo` run end to end (tiny sizes): every step runs and writes its outputs."""
import json

from captioning.cli import main


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "n_train=30", "n_val=8", "n_test=8", "image_size=64", "epochs=1",
               "embed_dim=16", "decoder_dim=24", "attention_dim=16", "beam_size=2", "coco=False"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["decoders"]) == {"rnn", "attention"}
    for d in summary["decoders"].values():
        assert 0 <= d["bleu4"] <= 1 and d["epochs"] == 1
    figs = {p.name for p in (out / "figures").iterdir()}
    assert "training_curves.png" in figs and "attention_astronaut.png" in figs and "rnn_astronaut.png" in figs
    assert (out / "report" / "report.md").exists() and (out / "report" / "report.html").stat().st_size > 1000
    assert "| rnn |" in capsys.readouterr().out
