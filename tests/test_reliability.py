"""Fault injection: interrupted runs resume, bad settings get clear errors, nothing half-written is ever used.

Every kill here is injected (a child process that SIGKILLs itself at a chosen point, or a lock held by the test),
never left to timing. Tiny data (the session's shapes data, 40 training images of 64 px) and the small shapes_cnn
encoder keep the whole file within a minute or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import pytest
import torch

from captioning.checkpoints import data_folder_of, load_checkpoint, save_checkpoint
from captioning.config import make_cfg
from captioning.data.features import build_feature_cache, cache_path
from captioning.data.prepare import create_input_files
from captioning.datasets import CaptionDataset, ImageCaptions
from captioning.encoder import Encoder
from captioning.internals.errors import KitError
from captioning.internals.locks import folder_lock
from captioning.solver import fit

ROOT = Path(__file__).resolve().parent.parent


def cfg_for(shapes_data, out, **kw):
    cfg = dict(
        data_folder=str(shapes_data.data_folder),
        data_name=shapes_data.data_name,
        encoder="shapes_cnn",
        encoder_weights=None,
        encoded_image_size=2,
        embed_dim=16,
        decoder_dim=24,
        attention_dim=16,
        dropout=0.0,
        batch_size=40,
        epochs=1,
        workers=0,
        decoder_lr=3e-3,
        print_freq=0,
        output_dir=str(out),
        recalibrate_images=20,
        progress=False,
        device="cpu",
        decoder="attention",
    )
    cfg.update(kw)
    return cfg


def run_child(code, **env):
    """Run ``code`` in a fresh Python; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def copy_data(shapes_data, dst):
    dst.mkdir(parents=True)
    for f in shapes_data.data_folder.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------- feature cache
