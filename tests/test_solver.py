"""Training, checkpoints, resume, the fast path, bad input, evaluation and captioning on the tiny shapes data."""

import json
import os
import shutil

import pytest
import torch

from captioning.checkpoints import load_checkpoint
from captioning.evaluation.evaluate import caption_images, evaluate
from captioning.internals.errors import KitError
from captioning.internals.plugins import fast_path_matches
from captioning.models import DecoderWithAttention, DecoderWithRNN
from captioning.solver import Trainer, decoder_scores, fit, make_cfg
from instructor import fastpath


def tiny_cfg(shapes_data, out, **kw):
    cfg = dict(
        data_folder=str(shapes_data.data_folder),
        data_name=shapes_data.data_name,
        encoder_weights=None,
        encoded_image_size=2,
        embed_dim=16,
        decoder_dim=24,
        attention_dim=16,
        dropout=0.2,
        batch_size=40,
        epochs=2,
        workers=0,
        decoder_lr=3e-3,
        print_freq=0,
        output_dir=str(out),
        recalibrate_images=40,
        progress=False,
        device="cpu",
    )
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def trained(shapes_data, tmp_path_factory):
    """Both decoders trained for 2 epochs (module-scoped: several tests read the checkpoints)."""
    out = tmp_path_factory.mktemp("runs")
    yield {d: fit(tiny_cfg(shapes_data, out, decoder=d)) for d in ("rnn", "attention")}
    shutil.rmtree(out, ignore_errors=True)  # 700 MB of checkpoints, not needed by the modules that follow


def test_fit_writes_checkpoints_with_history(trained):
    for decoder, res in trained.items():
        assert os.path.basename(res["best_checkpoint"]).startswith(
            "BEST_checkpoint_" + ("NoAttention" if decoder == "rnn" else "Attention") + "_"
        )
        ck = load_checkpoint(res["checkpoint"])
        assert ck["epoch"] == 1 and len(ck["history"]) == 2
        row = ck["history"][-1]
        for key in ("train_loss", "train_top5", "val_loss", "val_top5", "bleu4", "bleu1"):
            assert key in row and row[key] == row[key]  # present and not NaN
        assert ck["decoder_optimizer"]["state"], "optimizer state must be saved for resuming"
        assert ck["encoder_state"] is not None  # random encoder weights travel with the checkpoint
    assert trained["rnn"]["best_checkpoint"] != trained["attention"]["best_checkpoint"]


def test_resume_equals_uninterrupted(shapes_data, tmp_path):
    full = fit(tiny_cfg(shapes_data, tmp_path / "full", decoder="attention", epochs=2))
    first = fit(tiny_cfg(shapes_data, tmp_path / "part", decoder="attention", epochs=1))
    resumed = fit(
        tiny_cfg(shapes_data, tmp_path / "part", decoder="attention", epochs=2, checkpoint=first["checkpoint"])
    )
    a, b = full["history"], resumed["history"]
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "bleu4"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
    sa = load_checkpoint(full["checkpoint"])["decoder_state"]
    sb = load_checkpoint(resumed["checkpoint"])["decoder_state"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])


