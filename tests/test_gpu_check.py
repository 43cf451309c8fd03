"""benchmarks/gpu_check.py: every step of the prepared GPU check at tiny sizes on the CPU (``--dry-run``), run the
way the GPU machine runs it — from a copy of the repository's files, with the kit *not* installed (no editable
install, no entry points: a new venv whose PYTHONPATH holds a view of this venv's site-packages without the kit's
own files) — so that the script cannot rot between the sessions that are lent a GPU. Also the
``--prepare-device`` commands (built, not run: no download in a test) and the kit's import without nltk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
import gpu_check_setup  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def _plain_checkout(dest):
    """The repository's files (``git ls-files``, as a fresh clone holds them, with this working tree's contents)
    copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _python_without_the_kit(tmp):
    """An interpreter that sees the venv's packages but not the kit: a new venv without pip (its own site-packages
    empty) and, for PYTHONPATH, a folder of links to every entry of this venv's site-packages except what installs
    the kit (the editable finder and its .pth, the kit's dist-info with the entry points). Jupyter kernels and
    torchrun's processes started with its ``sys.executable`` see the same."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp / "site"
    view.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if (
            name.endswith(".pth")
            or "__editable__" in name
            or (name.startswith("captioning") and name.endswith((".dist-info", ".egg-link")))
        ):
            continue
        (view / entry.name).symlink_to(entry)
    return venv / "bin" / "python", view


def test_gpu_check_dry_run_from_a_copy_without_the_kit_installed(tmp_path):
    repo = _plain_checkout(tmp_path / "repo")
    python, site = _python_without_the_kit(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("CAPTIONING_PLUGINS", None)
    # the kit is not importable in this interpreter except from the copy
    probe = subprocess.run(
        [str(python), "-c", "import captioning"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "captioning" in probe.stderr
    r = subprocess.run(
        [str(python), "benchmarks/gpu_check.py", str(out), "--dry-run", "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=2400,
        cwd=repo,
        env=env,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert Path(report["captioning"]) == repo / "captioning"  # the copy's kit, not the installed one
    assert report["preflight"]["missing"] == {}
    assert report["fast_path"] == {
        "found": "instructor.fastpath",
        "how": "registered from the checkout (no entry point installed)",
    }
    steps = report["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    assert all(s["status"] == "ok" for s in steps.values()), steps
    for name in ("train_smoke", "uncached", "rnn", "fine_tune"):
        assert steps[name]["fast_path"] == "instructor.fastpath", (name, steps[name])
    assert steps["uncached"]["folded_encoder"] is True
    assert steps["fine_tune"]["test_images"] == 10
    assert steps["caption"]["words"] > 0
    assert steps["train_step"]["speed_up"] > 0
    assert steps["nccl"]["backend"] == "gloo" and steps["papermill"]["device"] == "cpu"
    assert steps["papermill"]["fast_path"] == "the decoder's own forward (no entry point installed)"
    assert steps["torchrun"]["world"] == 2 and steps["torchrun"]["backend"] == "gloo"
    assert steps["torchrun"]["fast_path"] == "instructor.fastpath"
    assert "| coco_epoch | ok |" in (out / "gpu_check.md").read_text()
    assert (work / "data").is_dir()  # the runs' files went to the work folder


def test_prepare_device_commands():
    versions = {name: "1.0" for name in gpu_check_setup.DEVICE_WHEELS}
    reqs = gpu_check_setup.wheel_requirements(versions)
    assert reqs[0] == "nltk==1.0" and len(reqs) == len(gpu_check_setup.DEVICE_WHEELS)
    cmd = gpu_check_setup.download_command("W", reqs, python="py")
    assert cmd[:5] == ["py", "-m", "pip", "download", "--dest"]
    for flag in ("--no-deps", "--only-binary=:all:", "--python-version"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert any(cmd[i] == "--platform" and cmd[i + 1].startswith("manylinux") for i in range(len(cmd) - 1))
    assert cmd[-len(reqs) :] == reqs
    device = gpu_check_setup.device_command(out="$OUT")
    assert "pip install --no-index --no-deps" in device and f"--target {gpu_check_setup.DEVICE_TARGET}" in device
    assert f"PYTHONPATH=$PWD:{gpu_check_setup.DEVICE_TARGET} python3 benchmarks/gpu_check.py $OUT" in device
    # the image's torch (and what it brings) is used as it is: never downloaded
    on_device = {"torch", "torchvision", "numpy", "h5py", "pillow", "tqdm", "matplotlib"}
    assert not on_device & set(gpu_check_setup.DEVICE_WHEELS)
    # every listed package is installed here, so its tested version is known
    assert len(gpu_check_setup.wheel_requirements()) == len(gpu_check_setup.DEVICE_WHEELS)
    ignored = subprocess.run(["git", "check-ignore", "-q", gpu_check_setup.WHEELS_DIR + "/x.whl"], cwd=ROOT)
    assert ignored.returncode == 0, f"{gpu_check_setup.WHEELS_DIR}/ must be git-ignored"


def test_preflight_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check_setup, "STEP_MODULES", {"papermill": ("no_such_module_for_the_check",)})
    report = gpu_check_setup.Report(tmp_path, dry_run=True)
    missing = gpu_check_setup.preflight(report)
    assert list(missing) == ["no_such_module_for_the_check"]
    assert "no_such_module_for_the_check" in (tmp_path / "gpu_check.log").read_text()
    assert "--prepare-device" in (tmp_path / "gpu_check.log").read_text()


def test_the_kit_imports_without_nltk_and_bleu_names_it():
    code = (
        "import sys; sys.modules['nltk'] = None\n"
        "import captioning.solver, captioning.evaluation.evaluate, instructor.fastpath\n"
        "from captioning.evaluation.metrics import bleu\n"
        "try:\n    bleu([[['a']]], [['a']])\nexcept ImportError as e:\n    print('ImportError', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ImportError" in r.stdout and "nltk" in r.stdout
