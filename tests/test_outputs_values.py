"""Outputs and values (issue 28): a command either does its whole job or leaves every earlier result as it was, and
says what happened in one message naming the file, the value and what to do.

Faults are injected, never left to timing: a write size limit in a child (``RLIMIT_FSIZE``: every write past it
fails, as on a full disk), writes that HDF5 believes made but that never reach the file, and read-only folders
(a read-only bind mount in a private mount namespace, since the tests run as root, for whom ``chmod`` stops
nothing; skipped where ``unshare`` is not allowed). Tiny data: the session's shapes data and the shapes_cnn encoder.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest
import torch

from captioning.data.features import build_feature_cache
from captioning.encoder import Encoder
from captioning.internals.errors import KitError

ROOT = Path(__file__).resolve().parent.parent


def copy_data(shapes_data, dst):
    dst.mkdir(parents=True)
    for f in shapes_data.data_folder.iterdir():
        if f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


def _limit_file_size(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def run_python(code, preexec_fn=None, read_only=(), small_disk=None, timeout=300):
    """``code`` in a fresh Python. ``read_only``: folders that the child sees mounted read-only; ``small_disk``:
    a folder the child sees as an empty 512 KB file system (both skip the test where a private mount namespace
    cannot be made); ``preexec_fn``: e.g. a file size limit."""
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    mounts = [f"mount --bind '{p}' '{p}' && mount -o remount,ro,bind '{p}' '{p}'" for p in read_only]
    if small_disk:
        mounts.append(f"mount -t tmpfs -o size=512k tmpfs '{small_disk}'")
    if mounts:
        if shutil.which("unshare") is None:
            pytest.skip("read-only folders and a small disk need `unshare` (a private mount namespace): not installed")
        mounts = " && ".join(mounts)
        probe = subprocess.run(["unshare", "-m", "sh", "-c", mounts], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"read-only folders need a private mount namespace: {probe.stderr.strip()[:200]}")
        cmd = ["unshare", "-m", "sh", "-c", mounts + ' && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, preexec_fn=preexec_fn)


def kit(*args, **kw):
    """``python -m captioning ARGS`` as run_python runs code."""
    return run_python(f"import sys; from captioning.cli import main; sys.exit(main({list(map(str, args))!r}))", **kw)


# ---------------------------------------------------------------------------------------- 2: the feature cache
def test_a_full_disk_during_the_cache_build_leaves_no_cache_and_names_the_space(shapes_data, tmp_path):
    """It used to swallow HDF5's write errors, rename the file into place and crash (rc 139); the next run
    trained on a cache whose rows were zeros."""
    data = copy_data(shapes_data, tmp_path / "data")
    code = f"""
        import torch
        from captioning.encoder import Encoder
        from captioning.internals.errors import KitError
        from captioning.data.features import build_feature_cache
        torch.manual_seed(0)
        try:
            build_feature_cache(Encoder(2, weights=None, arch="shapes_cnn"), {str(data)!r},
                                {shapes_data.data_name!r}, "TRAIN", batch_size=8, progress=False)
        except KitError as e:
            print("error:", e)
    """
    r = run_python(code, preexec_fn=_limit_file_size(100 * 1024))  # 40 rows of 8 KiB do not fit
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "error: writing the TRAIN feature cache" in r.stdout and "MB free: free some space" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr and "HDF5-DIAG" not in r.stderr, r.stderr[-2000:]
    assert os.listdir(data / "features") == []  # neither a cache nor a half-written file
    torch.manual_seed(0)
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    path = build_feature_cache(enc, data, shapes_data.data_name, "TRAIN", batch_size=8, progress=False)
    with h5py.File(path, "r") as f:  # space again: built whole
        assert f.attrs["n_done"] == 40 and all(abs(f["features"][i]).max() > 0 for i in range(40))


def test_a_cache_that_cannot_fit_stops_before_encoding(shapes_data, tmp_path, monkeypatch):
    import captioning.data.features as features

    data = copy_data(shapes_data, tmp_path / "data")
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features.shutil, "disk_usage", lambda p: free._replace(free=50_000))
    with pytest.raises(
        KitError, match=r"the cache needs about 0\.3 MB and .*features has 0\.0 MB free: free some space"
    ):
        build_feature_cache(
            Encoder(2, weights=None, arch="shapes_cnn"),
            data,
            shapes_data.data_name,
            "TRAIN",
            batch_size=8,
            progress=False,
        )
    assert os.listdir(data / "features") == []


class _Dropping:
    """Stands for ``images_h5._Sink`` but silently loses the first write of ``size`` bytes: a disk that drops a
    write without an error."""

    def __init__(self, real, size):
        self.real, self.size, self.dropped = real, size, False

    def __call__(self, f):
        sink = self.real(f)
        outer = self

        class Sink(type(sink)):
            def write(self, b):
                if not outer.dropped and len(memoryview(b).cast("B")) == outer.size:
                    outer.dropped = True
                    return len(memoryview(b).cast("B"))
                return super().write(b)

        sink.__class__ = Sink
        return sink


def test_a_cache_write_lost_without_an_error_is_never_renamed_into_place(shapes_data, tmp_path, monkeypatch):
    import captioning.data.features as features

    data = copy_data(shapes_data, tmp_path / "data")
    drop = _Dropping(features._Sink, 256 * 4 * 4 * 2)  # one row of the shapes_cnn map (256, 4, 4) fp16
    monkeypatch.setattr(features, "_Sink", drop)
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    with pytest.raises(KitError, match=r"feature cache just written to .*\.partial is damaged: row \d+ does not"):
        build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    assert drop.dropped and os.listdir(data / "features") == []


def test_a_damaged_cache_found_later_is_rebuilt(shapes_data, tmp_path, capsys):
    data = copy_data(shapes_data, tmp_path / "data")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    path = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    with h5py.File(path, "r") as f:
        good = f["features"][:]
    with h5py.File(path, "r+") as f:
        f["features"][3] = 0  # rows a full disk never wrote read as zeros
    again = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    assert "feature cache" in capsys.readouterr().err and again == path
    with h5py.File(path, "r") as f:
        assert (f["features"][:] == good).all()


def test_a_version_1_cache_without_checksums_is_rebuilt(shapes_data, tmp_path):
    import captioning.data.features as features

    data = copy_data(shapes_data, tmp_path / "data")
    enc = Encoder(2, weights=None, arch="shapes_cnn")
    path = build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    images = os.path.join(data, f"VAL_IMAGES_{shapes_data.data_name}.hdf5")
    old_key = json.loads(features.cache_key(images, enc))
    with h5py.File(path, "r+") as f:  # as the kit before checksums wrote it
        del f["crc32"]
        f.attrs["key"] = json.dumps(dict(old_key, version=1), sort_keys=True)
    build_feature_cache(enc, data, shapes_data.data_name, "VAL", progress=False)
    with h5py.File(path, "r") as f:
        assert "crc32" in f and json.loads(f.attrs["key"])["version"] == features.CACHE_VERSION


# ----------------------------------------------------------------------------------------------- 2: prepare
def test_prepare_checks_its_hdf5_before_renaming_it(shapes_data, tmp_path, monkeypatch):
    import captioning.data.images_h5 as images_h5
    from captioning.data.prepare import create_input_files

    drop = _Dropping(images_h5._Sink, 3 * 64 * 64)  # one image chunk
    monkeypatch.setattr(images_h5, "_Sink", drop)
    out = tmp_path / "out"
    with pytest.raises(
        KitError,
        match=r"IMAGES_.*\.hdf5, just written, holds other pixels than were written for "
        r"image \d+ .*nothing was moved into place",
    ):
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
    assert drop.dropped and [p.name for p in out.iterdir() if not p.name.startswith(".lock")] == []


# -------------------------------------------------------------------------------------------- 5, 6: test, caption
@pytest.fixture(scope="module")
def trained(shapes_data, tmp_path_factory):
    """A one-epoch attention checkpoint trained on a copy of the shapes data (so that tests may make that copy
    read-only), with the TEST feature cache built: (checkpoint path, data folder)."""
    from captioning.evaluation.evaluate import evaluate
    from captioning.solver import fit

    root = tmp_path_factory.mktemp("trained")
    data = copy_data(shapes_data, root / "data")
    res = fit(
        dict(
            data_folder=str(data),
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
            output_dir=str(root / "run"),
            recalibrate_images=20,
            progress=False,
            device="cpu",
            decoder="attention",
        )
    )
    evaluate(res["best_checkpoint"], "TEST", beam_size=1, progress=False, coco=False)  # builds the TEST cache
    return res["best_checkpoint"], data


def _test_images(shapes_data, n):
    return sorted((shapes_data.karpathy_json.parent / "images").glob("test_*.jpg"))[:n]


def test_test_out_into_a_missing_folder_creates_it(trained, tmp_path):
    out = tmp_path / "missing" / "deeper" / "scores.json"
    r = kit("test", "--checkpoint", trained[0], "--beam-size", "1", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(out.read_text())["n_images"] == 10


def test_test_beside_a_read_only_checkpoint_stops_before_the_work(trained, tmp_path):
    """It used to beam-search the whole split, then give a traceback without printing the scores."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ckpt = ro / os.path.basename(trained[0])
    shutil.copy(trained[0], ckpt)
    r = kit("test", "--checkpoint", ckpt, "--beam-size", "1", read_only=[ro])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        f"cannot write the scores file {ckpt.stem.replace('.pth', '')}.test.beam1.json (by default beside the "
        f"checkpoint) into {ro} (Read-only file system): choose another place with --out" in r.stderr
    ), r.stderr
    assert "BLEU" not in r.stdout and "test beam" not in r.stderr  # stopped before the beam search


