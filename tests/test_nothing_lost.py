"""Nothing lost (issue 28): a command either does its whole job or leaves every earlier result as it was, and says
what happened in one message that names the file, the value and what to do.

In the style of ``test_reliability.py``: kills are injected (a child that SIGKILLs itself at a chosen point), a
full disk is a simulated ``ENOSPC`` from the file the kit writes to. Tiny shapes data and the shapes_cnn encoder;
one finished 2-epoch run is trained once per module and copied by the tests that need one.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
import torch
from test_reliability import cfg_for, copy_data, run_child

import captioning.checkpoints as checkpoints
import captioning.internals.atomic as atomic
from captioning.checkpoints import CHECKSUM, load_checkpoint, save_checkpoint
from captioning.data.prepare import create_input_files
from captioning.internals.atomic import write_json
from captioning.internals.errors import KitError
from captioning.solver import Trainer, fit


@pytest.fixture(scope="module")
def finished(shapes_data, tmp_path_factory):
    """A finished 2-epoch run: (its folder, fit's result). Copy it before changing anything in it."""
    out = tmp_path_factory.mktemp("finished")
    return out, fit(cfg_for(shapes_data, out, epochs=2))


def copy_run(finished, dst):
    shutil.copytree(finished[0], dst)
    return dst


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------ 1: a finished run is never replaced
def test_a_rerun_never_replaces_a_finished_run(shapes_data, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = contents(run)
    with pytest.raises(KitError) as e:  # the issue: the same command with epochs=1 left BEST at 0.000
        fit(cfg_for(shapes_data, run, epochs=1))
    msg = str(e.value)
    assert "already holds a longer run" in msg and "2 of 2 epochs done" in msg and "epochs = 1" in msg
    assert "another output_dir" in msg and "overwrite=True" in msg
    with pytest.raises(KitError) as e:  # other settings: another run, refused naming the setting and the ways out
        fit(cfg_for(shapes_data, run, epochs=2, decoder_lr=1e-3))
    msg = str(e.value)
    assert "decoder_lr = 0.003 there, 0.001 now" in msg
    assert all(way in msg for way in ("checkpoint=", "another output_dir", "overwrite=True"))
    capsys.readouterr()
    res = fit(cfg_for(shapes_data, run, epochs=2))  # the same command again: nothing to do, and it says so
    assert "already holds this run with all its 2 epochs" in capsys.readouterr().out
    assert [h["epoch"] for h in res["history"]] == [0, 1] and res["best_checkpoint"]
    assert contents(run) == before  # every file as it was
    res = fit(cfg_for(shapes_data, run, epochs=1, overwrite=True))  # asked for: replaced
    assert [h["epoch"] for h in res["history"]] == [0]
    assert load_checkpoint(res["checkpoint"])["epoch"] == 0


def test_changed_model_code_is_another_run(shapes_data, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    ck = load_checkpoint(str(next(run.glob("checkpoint_*"))))
    ck["code_id"] = "0" * 16  # as if models.py (a student's TODOs) changed since that run
    save_checkpoint(ck, str(next(run.glob("checkpoint_*"))))
    with pytest.raises(KitError, match=r"the model code \(captioning/models.py or encoder.py"):
        fit(cfg_for(shapes_data, run, epochs=3))


# ------------------------------------------- 1 + 3: killed mid-save, the same command resumes and repairs BEST
def test_a_run_killed_while_writing_best_resumes_and_repairs_best(shapes_data, tmp_path, capsys):
    """Killed between the latest checkpoint and BEST (here: while BEST's temporary file is being written) of an
    epoch that improved: BEST held the epoch before, and re-running the same command started again at epoch 0."""
    out = tmp_path / "run"
    cfg = cfg_for(shapes_data, out, epochs=3, best_window=1)  # the course's rule: each better epoch is BEST at once
    child = run_child(f"""
        import os, signal, torch
        import captioning.checkpoints as c
        from captioning.solver import Trainer, fit
        real_validate = Trainer.validate
        def validate(self, epoch=0, **k):  # every epoch better than the last: each one is written as BEST
            return dict(real_validate(self, epoch, **k), bleu4=0.1 * (epoch + 1))
        Trainer.validate = validate
        saves, real_save = [], torch.save
        def save(obj, f):
            saves.append(isinstance(obj, dict) and "epoch" in obj)  # a checkpoint, not BatchNorm statistics
            if sum(saves) == 4 and saves[-1]:  # epoch 1: the latest written, BEST half written when the kill comes
                f = open(f, "wb") if isinstance(f, str) else f
                f.write(b"half a checkpoint" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)
        c.torch.save = save
        fit({cfg!r})
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    best = next(out.glob("BEST_*"))
    assert load_checkpoint(str(best))["epoch"] == 0  # stale: the history of the latest marks epoch 1 best
    stale = [p.name for p in out.glob(".BEST_*.tmp")]
    assert stale
    capsys.readouterr()
    res = fit(cfg)  # the same command again
    said = capsys.readouterr().out
    assert "resuming the run in" in said and "at epoch 2 of 3" in said
    assert f"repaired {best}" in said and "removed" in said
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]  # continued, not started again
    assert [h["best"] for h in res["history"]][:2] == [True, True]
    kept = load_checkpoint(res["best_checkpoint"])
    best_epoch = max(h["epoch"] for h in res["history"] if h["best"])
    assert kept["epoch"] == best_epoch and kept["history"][-1] == res["history"][best_epoch]
    assert not list(out.glob(".*.tmp*"))


def test_continuing_into_a_new_output_dir_brings_its_best(shapes_data, finished, tmp_path, monkeypatch):
    """The issue: resuming into a new output_dir printed a BEST path that did not exist (no epoch improved)."""
    folder, first = finished
    real = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: dict(real(self, *a, **k), bleu4=0.0))
    res = fit(cfg_for(shapes_data, tmp_path / "new", epochs=3, checkpoint=first["checkpoint"]))
    assert res["best_checkpoint"] and os.path.isfile(res["best_checkpoint"])
    assert Path(res["best_checkpoint"]).parent == tmp_path / "new"
    want = max(h["epoch"] for h in res["history"] if h["best"])
    assert load_checkpoint(res["best_checkpoint"])["epoch"] == want


def test_checkpoint_from_elsewhere_does_not_replace_the_run_in_output_dir(shapes_data, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    other = tmp_path / "other.pth.tar"
    shutil.copy(finished[1]["checkpoint"], other)
    before = contents(run)
    with pytest.raises(KitError, match="already holds another run .* would replace it.*overwrite=True"):
        fit(cfg_for(shapes_data, run, epochs=3, checkpoint=str(other)))
    assert contents(run) == before


# ---------------------------------------------------------------------------- 7: a damaged checkpoint is refused
def _flip_tensor_bytes(path, n=2000):
    """Flip ``n`` bytes in the middle of the largest tensor of a checkpoint (its zip entries are stored raw)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + k : info.header_offset + k + 2], "little") for k in (26, 28)
    )
    start = info.header_offset + 30 + name_len + extra_len + (info.file_size - n) // 2
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def test_a_damaged_checkpoint_is_refused_naming_it(finished, tmp_path, capsys):
    path = tmp_path / "BEST.pth.tar"
    shutil.copy(finished[1]["best_checkpoint"], path)
    _flip_tensor_bytes(path)
    torch.load(path, weights_only=True)  # torch itself loads it: the kit used to caption "a with a a a a"
    with pytest.raises(KitError, match=f"checkpoint '{path}' is damaged: its weights do not match the checksum"):
        load_checkpoint(str(path))
    ck = torch.load(finished[1]["best_checkpoint"], weights_only=True)
    del ck[CHECKSUM]  # a checkpoint of the kit before checksums: loaded, with a warning
    torch.save(ck, tmp_path / "old.pth.tar")
    load_checkpoint(str(tmp_path / "old.pth.tar"))
    assert "has no checksum" in capsys.readouterr().err


# ------------------------------------------------------------- 9 + verify: a full disk, a disk that writes wrong
class _Disk:
    """A binary file that fails as a full disk does (``ENOSPC`` after ``room`` bytes), or silently flips a byte."""

    def __init__(self, path, mode, room=None, flip=False):
        self.fh, self.room, self.flip, self.n = open(path, mode), room, flip, 0

    def write(self, data):
        data = bytes(data)
        if self.room is not None and self.n + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.flip and len(data) > 1000:
            data = data[:500] + bytes([data[500] ^ 1]) + data[501:]
            self.flip = False
        self.n += len(data)
        return self.fh.write(data)

    def flush(self):
        self.fh.flush()

    def fileno(self):
        return self.fh.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_a_full_disk_while_writing_a_checkpoint_is_a_message_and_keeps_the_old_one(finished, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    shutil.copy(finished[1]["checkpoint"], path)
    before = path.read_bytes()
    ck = load_checkpoint(str(path))
    monkeypatch.setattr(checkpoints, "open", lambda p, m: _Disk(p, m, room=100_000), raising=False)
    with pytest.raises(KitError) as e:
        save_checkpoint(ck, str(path))
    msg = str(e.value)
    assert f"no space left on {tmp_path} while writing checkpoint.pth.tar" in msg and "MB free" in msg, msg
    assert "choose another output_dir" in msg and "still holds the previous checkpoint" in msg
    assert "unexpected pos" not in msg
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth.tar"]
    monkeypatch.setattr(checkpoints, "open", lambda p, m: _Disk(p, m, flip=True), raising=False)
    with pytest.raises(KitError, match="did not read back as written"):  # checked before the rename
        save_checkpoint(ck, str(path))
    assert path.read_bytes() == before


def test_metrics_are_checked_before_the_rename_and_a_full_disk_is_a_message(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json({"bleu4": 0.5}, path)
    monkeypatch.setattr(atomic, "open", lambda p, m, **k: _TextDisk(p, m, **k), raising=False)
    with pytest.raises(KitError, match=f"no space left on {tmp_path} while writing m.json"):
        write_json({"bleu4": 0.25, "pad": "x" * 10_000}, path)
    assert path.read_text() == '{\n "bleu4": 0.5\n}' and [p.name for p in tmp_path.iterdir()] == ["m.json"]


class _TextDisk:
    """A text file on a disk with 1000 bytes of room: reading works, writing more fails with ``ENOSPC``."""

    def __init__(self, path, mode, **kw):
        self.fh, self.writing = open(path, mode, **kw), "w" in mode

    def write(self, text):
        if self.writing and len(text) > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(text)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


# ------------------------------------------------------------------- 4: prepare never replaces data under train
def test_prepare_stops_while_a_training_run_reads_its_data(shapes_data, tmp_path, monkeypatch):
    """The issue: prepare replaced the data folder under a running train (which then finished on new captions with
    the old word map)."""
    data = copy_data(shapes_data, tmp_path / "data")
    before = contents(data)
    errors = []
    real = Trainer.train_epoch

    def train_epoch(self, epoch):  # a prepare into the same folder while the run trains
        try:
            create_input_files(
                "shapes",
                shapes_data.karpathy_json,
                shapes_data.karpathy_json.parent,
                captions_per_image=5,
                min_word_freq=1,
                output_folder=data,
                image_size=64,
                seed=1,
                workers=1,
            )
        except KitError as e:
            errors.append(str(e))
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    fit(cfg_for(shapes_data, tmp_path / "run", data_folder=str(data), feature_cache=False))
    assert (
        len(errors) == 1
        and f"the data '{shapes_data.data_name}' in {data} is in use by another run (pid {os.getpid()}" in errors[0]
    )
    assert {k: v for k, v in contents(data).items() if not k.startswith(".lock")} == {
        k: v for k, v in before.items() if not k.startswith(".lock")
    }


def test_training_waits_for_a_prepare_that_is_writing(tmp_path, capsys):
    import threading

    from captioning.internals.locks import DATA_LOCK, data_lock, folder_lock

    held, release = threading.Event(), threading.Event()

    def prepare():  # holds the data exclusively, as create_input_files does while it writes
        with folder_lock(tmp_path, DATA_LOCK.format(data_name="d"), wait=False):
            held.set()
            release.wait(30)

    t = threading.Thread(target=prepare)
    t.start()
    held.wait(30)
    threading.Timer(1.0, release.set).start()
    with data_lock(tmp_path, "d"):  # waits until the prepare is done
        assert release.is_set()
    t.join()
    assert (
        f"waiting for a prepare run to finish writing 'd' in {tmp_path} (pid {os.getpid()}" in capsys.readouterr().err
    )


# ------------------------------------------------------------------------ 11: the notebooks' message comes first
def test_a_missing_checkpoint_message_comes_alone(tmp_path):
    from captioning.notebooks import checkpoint_decoder

    with pytest.raises(KitError, match="does not exist") as e:
        checkpoint_decoder(str(tmp_path / "nope.pth.tar"))
    assert e.value.__context__ is None  # no "During handling of the above exception" traceback before it