def test_a_frozen_encoder_without_the_cache_trains_as_with_it(shapes_data, tmp_path):
    """feature_cache=False encodes every batch through the encoder's folded inference copy: the same losses as
    from the cache (which rounds the features to fp16)."""
    cached = fit(tiny_cfg(shapes_data, tmp_path / "cached", decoder="attention", epochs=1))
    direct = fit(tiny_cfg(shapes_data, tmp_path / "direct", decoder="attention", epochs=1, feature_cache=False))
    for a, b in zip(cached["history"], direct["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)


def test_checkpoint_for_other_decoder_or_word_map_is_refused(shapes_data, trained, tmp_path):
    with pytest.raises(KitError, match="holds a 'rnn' decoder"):
        Trainer(make_cfg(tiny_cfg(shapes_data, tmp_path, decoder="attention", checkpoint=trained["rnn"]["checkpoint"])))
    other = tmp_path / "other"
    other.mkdir()
    for f in os.listdir(shapes_data.data_folder):
        if f.endswith((".json", ".hdf5")):
            os.symlink(os.path.join(shapes_data.data_folder, f), other / f)
    wm_name = f"WORDMAP_{shapes_data.data_name}.json"
    wm = json.loads((shapes_data.data_folder / wm_name).read_text())
    wm["zebra"] = len(wm)
    os.remove(other / wm_name)
    (other / wm_name).write_text(json.dumps(wm))
    with pytest.raises(KitError, match="another word map"):
        Trainer(
            make_cfg(
                tiny_cfg(
                    shapes_data,
                    tmp_path,
                    data_folder=str(other),
                    decoder="rnn",
                    checkpoint=trained["rnn"]["checkpoint"],
                )
            )
        )


def test_checkpoint_loading_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pth.tar"
    torch.save({"format": 1, "decoder_state": {}, "x": Evil()}, bad)
    with pytest.raises(KitError, match="the kit never loads those, since unpickling them could run code"):
        load_checkpoint(str(bad))
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pth.tar").write_text("not a checkpoint")
    with pytest.raises(KitError):
        load_checkpoint(str(tmp_path / "junk.pth.tar"))
    with pytest.raises(KitError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth.tar"))


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(shapes_data, tmp_path, monkeypatch):
    cfg = tiny_cfg(shapes_data, tmp_path, decoder="rnn", epochs=1)
    good = fit(cfg)
    before = load_checkpoint(good["checkpoint"])["epoch"]
    import captioning.solver as solver

    real = solver._loss
    monkeypatch.setattr(solver, "_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(KitError, match=r"loss became nan.*last good checkpoint"):
        fit(dict(cfg, epochs=2, checkpoint=good["checkpoint"]))
    assert load_checkpoint(good["checkpoint"])["epoch"] == before


def test_bad_cfg_and_missing_data(shapes_data, tmp_path):
    with pytest.raises(KitError, match="unknown cfg key 'epoch'"):
        make_cfg({"epoch": 3})
    with pytest.raises(
        KitError,
        match="decoder = 'transformer' is not allowed: decoder must be one of None, 'rnn', 'attention', 'adaptive'",
    ):
        make_cfg(decoder="transformer")
    with pytest.raises(KitError, match=r"init_state = 'zero' is not allowed: init_state must be 'mean' \(h0/c0"):
        make_cfg(init_state="zero")
    with pytest.raises(KitError, match="prepare"):
        fit(tiny_cfg(shapes_data, tmp_path, data_folder=str(tmp_path / "nothing")))


@pytest.mark.parametrize(
    "cls,manual,init_state",
    [
        (DecoderWithRNN, False, "mean"),
        (DecoderWithAttention, True, "mean"),
        (DecoderWithAttention, False, "mean"),
        (DecoderWithAttention, True, "learned"),
        (DecoderWithAttention, False, "learned"),
    ],
    ids=["rnn", "attention", "attention-loop", "attention-learned-init", "attention-loop-learned-init"],
)
def test_fast_path_gives_the_same_loss_and_gradients(cls, manual, init_state, monkeypatch):
    """Parameters' and encoder output's gradients; "attention" is the hand-written backward (on a CPU),
    "attention-loop" autograd through the step loop (what a GPU runs)."""
    if not manual:
        monkeypatch.setattr(fastpath, "_manual_backward", lambda enc: False)
    torch.manual_seed(0)
    dec = cls(
        dict(vocab_size=30, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.0, init_state=init_state),
        encoder_dim=6,
    )
    enc = torch.randn(4, 3, 3, 6)
    caps = torch.randint(1, 30, (4, 5, 11))
    lens = torch.randint(3, 12, (4, 5))
    lens[0, 0], lens[1, 2] = 11, 2  # the longest caption, and one with a single word to predict
    ok, why = fast_path_matches(decoder_scores, fastpath, dec, enc, caps, lens)
    assert ok, why
    grads = []
    for fast in (None, fastpath):
        dec.zero_grad()
        e = enc.clone().requires_grad_()  # as when fine-tuning the encoder
        scores, targets, alphas = decoder_scores(dec, e, caps, lens, fast=fast)
        loss = torch.nn.functional.cross_entropy(scores, targets)
        if alphas is not None:
            loss = loss + ((1 - alphas.sum(1)) ** 2).mean()
        loss.backward()
        grads.append({"encoder_out": e.grad, **{n: p.grad.clone() for n, p in dec.named_parameters()}})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_fast_path_backward_in_float64_equals_autograd():
    """The hand-written backward against autograd through the decoder's forward, in float64 (no rounding noise to
    hide a small error), with several captions per image and with one."""
    torch.manual_seed(0)
    dec = DecoderWithAttention(
        dict(vocab_size=30, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.0), encoder_dim=6
    ).double()
    for b, cpi in ((3, 5), (7, 1)):
        enc = torch.randn(b, 4, 6, dtype=torch.float64)
        caps = torch.randint(1, 30, (b, cpi, 9))
        lens = torch.randint(2, 10, (b, cpi))
        grads = []
        for fast in (None, fastpath):
            dec.zero_grad()
            e = enc.clone().requires_grad_()
            scores, targets, alphas = decoder_scores(dec, e, caps, lens, fast=fast)
            loss = torch.nn.functional.cross_entropy(scores, targets) + ((1 - alphas.sum(1)) ** 2).mean()
            loss.backward()
            grads.append({"encoder_out": e.grad, **{n: p.grad.clone() for n, p in dec.named_parameters()}})
        for n in grads[0]:
            torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-12, msg=n)


def test_fast_path_is_refused_for_a_decoder_that_computes_something_else():
    torch.manual_seed(0)
    dec = DecoderWithAttention(
        dict(vocab_size=30, embed_dim=8, decoder_dim=12, attention_dim=10, dropout=0.0), encoder_dim=6
    )
    dec.one_step = lambda emb, enc, h, c: DecoderWithAttention.one_step(dec, emb * 2, enc, h, c)
    ok, why = fast_path_matches(
        decoder_scores,
        fastpath,
        dec,
        torch.randn(2, 3, 3, 6),
        torch.randint(1, 30, (2, 5, 9)),
        torch.randint(3, 10, (2, 5)),
    )
    assert not ok and "differ" in why


def test_evaluate_and_caption(trained, shapes_data, tmp_path):
    res = evaluate(
        trained["attention"]["best_checkpoint"],
        "TEST",
        beam_size=3,
        out=tmp_path / "t.json",
        progress=False,
        coco=False,
    )
    assert res["n_images"] == 10 and 0 <= res["bleu4"] <= 1
    assert json.loads((tmp_path / "t.json").read_text())["bleu4"] == res["bleu4"]
    assert res["grounding"] is None or 0 <= (res["grounding"]["chance"] or 0) <= 1
    from PIL import Image

    gray = tmp_path / "gray.png"
    Image.new("L", (97, 61), 128).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 300), (255, 0, 0, 100)).save(rgba)
    for decoder in ("rnn", "attention"):
        out = caption_images(trained[decoder]["best_checkpoint"], [str(gray), str(rgba)], beam_size=2)
        assert len(out) == 2 and all(isinstance(w, str) for r in out for w in r["words"])
        assert (out[0]["alphas"] is None) == (decoder == "rnn")
        if decoder == "attention":
            assert out[0]["alphas"].shape[0] == len(out[0]["words"])
    with pytest.raises(KitError, match="does not exist"):
        caption_images(trained["rnn"]["best_checkpoint"], [str(tmp_path / "nope.jpg")])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(KitError, match="bad.jpg"):
        caption_images(trained["rnn"]["best_checkpoint"], [str(tmp_path / "bad.jpg")])


def test_cli_test_and_caption(trained, tmp_path, capsys):
    from captioning.cli import main

    ck = trained["attention"]["best_checkpoint"]
    assert main(["test", "--checkpoint", ck, "--beam-size", "2", "--out", str(tmp_path / "r.json"), "--coco"]) == 0
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "COCO toolkit" in out and "CIDEr-D" in out
    assert main(["test", "--checkpoint", ck, "--beam-size", "2", "--out", str(tmp_path / "r0.json")]) == 0
    out = capsys.readouterr().out  # the default: the course's BLEU only (the COCO toolkit costs ~10 s)
    assert "BLEU-4" in out and "COCO toolkit" not in out
    assert (
        main(
            [
                "test",
                "--checkpoint",
                ck,
                "--beam-size",
                "2",
                "--length-penalty",
                "1",
                "--out",
                str(tmp_path / "r1.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r1.json").read_text())["length_penalty"] == 1.0
    assert json.loads((tmp_path / "r.json").read_text())["length_penalty"] == 0.0
    from PIL import Image

    img = tmp_path / "x.jpg"
    Image.new("RGB", (50, 80), (0, 0, 255)).save(img)
    assert main(["caption", str(img), "--checkpoint", ck, "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "x.caption.png").stat().st_size > 1000
    assert main(["caption", str(tmp_path / "missing.jpg"), "--checkpoint", ck]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_test_and_caption_decode_with_the_checkpoints_length_penalty_unless_told(
    trained, tmp_path, monkeypatch, capsys
):
    from PIL import Image

    import captioning.evaluation.evaluate
    from captioning.checkpoints import save_checkpoint
    from captioning.cli import main

    ck = load_checkpoint(trained["attention"]["best_checkpoint"])
    assert ck["cfg"]["length_penalty"] == 0.0  # the course's rule is the cfg default
    ck["cfg"]["length_penalty"] = 1.0  # as the notebooks train
    path = str(tmp_path / "lp1.pth.tar")
    save_checkpoint(ck, path)
    used = []
    real = captioning.evaluation.evaluate.beam_search
    monkeypatch.setattr(
        captioning.evaluation.evaluate,
        "beam_search",
        lambda *a, **kw: used.append(kw["length_penalty"]) or real(*a, **kw),
    )
    assert main(["test", "--checkpoint", path, "--beam-size", "2", "--out", str(tmp_path / "d.json")]) == 0
    assert "(length penalty 1)" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["length_penalty"] == 1.0 and set(used) == {1.0}
    used.clear()
    assert (
        main(
            [
                "test",
                "--checkpoint",
                path,
                "--beam-size",
                "2",
                "--length-penalty",
                "0",
                "--out",
                str(tmp_path / "z.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "z.json").read_text())["length_penalty"] == 0.0 and set(used) == {0.0}
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(img)
    used.clear()
    assert main(["caption", str(img), "--checkpoint", path, "--out", str(tmp_path / "figs")]) == 0
    assert (
        main(["caption", str(img), "--checkpoint", path, "--out", str(tmp_path / "figs"), "--length-penalty", "0"]) == 0
    )
    assert used == [1.0, 0.0]
    with pytest.raises(KitError, match="length_penalty"):
        make_cfg(length_penalty=-1)


def test_cli_test_prints_the_pointing_game_with_its_misses_and_positions(monkeypatch, capsys, tmp_path):
    import captioning.evaluation.evaluate
    from captioning.cli import main

    monkeypatch.chdir(tmp_path)  # test writes its JSON (unused.json) after printing the scores

    result = {
        "split": "TEST",
        "n_images": 3,
        "beam_size": 5,
        "length_penalty": 0.0,
        "decoder": "attention",
        "bleu1": 0.5,
        "bleu2": 0.4,
        "bleu3": 0.3,
        "bleu4": 0.2,
        "coco": None,
        "grounding": {
            "all": 0.75,
            "n_words": 8,
            "chance": 0.1,
            "shape": 0.75,
            "color": 0.75,
            "misses": {"other_object": 1, "background": 1, "next_to_named": 1},
            "by_position": {
                "only_object": {"rate": 1.0, "n": 4},
                "first_named": {"rate": 0.5, "n": 4},
                "named_later": {"rate": None, "n": 0},
            },
            "by_size": {
                "large": {"rate": 0.5, "n": 4},
                "small": {"rate": 1.0, "n": 4},
                "mixed": {"rate": None, "n": 0},
            },
        },
    }
    monkeypatch.setattr(captioning.evaluation.evaluate, "evaluate", lambda *a, **k: result)
    assert main(["test", "--checkpoint", "c.pth.tar", "--out", "unused.json"]) == 0
    out = capsys.readouterr().out
    assert (
        "pointing game: 0.750 of 8 shape/colour words (chance 0.100); missed peaks: 1 on an object the word "
        "does not name, 1 on no object (1 of them next to a named object)"
    ) in out
    assert (
        "by position: only kind of object 1.00 (4 words), first named of several 0.50 (4 words), named later — "
        "(0 words)"
    ) in out
    assert "by size of the named object: large 0.50 (4 words), small 1.00 (4 words), mixed — (0 words)" in out


def test_cli_caption_prints_the_adaptive_decoders_beta_per_word(shapes_data, tmp_path, capsys):
    from PIL import Image

    from captioning.cli import main

    ck = fit(tiny_cfg(shapes_data, tmp_path, decoder="adaptive"))["best_checkpoint"]
    img = tmp_path / "x.jpg"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(img)
    assert main(["caption", str(img), "--checkpoint", ck, "--out", str(tmp_path / "figs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    caption_line = next(line for line in lines if line.startswith(f"{img}: "))
    beta_line = next(line for line in lines if "β per word:" in line)  # a familiarity warning may stand between
    words = caption_line.split(": ", 1)[1].rsplit("   [", 1)[0].split()
    pairs = beta_line.split("β per word:")[1].split()
    assert pairs[0::2] == words  # one β per generated word
    assert all(0.0 <= float(b) <= 1.0 for b in pairs[1::2])


def test_resume_frozen_checkpoint_into_fine_tuning(shapes_data, trained, tmp_path, monkeypatch):
    """Course's best result: fine-tune blocks 2-4. A frozen-encoder checkpoint resumes into fine-tuning with its
    own encoder learning rate, and the feature cache is switched off (the features change as the encoder learns)."""
    import captioning.solver as solver

    def no_cache(*a, **k):
        raise AssertionError("the feature cache must be off while fine-tuning")

    monkeypatch.setattr(solver, "build_feature_cache", no_cache)
    frozen = load_checkpoint(trained["rnn"]["checkpoint"])
    cfg = tiny_cfg(
        shapes_data,
        tmp_path,
        decoder="rnn",
        epochs=3,
        fine_tune_encoder=True,
        encoder_lr=1e-3,
        checkpoint=trained["rnn"]["checkpoint"],
    )
    runner = Trainer(make_cfg(cfg), progress=False)
    assert runner.enc_opt is not None and runner.enc_opt.param_groups[0]["lr"] == 1e-3
    runner.fit()
    tuned = load_checkpoint(runner.ckpt_path)
    assert tuned["epoch"] == 2 and len(tuned["history"]) == 3 and tuned["encoder_optimizer"] is not None
    changed = {
        k.split(".")[1]
        for k, v in tuned["encoder_state"].items()
        if v.is_floating_point() and not torch.equal(v, frozen["encoder_state"][k])
    }
    assert changed and all(int(block) >= 5 for block in changed), changed  # only children [5:] learn