def test_feature_cache_killed_mid_build_is_continued(shapes_data, tmp_path):
    data = copy_data(shapes_data, tmp_path / "data")
    child = run_child(f"""
        import os, signal, torch
        from captioning.encoder import Encoder
        from captioning.data.features import build_feature_cache
        torch.manual_seed(0)
        enc = Encoder(2, weights=None, arch="shapes_cnn")
        calls = []
        make_net = enc.for_inference  # the cache encodes with this copy: count its passes
        def for_inference():
            net = make_net()
            real = net.backbone
            def backbone(x):
                calls.append(1)
                if len(calls) == 2:  # the first batch written, then killed during the second
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(x)
            net.backbone = backbone
            return net
        enc.for_inference = for_inference
        build_feature_cache(enc, {str(data)!r}, {shapes_data.data_name!r}, "TRAIN", batch_size=16, progress=False)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr
    torch.manual_seed(0)
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    partial = cache_path(data / "features", shapes_data.data_name, "TRAIN", enc) + ".partial"
    with h5py.File(partial, "r") as f:
        assert f.attrs["n_done"] == 16  # the first batch survived the kill
        n = f["features"].shape[0]
    passes = []
    make_net = enc.for_inference

    def counting_for_inference():
        net = make_net()
        real = net.backbone
        net.backbone = lambda x: passes.append(len(x)) or real(x)
        return net

    enc.for_inference = counting_for_inference
    path = build_feature_cache(enc, data, shapes_data.data_name, "TRAIN", batch_size=16, progress=False)
    assert sum(passes) == n - 16  # the resumed run encodes only what is missing, not the first batch again
    del enc.for_inference
    fresh = build_feature_cache(
        enc, data, shapes_data.data_name, "TRAIN", cache_folder=tmp_path / "fresh", batch_size=16, progress=False
    )
    with h5py.File(path, "r") as a, h5py.File(fresh, "r") as b:
        assert (a["features"][:] == b["features"][:]).all()
    assert not os.path.exists(partial)


def test_an_unreadable_partial_cache_is_rebuilt(shapes_data, tmp_path):
    data = copy_data(shapes_data, tmp_path / "data")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    partial = cache_path(data / "features", shapes_data.data_name, "VAL", enc) + ".partial"
    os.makedirs(os.path.dirname(partial))
    Path(partial).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # what a kill during file creation can leave
    path = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    with h5py.File(path, "r") as f:
        assert f["features"].shape[0] == 10


def test_a_data_folder_reached_through_a_symlink_shares_its_cache(shapes_data, tmp_path):
    """Two runs naming one folder by two paths: the second finds the first's cache (it once took it for stale and
    removed it while the first was reading it)."""
    data = copy_data(shapes_data, tmp_path / "data")
    os.symlink(data, tmp_path / "link")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    path = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    stamp = os.stat(path).st_mtime_ns
    via_link = build_feature_cache(enc, tmp_path / "link", shapes_data.data_name, "VAL", progress=False)
    assert os.path.samefile(path, via_link) and os.stat(path).st_mtime_ns == stamp  # found, not rebuilt


def test_a_second_run_waits_for_the_cache_the_first_builds(shapes_data, tmp_path, capsys):
    data = copy_data(shapes_data, tmp_path / "data")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    held, release = threading.Event(), threading.Event()

    def other_run():
        with folder_lock(data / "features", "VAL_shapes_cnn", what="the VAL feature cache"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=other_run)
    t.start()
    held.wait(30)
    threading.Timer(1.0, release.set).start()
    path = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)  # waits, then builds
    t.join()
    assert os.path.isfile(path)
    assert "waiting for another run to finish the VAL feature cache" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- training
def test_resume_takes_a_new_learning_rate(shapes_data, tmp_path):
    first = fit(cfg_for(shapes_data, tmp_path, decoder_lr=1e-3))
    res = fit(cfg_for(shapes_data, tmp_path, decoder_lr=5e-4, epochs=2, checkpoint=first["checkpoint"]))
    assert [r["decoder_lr"] for r in res["history"]] == [1e-3, 5e-4]
    assert load_checkpoint(res["checkpoint"])["decoder_optimizer"]["param_groups"][0]["lr"] == 5e-4
    with pytest.raises(KitError, match="already finished epoch 1: with epochs = 2 there is nothing left"):
        fit(cfg_for(shapes_data, tmp_path, epochs=2, checkpoint=res["checkpoint"]))


def test_divergence_stops_training_and_no_diverged_epoch_is_kept(shapes_data, tmp_path):
    with pytest.raises(KitError, match=r"training diverged: the loss became .* at epoch 0, batch \d"):
        fit(cfg_for(shapes_data, tmp_path, decoder_lr=1e6, epochs=2, grad_clip=None, batch_size=10))
    assert not list(tmp_path.glob("*.pth.tar"))  # neither a checkpoint nor a BEST of a blown-up epoch


@pytest.mark.parametrize(
    "setting,message",
    [
        ("batch_size=abc", "batch_size = 'abc' is not allowed: batch_size must be an integer >= 1"),
        ("epochs=abc", "epochs = 'abc' is not allowed"),
        ("decoder_lr=-1", "decoder_lr must be a number > 0"),
        ("embed_dim=0", "embed_dim must be an integer >= 1"),
        ("batch_size=-5", "batch_size = -5 is not allowed"),
        ("attention=maybe", "attention must be True or False"),
        ("epochs=0", "epochs must be an integer >= 1"),
        ("encoded_image_size=0", "encoded_image_size must be an integer >= 1"),
    ],
)
def test_bad_settings_stop_at_once_naming_the_key(setting, message, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "captioning", "train", setting, f"output_dir={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_output_dir_under_a_file_and_bad_checkpoints(shapes_data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(KitError, match="output_dir = .*cannot create that folder"):
        fit(cfg_for(shapes_data, tmp_path / "file" / "out"))
    res = fit(cfg_for(shapes_data, tmp_path / "run"))
    ck = load_checkpoint(res["checkpoint"])
    ck["decoder_state"]["fc.weight"] = ck["decoder_state"]["fc.weight"][:, :3]  # edited to a wrong shape
    save_checkpoint(ck, str(tmp_path / "wrong.pth.tar"))
    with pytest.raises(KitError, match="its decoder weights do not fit"):
        fit(cfg_for(shapes_data, tmp_path / "resumed", epochs=2, checkpoint=str(tmp_path / "wrong.pth.tar")))
    del ck["history"]
    save_checkpoint(ck, str(tmp_path / "cut.pth.tar"))
    with pytest.raises(KitError, match="lacks history"):
        load_checkpoint(str(tmp_path / "cut.pth.tar"))


def test_checkpoint_paths_are_absolute_and_data_is_found_beside_a_moved_checkpoint(shapes_data, tmp_path):
    res = fit(cfg_for(shapes_data, tmp_path / "run", data_folder=os.path.relpath(shapes_data.data_folder)))
    cfg = load_checkpoint(res["best_checkpoint"])["cfg"]
    assert os.path.isabs(cfg["data_folder"]) and os.path.isabs(cfg["output_dir"])
    moved = tmp_path / "moved"
    copy_data(shapes_data, moved / "data")
    cfg = dict(cfg, data_folder="../somewhere/else/data")  # as stored by a notebook run elsewhere
    assert data_folder_of(cfg, str(moved / "BEST.pth.tar")) == str(moved / "data")
    with pytest.raises(KitError, match="holds no WORDMAP"):
        data_folder_of(cfg, str(tmp_path / "nowhere" / "BEST.pth.tar"))


# -------------------------------------------------------------------------------------------------- prepare
def _prepare_child(shapes_data, out, kill_at):
    """A prepare run (2 workers) that SIGKILLs itself at ``kill_at``: "chunk" after its first chunk of images
    (its worker pids written to out/pids), "rename" after moving 3 of its files into place."""
    return run_child(f"""
        import os, signal
        import captioning.data.prepare as p
        if {kill_at!r} == "chunk":
            real = p.write_images
            def write(tmp, items, *a, **k):
                real(tmp, items, *a, **k)
                pool = a[2]
                open({str(out / "pids")!r}, "w").write(" ".join(str(x) for x in pool._processes))
                os.kill(os.getpid(), signal.SIGKILL)
            p.write_images = write
        else:
            real, n = os.replace, []
            def replace(a, b):
                real(a, b)
                n.append(b)
                if len(n) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            p.os.replace = replace
        p.create_input_files("shapes", {str(shapes_data.karpathy_json)!r}, {str(shapes_data.karpathy_json.parent)!r},
                             captions_per_image=5, min_word_freq=1, output_folder={str(out)!r}, image_size=64,
                             seed=1, workers=2)
    """)


def test_prepare_killed_leaves_no_workers_behind(shapes_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert _prepare_child(shapes_data, out, "chunk").returncode == -signal.SIGKILL
    pids = [int(p) for p in (out / "pids").read_text().split()]
    assert pids
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)
    alive = [
        p
        for p in pids
        if os.path.exists(f"/proc/{p}") and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0]
    ]
    assert not alive, f"orphan workers {alive}"


def test_a_set_mixed_by_a_killed_prepare_is_refused(shapes_data, tmp_path):
    out = copy_data(shapes_data, tmp_path / "out")  # a complete set from seed 0 …
    assert _prepare_child(shapes_data, out, "rename").returncode == -signal.SIGKILL  # … half replaced by seed 1
    for reader in (
        lambda: CaptionDataset(out, shapes_data.data_name, "TRAIN"),
        lambda: ImageCaptions(out, shapes_data.data_name, "TEST"),
    ):
        with pytest.raises(KitError, match="incomplete: a prepare run stopped while moving them into place"):
            reader()
    create_input_files(
        "shapes",
        shapes_data.karpathy_json,
        shapes_data.karpathy_json.parent,
        captions_per_image=5,
        min_word_freq=1,
        output_folder=out,
        image_size=64,
        seed=1,
        workers=1,
    )
    CaptionDataset(out, shapes_data.data_name, "TRAIN")  # prepared again: one set
    caps = out / f"TRAIN_CAPLENS_{shapes_data.data_name}.json"
    caps.write_text(json.dumps(list(reversed(json.loads(caps.read_text())))))  # a file from elsewhere
    with pytest.raises(KitError, match="mixed set: TRAIN_CAPLENS_.* does not come from the prepare run"):
        CaptionDataset(out, shapes_data.data_name, "TRAIN")


def test_a_second_prepare_into_the_same_folder_stops_naming_the_first(shapes_data, tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, f"prepare-{shapes_data.data_name}", wait=False):
        with pytest.raises(KitError, match=r"in use by another run \(pid \d+"):
            create_input_files(
                "shapes",
                shapes_data.karpathy_json,
                shapes_data.karpathy_json.parent,
                captions_per_image=5,
                min_word_freq=1,
                output_folder=out,
                image_size=64,
                workers=1,
            )
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, the other run's files untouched


def test_duplicates_and_split_leaks_are_reported_and_stored_once(shapes_data, tmp_path, capsys):
    data = json.loads(shapes_data.karpathy_json.read_text())
    train = [r for r in data["images"] if r["split"] == "train"]
    data["images"] += [dict(train[0]), dict(train[1], split="test")]  # a repeat, and a training image in test
    j = tmp_path / "dataset.json"
    j.write_text(json.dumps(data))
    s = create_input_files(
        "shapes",
        j,
        shapes_data.karpathy_json.parent,
        captions_per_image=5,
        min_word_freq=1,
        output_folder=tmp_path / "out",
        image_size=64,
        workers=1,
    )
    err = capsys.readouterr().err
    assert "1 image(s) is listed more than once" in err and "1 image(s) is in two splits (a leak" in err
    assert (s["n_train"], s["n_test"]) == (40, 10)


# -------------------------------------------------------------------------------------------------- caption
def test_caption_writes_what_it_can_and_names_each_failure(shapes_data, tmp_path):
    res = fit(cfg_for(shapes_data, tmp_path / "run"))
    good = sorted((shapes_data.karpathy_json.parent / "images").glob("test_*.jpg"))[:2]
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good[0].read_bytes()[:60])
    (tmp_path / "folder").mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning",
            "caption",
            str(good[0]),
            str(bad),
            str(tmp_path / "folder"),
            str(good[1]),
            "--checkpoint",
            res["best_checkpoint"],
            "--out",
            str(tmp_path / "figs"),
            "--beam-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(f"{g.stem}.caption.png" for g in good)
    assert f"cannot read image {bad}" in r.stderr and "replace it or leave it out" in r.stderr
    assert "JSON" not in r.stderr and "is a folder, not an image file" in r.stderr
    assert "2 of 4 images could not be captioned" in r.stderr


class Evil:
    """Stands for any pickled object: unpickling one may run code."""


def test_a_pickled_checkpoint_is_refused_without_advice_to_unpickle(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"format": 1, "decoder_state": {}, "x": Evil()}, path)
    with pytest.raises(KitError) as e:
        load_checkpoint(str(path))
    assert "never loads those" in str(e.value) and "weights_only=False" not in str(e.value)


def test_make_cfg_is_the_one_validation(tmp_path):
    with pytest.raises(KitError, match="dropout must be a number >= 0 and < 1"):
        make_cfg(dropout=1.5, device="cpu")
    with pytest.raises(KitError, match="lr_decay_factor"):
        make_cfg(lr_decay_factor=0, device="cpu")
    assert make_cfg(device="cpu", grad_clip=None, print_freq=None)["grad_clip"] is None


# ---------------------------------------------------------------------------------------------- notebooks, report
def test_notebook_runner_checks_value_types_before_anything_runs():
    from instructor.notebook_runs import RUNS, check_parameters

    with pytest.raises(KitError, match=r"epochs='notanumber': train1.ipynb expects an integer \(its default is"):
        check_parameters({"epochs": "notanumber"}, RUNS)
    with pytest.raises(KitError, match="decoder_lr=True: train1.ipynb expects a number"):
        check_parameters({"decoder_lr": True}, RUNS)
    check_parameters({"epochs": 3, "decoder_lr": 1, "encoder_weights": "imagenet"}, RUNS)


def test_test_and_caption_take_the_checkpoints_decoder(shapes_data, tmp_path):
    from captioning.notebooks import checkpoint_decoder

    res = fit(cfg_for(shapes_data, tmp_path, decoder="rnn"))
    assert checkpoint_decoder(res["best_checkpoint"]) == "rnn"
    with pytest.raises(KitError, match="holds the 'rnn' decoder, but decoder = 'attention'"):
        checkpoint_decoder(res["best_checkpoint"], "attention")


def test_report_takes_what_it_can_and_says_what_it_skipped(shapes_data, tmp_path, capsys):
    from instructor.report import make_report

    run = tmp_path / "runs"
    res = fit(cfg_for(shapes_data, run / "notebooks"))
    # a notebook's test metrics: scores without captions
    (run / "notebooks" / "test_attention.metrics.json").write_text(
        json.dumps(
            {
                "bleu1": 0.5,
                "bleu2": 0.4,
                "bleu3": 0.3,
                "bleu4": 0.2,
                "split": "TEST",
                "beam_size": 5,
                "checkpoint": res["best_checkpoint"],
            }
        )
    )
    (run / "broken").mkdir()
    (run / "broken" / "BEST_checkpoint_Attention_x.pth.tar").write_text("not a checkpoint")
    md = make_report([str(run)], str(tmp_path / "report"))
    out = capsys.readouterr().out
    assert "skipped" in out and "BEST_checkpoint_Attention_x.pth.tar" in out
    assert "no example captions for" in out
    assert "| 0.200 |" in Path(md).read_text()


def test_the_demo_validates_its_training_settings_like_train(tmp_path):
    from instructor.demo import demo_settings

    with pytest.raises(KitError, match="decoder_lr = -1 is not allowed: decoder_lr must be a number > 0"):
        demo_settings({"decoder_lr": -1})
    with pytest.raises(KitError, match="decoders='rnn,transformer'"):
        demo_settings({"decoders": "rnn,transformer"})


def test_a_second_training_into_the_same_checkpoints_stops_naming_the_first(shapes_data, tmp_path):
    from captioning.config import make_output_dir
    from captioning.internals.locks import training_lock

    cfg = make_cfg(cfg_for(shapes_data, tmp_path / "run"))
    make_output_dir(cfg)
    with training_lock(cfg):  # the first run, still training
        with pytest.raises(KitError, match=r"training the attention decoder into .* is in use by another run \(pid"):
            fit(cfg)
    fit(cfg)  # once the first is done
    assert not list((tmp_path / "run").glob(".lock-*"))


def test_a_write_failure_mid_hdf5_gives_the_message_and_no_crash(shapes_data, tmp_path):
    """A full disk while the images HDF5 is written (here: a 64 KiB file-size limit, EFBIG) used to print the
    right message and then segfault in HDF5 at exit (139)."""
    import resource
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning",
            "prepare",
            "--dataset",
            "shapes",
            "--karpathy-json",
            str(shapes_data.karpathy_json),
            "--image-folder",
            str(shapes_data.karpathy_json.parent),
            "--output-folder",
            str(out),
            "--image-size",
            "64",
            "--min-word-freq",
            "1",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "error: writing into" in r.stderr and "Traceback" not in r.stderr
    assert not [p.name for p in out.iterdir() if not p.name.startswith(".lock")]  # no half-written file left


def test_notebooks_check_their_parameters_before_any_work(tmp_path):
    """papermill -p epochs notanumber used to fail 34 s later in cell 8 with a TypeError not naming epochs."""
    import nbformat
    import papermill

    from captioning.check import kit_root
    from captioning.notebooks import check_parameters

    for name in ("train1", "train2", "test", "caption"):
        nb = nbformat.read(str(kit_root() / "notebooks" / f"{name}.ipynb"), 4)
        defaults = {}
        exec(nb.cells[1].source, defaults)  # the parameters cell
        check_parameters(defaults)  # the defaults pass …
        assert "nb.check_parameters(globals())" in nb.cells[2].source  # … and every notebook checks them first
    for key, value in (("epochs", "notanumber"), ("shapes_n_train", 0), ("split", "TRAIN"), ("dropout", 1.5)):
        with pytest.raises(KitError, match=f"parameter {key} = {value!r} is not allowed"):
            check_parameters({key: value})
    t0 = time.time()
    with pytest.raises(papermill.PapermillExecutionError, match="parameter epochs = 'notanumber' is not allowed"):
        papermill.execute_notebook(
            str(kit_root() / "notebooks" / "train1.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"epochs": "notanumber", "output_dir": str(tmp_path)},
            cwd=str(kit_root() / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
    assert not (tmp_path / "data").exists()  # stopped before the data step
    print(f"stopped after {time.time() - t0:.1f} s")


def test_recalibrated_batchnorm_is_kept_with_the_cache(shapes_data, tmp_path, monkeypatch):
    """A random encoder's BatchNorm statistics are computed once per data folder, then loaded (not recomputed)."""
    from captioning.solver import build_encoder

    data = copy_data(shapes_data, tmp_path / "data")
    cfg = make_cfg(
        cfg_for(shapes_data, tmp_path / "out"),
        data_folder=str(data),
        encoder="resnet50",
        encoder_weights=None,
        recalibrate_images=16,
        encoded_image_size=2,
    )
    first = build_encoder(cfg, progress=False).state_dict()
    assert len(list((data / "features").glob("BN_*.pt"))) == 1

    def no(*a, **k):
        raise AssertionError("recalibrated again")

    monkeypatch.setattr(Encoder, "recalibrate", no)
    again = build_encoder(cfg, progress=False).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    monkeypatch.undo()
    build_encoder(dict(cfg, recalibrate_images=8), progress=False)  # other settings: computed and kept beside
    assert len(list((data / "features").glob("BN_*.pt"))) == 2
