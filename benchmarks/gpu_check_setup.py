"""The GPU check's set-up (``gpu_check.py``): the wheels the GPU machine lacks (``--prepare-device``), the report
written after every step, the import pre-flight, the torch versions supported and how the fast path is found."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SUPPORTED_TORCH = ((2, 11), (2, 14))
# what each step imports beyond the kit's core (checked before the steps run)
CORE_MODULES = (
    "torch",
    "numpy",
    "h5py",
    "PIL",
    "tqdm",
    "captioning.solver",
    "captioning.evaluation.evaluate",
    "instructor.fastpath",
)
STEP_MODULES = {
    "train_smoke": ("nltk",),
    "fine_tune": ("nltk",),
    "uncached": ("nltk",),
    "rnn": ("nltk",),
    "train_step": ("train_speed",),
    "torchrun": ("nltk",),
    "papermill": ("nltk", "papermill", "nbclient", "nbformat", "jupyter_client", "ipykernel"),
}

# --prepare-device: the packages the GPU machine lacks (its image has Python 3.12, torch 2.11, torchvision, h5py,
# matplotlib, scikit-image, tqdm, pillow and their dependencies: numpy, scipy, packaging, python-dateutil, six…),
# at the versions the kit is tested with. Listed one by one and downloaded with --no-deps: a resolver would pull
# torch again. pycocoevalcap is left out: its wheel (Java jars for METEOR and SPICE) is ~100 MB, more than one
# device call carries (64 MiB), and the COCO metrics are text on the CPU, with no GPU path to check (the check
# calls test with coco=False). papermill's aiohttp requirement for Python 3.12 is not needed by what it runs here.
DEVICE_WHEELS = (
    "nltk",
    "click",
    "joblib",
    "regex",
    "defusedxml",
    "papermill",
    "entrypoints",
    "pyyaml",
    "requests",
    "charset-normalizer",
    "idna",
    "urllib3",
    "certifi",
    "tenacity",
    "nbclient",
    "nbformat",
    "fastjsonschema",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "attrs",
    "jupyter-client",
    "jupyter-core",
    "platformdirs",
    "traitlets",
    "pyzmq",
    "tornado",
    "typing-extensions",
    "ipykernel",
    "comm",
    "debugpy",
    "ipython",
    "ipython-pygments-lexers",
    "jedi",
    "parso",
    "matplotlib-inline",
    "nest-asyncio2",
    "pexpect",
    "ptyprocess",
    "prompt-toolkit",
    "wcwidth",
    "psutil",
    "pygments",
    "stack-data",
    "asttokens",
    "executing",
    "pure-eval",
)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
WHEELS_DIR = ".gpu_wheels"  # in .gitignore; what the device command installs from
DEVICE_TARGET = "/tmp/gpu_check_site"


# ------------------------------------------------------------------------------------------ --prepare-device
def wheel_requirements(versions=None):
    """``name==version`` for each of DEVICE_WHEELS, at the version installed here (``versions``: {name: version},
    for tests); a package not installed here is a KitError-like SystemExit naming it."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in DEVICE_WHEELS:
        try:
            v = versions[name] if versions is not None else version(name)
        except (PackageNotFoundError, KeyError):
            raise SystemExit(
                f"--prepare-device: the package {name} is not installed here, so its version is "
                f"unknown; install the kit (`make install` or `pip install -e .`) first"
            ) from None
        out.append(f"{name}=={v}")
    return out


def download_command(dest, requirements, python=sys.executable):
    """The ``pip download`` of the device's wheels: binary wheels for CPython 3.12 on manylinux x86_64, no
    dependency resolution (the list is explicit)."""
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--dest",
        str(dest),
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        DEVICE_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        "cp312",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in DEVICE_PLATFORMS + ("any",):
        cmd += ["--platform", platform]
    return cmd + list(requirements)


def device_command(wheels_dir=WHEELS_DIR, out="$OUT", target=DEVICE_TARGET):
    """The command for the device machine, run in the repository root: install the wheels without the network
    into ``target`` (the image's torch stays the one used), then the check with the repo root and ``target`` on
    PYTHONPATH."""
    return (
        f"python3 -m pip install --no-index --no-deps --quiet --target {target} {wheels_dir}/*.whl && "
        f"PYTHONPATH=$PWD:{target} python3 benchmarks/gpu_check.py {out}"
    )


