"""The kit against the public tutorial's procedure (``tutorial_procedure.py``), end to end as users run them:
each side is a separate process, timed from start to exit, with its peak memory (``os.wait4``).

Same prepared shapes data (300/50/50 images of 256 px), random ResNet-101, course sizes (embed, attention and
decoder 512; dropout 0.5; alpha_c 1; Adam 4e-4; batch 32 captions), one epoch (1,500 captions + validation) and
one test pass (beam 5 on the 50 TEST images, or ``--test-images``); 2 threads each.

* kit, first epoch: the feature cache and the BatchNorm recalibration are built in the run (fresh data folder);
* kit, later epochs: a second run on the same data folder (cache and statistics found);
* test: ``python -m captioning test`` (first: the TEST features encoded in the run; again: found) vs the
  tutorial's one-image-at-a-time beam search;
* "student edition": the same later epoch and test again with ``CAPTIONING_PLUGINS=off``, i.e. through the
  decoder's own ``forward`` and ``one_step`` as a student's run goes (the instructor kit's fast path is a plug-in).

Both sides train and decode the attention decoder (Show, Attend and Tell). After the table, where each kit run's
wall time goes: the phases its progress bars timed (whole seconds), and the rest (start-up, loading, metrics).

    .venv/bin/python benchmarks/peer.py [--reps 1] [--load 0] [--test-images 50] [--work DIR]

``--load N`` runs N busy processes (one thread each) during every run: the speed-ups under load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_note, timed  # noqa: E402

PY = sys.executable
NAME = "shapes_5_cap_per_img_5_min_word_freq"
SIZES = [
    "embed_dim=512",
    "attention_dim=512",
    "decoder_dim=512",
    "dropout=0.5",
    "alpha_c=1.0",
    "decoder_lr=4e-4",
    "batch_size=32",
]


STUDENT = {"CAPTIONING_PLUGINS": "off"}  # no fast path: the decoder's own forward and one_step
BAR = re.compile(r"(?:^|[\r\n])(?P<desc>[^\r\n|]*?): +\d+%\|[^\r\n]*?\[(?P<elapsed>[\d:]+)<")
LOGS = {
    "epoch: kit, first (cache built)": "kit_cold",
    "epoch: kit, later (cache found)": "kit_warm",
    "test: kit, first (cache built)": "kit_test",
    "test: kit, again (cache found)": "kit_test2",
}


def run(cmd, log, env=None):
    return timed(cmd, log, cwd=ROOT, env=env)


def prepare(work, test_images):
    raw, data = work / "raw", work / "data"
    if not (data / f"TEST_IMAGES_{NAME}.hdf5").exists():
        subprocess.run(
            [
                PY,
                "-m",
                "captioning",
                "shapes",
                "--out",
                str(raw),
                "--n-train",
                "300",
                "--n-val",
                "50",
                "--n-test",
                str(test_images),
                "--image-size",
                "256",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                PY,
                "-m",
                "captioning",
                "prepare",
                "--dataset",
                "shapes",
                "--karpathy-json",
                str(raw / "dataset_shapes.json"),
                "--image-folder",
                str(raw),
                "--output-folder",
                str(data),
                "--image-size",
                "256",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return data


def one_rep(work, data, rep):
    rows = {}
    ck = work / f"tutorial_{rep}.pth"
    tut = [
        PY,
        "benchmarks/tutorial_procedure.py",
        "--data-folder",
        str(data),
        "--data-name",
        NAME,
        "--checkpoint",
        str(ck),
        "--threads",
        "2",
    ]
    rows["epoch: tutorial"] = run([*tut[:2], "train", *tut[2:]], work / f"tut_train_{rep}.log")
    shutil.rmtree(data / "features", ignore_errors=True)  # the kit's first run builds its cache
    kit = [
        PY,
        "-m",
        "captioning",
        "train",
        f"data_folder={data}",
        f"data_name={NAME}",
        "decoder=attention",
        "encoder=resnet101",
        "encoder_weights=None",
        "epochs=1",
        *SIZES,
    ]
    rows["epoch: kit, first (cache built)"] = run(
        [*kit, f"output_dir={work / f'kit_cold_{rep}'}"], work / f"kit_cold_{rep}.log"
    )
    rows["epoch: kit, later (cache found)"] = run(
        [*kit, f"output_dir={work / f'kit_warm_{rep}'}"], work / f"kit_warm_{rep}.log"
    )
    rows["epoch: kit, later, student edition"] = run(
        [*kit, f"output_dir={work / f'kit_student_{rep}'}"], work / f"kit_student_{rep}.log", STUDENT
    )
    rows["test: tutorial"] = run([*tut[:2], "eval", *tut[2:], "--beam-size", "5"], work / f"tut_eval_{rep}.log")
    best = next((work / f"kit_warm_{rep}").glob("BEST_checkpoint_*.pth.tar"))
    test = [PY, "-m", "captioning", "test", "--checkpoint", str(best), "--beam-size", "5", "--out"]
    (data / "features" / f"TEST_FEATURES_{NAME}_resnet101.hdf5").unlink(missing_ok=True)
    rows["test: kit, first (cache built)"] = run(
        [*test, str(work / f"kit_test_{rep}.json")], work / f"kit_test_{rep}.log"
    )
    rows["test: kit, again (cache found)"] = run(
        [*test, str(work / f"kit_test2_{rep}.json")], work / f"kit_test2_{rep}.log"
    )
    rows["test: kit, again, student edition"] = run(
        [*test, str(work / f"kit_test3_{rep}.json")], work / f"kit_test3_{rep}.log", STUDENT
    )
    return rows


def phases(log):
    """{progress bar: seconds} from a run's log: the elapsed time of each bar's last update."""
    found = {}
    for m in BAR.finditer(Path(log).read_text(errors="replace")):
        parts = [int(p) for p in m["elapsed"].split(":")]
        found[m["desc"].strip()] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--load", type=int, default=0, help="busy processes running beside every measured run")
    ap.add_argument("--test-images", type=int, default=50, help="TEST images of the prepared data (test passes)")
    ap.add_argument("--work", help="folder for data, checkpoints and logs (default: a temporary one)")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="peer-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"$ {' '.join(sys.argv)}\nwork folder {work}; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {a.load} busy processes beside; "
        f"{a.test_images} TEST images"
    )
    data = prepare(work, a.test_images)
    busy = [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(a.load)]
    try:
        reps = [one_rep(work, data, r) for r in range(a.reps)]
    finally:
        for p in busy:
            p.kill()
    print("\n| run | " + " | ".join(f"rep {r}: wall s / peak MB" for r in range(a.reps)) + " |")
    print("|---|" + "---|" * a.reps)
    for name in reps[0]:
        print(f"| {name} | " + " | ".join(f"{r[name][0]:.1f} / {r[name][1]:.0f}" for r in reps) + " |")
    print("\n| speed-up (tutorial wall / kit wall) | " + " | ".join(f"rep {r}" for r in range(a.reps)) + " |")
    print("|---|" + "---|" * a.reps)
    for label, tut, kit in (
        ("first epoch", "epoch: tutorial", "epoch: kit, first (cache built)"),
        ("later epochs", "epoch: tutorial", "epoch: kit, later (cache found)"),
        ("later epochs, student edition", "epoch: tutorial", "epoch: kit, later, student edition"),
        ("first test pass", "test: tutorial", "test: kit, first (cache built)"),
        ("later test passes", "test: tutorial", "test: kit, again (cache found)"),
        ("later test passes, student edition", "test: tutorial", "test: kit, again, student edition"),
    ):
        print(f"| {label} | " + " | ".join(f"{r[tut][0] / r[kit][0]:.1f}x" for r in reps) + " |")
    print("\nwhere the kit's wall time goes (rep 0; progress bars in whole seconds):")
    for name, stem in LOGS.items():
        bars = phases(work / f"{stem}_0.log")
        wall = reps[0][name][0]
        print(
            f"- {name}, {wall:.1f} s: "
            + ", ".join(f"{k} {v} s" for k, v in bars.items())
            + f"; the rest (start-up, loading, metrics, writing) {wall - sum(bars.values()):.1f} s"
        )
    print("\n" + load_note())


if __name__ == "__main__":
    main()