def test_test_onto_a_full_disk_stops_before_the_work(trained, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    r = kit("test", "--checkpoint", trained[0], "--beam-size", "1", "--out", full / "s.json", small_disk=full)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        f"cannot write s.json into {full}: its disk is full (512 KB free). Free some space or choose another "
        "place with --out" in r.stderr
    ), r.stderr
    assert "BLEU" not in r.stdout and "test beam" not in r.stderr


def test_test_on_a_full_disk_prints_the_scores_then_names_the_file(trained, tmp_path):
    out = tmp_path / "scores.json"
    r = kit(
        "test", "--checkpoint", trained[0], "--beam-size", "1", "--out", out, preexec_fn=_limit_file_size(1024)
    )  # the scores JSON (captions of 10 images) is larger
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "BLEU-4: " in r.stdout
    assert (
        f"cannot write {out}: File too large (the file size limit was reached). The scores are printed above."
        in r.stderr
    ), r.stderr
    assert os.listdir(tmp_path) == []  # no half-written file, no temporary file


def test_caption_on_a_full_disk_captions_every_image_and_says_which_figures_are_missing(trained, shapes_data, tmp_path):
    images = _test_images(shapes_data, 2)
    r = kit(
        "caption",
        *images,
        "--checkpoint",
        trained[0],
        "--beam-size",
        "1",
        "--out",
        tmp_path / "figs",
        preexec_fn=_limit_file_size(1024),
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == [str(p) for p in images]  # both captioned
    assert r.stdout.count("[figure not written]") == 2
    assert r.stderr.count("File too large") == 1 and "2 figure(s) could not be written into" in r.stderr
    assert os.listdir(tmp_path / "figs") == []


def test_caption_into_a_read_only_folder_stops_before_the_work(trained, shapes_data, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    r = kit("caption", *_test_images(shapes_data, 1), "--checkpoint", trained[0], "--out", figs, read_only=[figs])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        f"cannot write the caption figures into {figs} (Read-only file system): choose another place with --out"
        in r.stderr
        and r.stdout == ""
    )


def test_caption_gives_images_of_one_name_their_own_figures(trained, shapes_data, tmp_path):
    """a/img.jpg, b/img.jpg and a/img.png all used to be saved as img.caption.png: one figure remained."""
    from PIL import Image

    first, second = _test_images(shapes_data, 2)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    shutil.copy(first, tmp_path / "a" / "img.jpg")
    shutil.copy(second, tmp_path / "b" / "img.jpg")
    Image.open(second).save(tmp_path / "a" / "img.png")
    images = [tmp_path / "a" / "img.jpg", tmp_path / "b" / "img.jpg", tmp_path / "a" / "img.png"]
    r = kit("caption", *images, "--checkpoint", trained[0], "--beam-size", "1", "--out", tmp_path / "figs")
    assert r.returncode == 0, r.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == ["a_img.jpg.caption.png", "a_img.png.caption.png", "b_img.jpg.caption.png"]
    for image, name in zip(images, ("a_img.jpg", "b_img.jpg", "a_img.png")):
        assert f"{image}: " in r.stdout and f"[{tmp_path / 'figs' / name}.caption.png]" in r.stdout
    assert "3 images share a file name" in r.stderr


# ------------------------------------------------------------------------------------------- 10: unchecked values
@pytest.mark.parametrize(
    "args,message",
    [
        (["test", "--beam-size", "0"], "argument --beam-size: 0 is not allowed: it must be an integer >= 1"),
        (["test", "--beam-size", "-1"], "argument --beam-size: -1 is not allowed"),
        (["test", "--max-images", "0"], "argument --max-images: 0 is not allowed: it must be an integer >= 1"),
        (["test", "--max-images", "-5"], "argument --max-images: -5 is not allowed"),
        (["test", "--device", "gpu"], "argument --device: 'gpu' is not allowed: it must be a device PyTorch knows"),
        (["caption", "x.jpg", "--device", "gpu"], "argument --device: 'gpu' is not allowed"),
        (
            ["caption", "x.jpg", "--length-penalty", "inf"],
            "argument --length-penalty: inf is not allowed: it must be a number >= 0",
        ),
        (["caption", "x.jpg", "--beam-size", "0"], "argument --beam-size: 0 is not allowed"),
    ],
)
def test_test_and_caption_arguments_are_checked_before_anything_loads(args, message, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "captioning", *args, "--checkpoint", str(tmp_path / "none.pth.tar")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "argument --batch-size: 0 is not allowed: it must be an integer >= 1"),
        (["--lr", "-1"], "argument --lr: -1 is not allowed: it must be a number > 0"),
        (["--epochs", "0"], "argument --epochs: 0 is not allowed: it must be an integer >= 1"),
    ],
)
def test_pretrain_arguments_are_checked(args, message, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "captioning",
            "pretrain-encoder",
            "--data-folder",
            str(tmp_path),
            "--data-name",
            "x",
            "--out",
            str(tmp_path / "enc.pth"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "enc.pth").exists()


def test_pretrain_encoder_refuses_zero_epochs_instead_of_writing_an_untrained_encoder(shapes_data, tmp_path):
    from captioning.data.pretrain import pretrain_encoder

    for kw, message in (
        (dict(epochs=0), "epochs = 0 is not allowed: epochs must be an integer >= 1"),
        (dict(batch_size=0), "batch_size = 0 is not allowed"),
        (dict(lr=-1), "lr = -1 is not"),
    ):
        with pytest.raises(KitError, match=message):
            pretrain_encoder(shapes_data.data_folder, shapes_data.data_name, tmp_path / "enc.pth", **kw)
    assert not (tmp_path / "enc.pth").exists()


@pytest.mark.parametrize(
    "setting,message",
    [
        ("device=gpu", "setting device = 'gpu' is not allowed: device must be a device PyTorch knows"),
        (
            "seed=99999999999999999999",
            "seed = 99999999999999999999 is not allowed: seed must be an integer >= 0 and <= 4294967295",
        ),
        ("embed_dim=100000000", "embed_dim = 100000000 is not allowed: embed_dim must be an integer >= 1 and <= 8192"),
        (
            "encoded_image_size=1000",
            "encoded_image_size = 1000 is not allowed: encoded_image_size must be an integer >= 1 and <= 64",
        ),
        ("data_name=../d/x", "data_name = '../d/x' is not allowed: data_name must be a plain name without /"),
    ],
)
def test_train_settings_out_of_range_stop_at_once(setting, message, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "captioning", "train", setting, f"output_dir={tmp_path / 'o'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_library_calls_check_their_values():
    from captioning.config import make_cfg
    from captioning.decoding import beam_search
    from captioning.evaluation.evaluate import evaluate, iter_captions
    from captioning.notebooks import check_parameters

    with pytest.raises(KitError, match="setting length_penalty = inf is not allowed"):
        make_cfg(device="cpu", length_penalty=float("inf"))
    with pytest.raises(KitError, match="beam_size = 0 is not allowed: beam_size must be an integer >= 1"):
        beam_search(None, torch.zeros(1, 4, 8), {"<start>": 1, "<end>": 2}, beam_size=0)
    with pytest.raises(KitError, match="length_penalty must be a number >= 0"):
        beam_search(None, torch.zeros(1, 4, 8), {"<start>": 1, "<end>": 2}, length_penalty=float("inf"))
    with pytest.raises(KitError, match="setting device = 'gpu' is not allowed"):
        evaluate("none.pth.tar", device="gpu")
    with pytest.raises(KitError, match="max_images = -5 is not allowed"):
        evaluate("none.pth.tar", device="cpu", max_images=-5)
    with pytest.raises(KitError, match="setting device = 'gpu' is not allowed"):
        next(iter_captions("none.pth.tar", ["x.jpg"], device="gpu"))
    with pytest.raises(KitError, match="parameter device = 'gpu' is not allowed: device must be a device PyTorch"):
        check_parameters({"device": "gpu"})  # the notebooks' parameters cell


def _karpathy(shapes_data, tmp_path, edit):
    data = json.loads(shapes_data.karpathy_json.read_text())
    edit(data["images"])
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def _prepare(shapes_data, json_path, out, **kw):
    from captioning.data.prepare import create_input_files

    return create_input_files(
        "shapes",
        json_path,
        shapes_data.karpathy_json.parent,
        **{"captions_per_image": 5, "min_word_freq": 1, "output_folder": out, "image_size": 64, "workers": 1, **kw},
    )


def test_a_split_that_is_a_list_is_named(shapes_data, tmp_path):
    path = _karpathy(shapes_data, tmp_path, lambda images: images[3].update(split=["train"]))
    with pytest.raises(
        KitError,
        match=r"record 3 \(filename .*\) of \"images\" in .* has split \['train'\]; "
        r"expected one of",
    ):
        _prepare(shapes_data, path, tmp_path / "out")


def test_a_min_word_freq_that_keeps_no_word_is_refused(shapes_data, tmp_path):
    with pytest.raises(
        KitError,
        match=r"min_word_freq = 100000 keeps no word of the training captions \(the most "
        r"frequent, '\w+', occurs \d+ times.*Lower --min-word-freq",
    ):
        _prepare(shapes_data, shapes_data.karpathy_json, tmp_path / "out", min_word_freq=100000)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- 11: literal special tokens
def test_literal_special_tokens_in_a_caption_become_unk(shapes_data, tmp_path, capsys):
    from captioning.data.prepare import encode_caption

    def edit(images):
        train = [r for r in images if r["split"] == "train"]
        for r in train:  # every caption of every training image, so that whichever 5 are drawn hold them
            for s in r["sentences"]:
                s["tokens"] = ["a", "<end>", "b", "<pad>", "<start>"] + s["tokens"]

    wm = {"<pad>": 0, "a": 1, "b": 2, "<unk>": 3, "<start>": 4, "<end>": 5}
    assert encode_caption(["a", "<end>", "b", "<pad>", "<start>"], wm, 6) == [4, 1, 3, 2, 3, 3, 5, 0]
    out = tmp_path / "out"
    s = _prepare(shapes_data, _karpathy(shapes_data, tmp_path, edit), out)
    assert "training caption(s) contain a special token" in capsys.readouterr().err
    wm = json.loads((out / f"WORDMAP_{s['data_name']}.json").read_text())
    caps = json.loads((out / f"TRAIN_CAPTIONS_{s['data_name']}.json").read_text())
    lens = json.loads((out / f"TRAIN_CAPLENS_{s['data_name']}.json").read_text())
    for c, n in zip(caps, lens):
        assert c[:6] == [wm["<start>"], wm["a"], wm["<unk>"], wm["b"], wm["<unk>"], wm["<unk>"]]
        assert c[n - 1] == wm["<end>"] and wm["<end>"] not in c[: n - 1] and wm["<pad>"] not in c[:n]


# ------------------------------------------------------------------------------------------- 8: read-only places
def _train_code(data, out, **kw):
    cfg = dict(
        data_folder=str(data),
        data_name="DATA_NAME",
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
    return f"""
        from captioning.internals.errors import KitError
        from captioning.solver import fit
        try:
            print("best", fit({cfg!r})["best_bleu4"])
        except KitError as e:
            print("error:", e)
    """


def test_a_read_only_output_dir_is_named(trained, shapes_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run_python(_train_code(trained[1], out).replace("DATA_NAME", shapes_data.data_name), read_only=[out])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        f"error: setting output_dir = '{out}': cannot write in that folder (Read-only file system); choose "
        "another output_dir" in r.stdout
    ), r.stdout


def test_training_on_a_read_only_data_folder_with_its_cache(trained, shapes_data, tmp_path):
    """The cache (and the BatchNorm statistics) built by an earlier run are used as they are; settings that need
    new statistics and so a new cache get a message (the statistics' save used to raise RuntimeError)."""
    data = trained[1]
    code = _train_code(data, tmp_path / "run").replace("DATA_NAME", shapes_data.data_name)
    r = run_python(code, read_only=[data])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1].startswith("best "), r.stdout  # trained
    code = _train_code(data, tmp_path / "run2", recalibrate_images=8).replace("DATA_NAME", shapes_data.data_name)
    r = run_python(code, read_only=[data])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (
        "error: the TRAIN feature cache" in r.stdout
        and "is not writable" in r.stdout
        and "feature_cache=False" in r.stdout
    ), r.stdout


def test_test_runs_on_a_read_only_data_folder(trained, shapes_data, tmp_path):
    """Without a feature cache the images are encoded batch by batch; the scores match the cached run's but for
    the cache's fp16 rounding."""
    from captioning.evaluation.evaluate import evaluate

    data = copy_data(shapes_data, tmp_path / "data")  # no features/ folder: nothing cached
    r = kit(
        "test",
        "--checkpoint",
        trained[0],
        "--beam-size",
        "1",
        "--data-folder",
        data,
        "--out",
        tmp_path / "scores.json",
        read_only=[data],
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "note: no feature cache can be written in" in r.stderr and not (data / "features").exists()
    cached = evaluate(trained[0], "TEST", beam_size=1, progress=False, coco=False)
    assert abs(json.loads((tmp_path / "scores.json").read_text())["bleu4"] - cached["bleu4"]) < 0.05


def test_notebook_metrics_are_read_back_and_a_failure_names_the_file(tmp_path, monkeypatch):
    import captioning.evaluation.outputs as outputs
    from captioning.notebooks import write_metrics

    path = write_metrics(tmp_path / "m.metrics.json", {"bleu4": 0.5})
    assert json.loads(Path(path).read_text()) == {"bleu4": 0.5}
    real_open = open

    def lossy_open(file, mode="r", *a, **k):  # a write that reports success but never reaches the file
        fh = real_open(file, mode, *a, **k)
        if "w" in mode:
            fh.write = lambda text: len(text)
        return fh

    monkeypatch.setattr(outputs, "open", lossy_open, raising=False)
    with pytest.raises(KitError, match=r"cannot write .*m\.metrics\.json: the file read back differs"):
        write_metrics(tmp_path / "m.metrics.json", {"bleu4": 0.7})
    assert json.loads(Path(path).read_text()) == {"bleu4": 0.5}  # the earlier file as it was