def prepare_device(dest=ROOT / WHEELS_DIR):
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = download_command(dest, wheel_requirements())
    print("$ " + shlex.join(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode:
        raise SystemExit(f"pip download failed (exit {r.returncode}); the wheels so far are in {dest}")
    wanted = {n.lower().replace("-", "_") for n in DEVICE_WHEELS}
    got = {w.name.split("-")[0].lower() for w in dest.glob("*.whl")}
    for stale in sorted(w for w in dest.glob("*.whl") if w.name.split("-")[0].lower() not in wanted):
        stale.unlink()  # left from another list: the device installs everything in the folder
    size = sum(w.stat().st_size for w in dest.glob("*.whl"))
    missing = sorted(wanted - got)
    print(
        f"{len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}"
        + (f"; MISSING: {', '.join(missing)}" if missing else "")
    )
    print("On the device (run tool; carry the wheels folder, it is git-ignored):")
    print(f'  carry: ["{WHEELS_DIR}"]')
    print(f"  command: {device_command(out='$OUT')}")
    return 1 if missing or size > 60 * 2**20 else 0


# ------------------------------------------------------------------------------------------------ the report
class Report:
    """gpu_check.json, gpu_check.md and gpu_check.log in OUT, rewritten after every change."""

    def __init__(self, out, dry_run):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self.data = {"dry_run": dry_run, "python": sys.version.split()[0], "steps": {}}

    def say(self, msg):
        print(msg, flush=True)
        self.log.write(msg + "\n")

    def step(self, name, **fields):
        self.data["steps"].setdefault(name, {}).update(fields)
        self.write()

    def write(self):
        for name, text in (
            ("gpu_check.json", json.dumps(self.data, indent=1, default=str)),
            ("gpu_check.md", self.markdown()),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.out / name)

    def markdown(self):
        d = self.data
        head = (
            f"GPU check ({'dry run, CPU' if d['dry_run'] else d.get('gpu')}; torch {d.get('torch')}; "
            f"python {d['python']}; fast path: {d.get('fast_path', {}).get('found')})"
        )
        rows = [head, "", "| step | status | seconds | budget | numbers |", "|---|---|---|---|---|"]
        for name, r in d["steps"].items():
            nums = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("status", "seconds", "budget_s"))
            rows.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {r.get('budget_s', '')} | {nums} |")
        if d.get("preflight", {}).get("missing"):
            rows += ["", f"Missing imports: {d['preflight']['missing']}"]
        return "\n".join(rows)


def preflight(report):
    """Import every module the steps need; the missing ones, each with the error, go into the report."""
    missing = {}
    for name in dict.fromkeys(CORE_MODULES + tuple(m for ms in STEP_MODULES.values() for m in ms)):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an import can fail with more than ImportError
            missing[name] = f"{type(e).__name__}: {e}"
    report.data["preflight"] = {"missing": missing}
    for name, err in missing.items():
        report.say(f"[gpu_check] cannot import {name}: {err}")
    if missing:
        report.say(
            "[gpu_check] the missing packages travel as wheels: run `python3 benchmarks/gpu_check.py "
            "--prepare-device` on the machine with the kit, and the device command it prints"
        )
    return missing


def torch_support(torch):
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    lo, hi = SUPPORTED_TORCH
    return "supported" if lo <= (major, minor) <= hi else f"not tested (the kit supports {lo} to {hi})"


def find_fast_path():
    """The fast-path plug-in as the kit finds it; from a plain checkout (no entry point installed) the kit's own
    ``instructor.fastpath`` is registered explicitly. Returns {found, how}."""
    from captioning.internals import plugins

    fast = plugins.get("fast_path")
    if fast is not None:
        return {"found": fast.__name__, "how": "installed entry point"}
    if os.environ.get(plugins.DISABLE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return {"found": None, "how": f"{plugins.DISABLE_ENV}=off"}
    from instructor import fastpath

    plugins.register("fast_path", fastpath)
    return {"found": fastpath.__name__, "how": "registered from the checkout (no entry point installed)"}
