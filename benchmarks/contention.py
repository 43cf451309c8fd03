"""Runs that share the cores: the notebooks' training recipe solo, then 2 and 4 copies at once, each copy a separate
process, with the kit's CPU threads (``captioning/internals/threads.py``: picked at start, lowered while others compete,
OpenMP's waits spinning 10,000 rounds, then sleeping) and with the notebooks' settings before issue 30 (2 fixed threads, OpenMP's spinning waits).

    .venv/bin/python benchmarks/contention.py [--copies 1 2 4] [--images 240] [--sides kit,fixed2-spin] [--work DIR]

Each copy is train1's recipe as the notebook runs it (``nb.setup(threads=…)``, then ``solver.fit(cfg)`` with the
recipe's decoder without attention) for one short epoch: the first ``--images`` TRAIN images (12 per batch) and
greedy validation on ``--val-images``. The data (the shapes generator at the recipe's 128 px, fewer images), its
shapes_cnn encoder (pretrained one epoch instead of four: the same network, as fast) and the feature cache are made
once beforehand, untimed, as a student's first run leaves them. The copies of a round import and build their
models, then start ``fit`` together; each reports its ``fit`` wall time, shown as a ratio to the solo run of the
same side. On M idle cores N equal copies ideally take about max(1, N/M)x solo each; issue 30's target on 2 cores:
2 copies <= 2.5x, 4 copies <= 5x. Other sides (``--sides``): ``fixed2`` (2 threads, the kit's short spin), ``fixed1``,
``kit-spin`` (the kit's threads with OpenMP's default spinning), ``kit-passive`` and ``fixed2-passive`` (never
spinning: the kit's default before), ``fixed2-spin10k`` (the same as ``fixed2``, named as measured before), and
``tutorial``: the public tutorial's procedure (``tutorial_procedure.py``: a random ResNet-101 run on every caption's
image, the course's sizes) for one epoch over the same TRAIN images plus its validation, with torch's and OpenMP's
defaults — issue 30's comparison; its solo time is its own, far longer than the kit's.

Noise: every other process on the machine competes too; the load average is printed before and after each round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, load_note, table  # noqa: E402

NAME = "shapes_5_cap_per_img_5_min_word_freq"
# side -> (the notebooks' threads parameter, environment: None removes the variable before torch loads)
SIDES = {
    "kit": (None, {}),  # the kit's defaults: threads picked and adapted, GOMP_SPINCOUNT=10000
    "fixed2-spin": (2, {"GOMP_SPINCOUNT": "300000"}),  # the notebooks before issue 30: 2 threads, OpenMP's spinning
    "fixed2": (2, {}),  # 2 fixed threads with the kit's short spin
    "kit-passive": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "fixed2-passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "fixed1": (1, {}),
    "kit-spin": (None, {"GOMP_SPINCOUNT": "300000"}),  # the kit's threads with OpenMP's default spinning
    "fixed2-spin10k": (2, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    # the public tutorial's procedure (tutorial_procedure.py: per-caption encoding with a random ResNet-101, course
    # sizes), with torch's and OpenMP's defaults as its users run it: 2 threads on 2 cores, spinning waits
    "tutorial": (2, {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": None}),
}


def load_line():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(work, a):
    """The data, encoder and feature cache (untimed); returns the copies' cfg."""
    import captioning.notebooks as nb
    from captioning.data.pretrain import STRIDE, ensure_encoder
    from captioning.data.recipe import RECIPE, decoder_cfg
    from captioning.solver import fit

    nb.setup(threads=2)
    data = nb.ensure_data(str(work / "data"), NAME, a.train_images, a.val_images, 10, RECIPE["image_size"], 0)
    # the recipe's encoder (nb.encoder_settings) pretrained for one epoch instead of 4: its speed is the same
    pre = ensure_encoder(data["data_folder"], NAME, 1, seed=0, images=a.train_images, progress=False)
    encoder = {
        "encoder": "shapes_cnn",
        "encoder_weights": pre["path"],
        "encoded_image_size": data["image_size"] // STRIDE,
    }
    cfg = {
        **decoder_cfg(RECIPE, "rnn"),
        "data_folder": data["data_folder"],
        "data_name": NAME,
        "attention": False,
        **encoder,
        "workers": 0,
        "fine_tune_encoder": False,
        "print_freq": 0,
        "device": "cpu",
        "overwrite": True,
        "epochs": 1,
        "max_train_images": a.images,
        "max_val_images": a.val_images,
        "progress": False,
    }
    fit(dict(cfg, output_dir=str(work / "warmup")), progress=False)  # builds the feature caches
    return cfg


def child(a):
    """One copy: set up as the notebook does, say ready, wait for the go line, run fit, print a JSON line."""
    cfg = json.loads(a.child)
    import captioning.notebooks as nb  # sets the kit's GOMP_SPINCOUNT default (torch not loaded yet)

    for key in json.loads(os.environ.get("CONTENTION_UNSET", "[]")):  # a side without it
        os.environ.pop(key, None)
    from captioning.internals import threads
    from captioning.solver import fit

    threads_wanted, tutorial_images = cfg.pop("threads"), cfg.pop("tutorial_images")
    if cfg.pop("procedure") == "tutorial":
        return child_tutorial(cfg, threads_wanted, tutorial_images)
    nb.setup(threads=threads_wanted)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.monotonic(), time.process_time()
    fit(cfg, progress=False)
    seconds, cpu = time.monotonic() - t0, time.process_time() - c0
    gov = threads.governor()
    print("RESULT " + json.dumps({"seconds": seconds, "cpu": cpu, "history": gov.history if gov else None}), flush=True)


def child_tutorial(cfg, threads_wanted, images):
    """One copy of the tutorial's procedure: one epoch over the first ``images`` TRAIN images' captions and its
    teacher-forced validation, as ``tutorial_procedure.py train`` runs it."""
    import torch
    import tutorial_procedure

    args = argparse.Namespace(
        data_folder=cfg["data_folder"],
        data_name=cfg["data_name"],
        checkpoint=os.path.join(cfg["output_dir"], "tutorial.pth"),
        epochs=1,
        embed_dim=512,
        attention_dim=512,
        decoder_dim=512,
        workers=1,
        max_captions=5 * images,
    )
    os.makedirs(cfg["output_dir"], exist_ok=True)
    torch.set_num_threads(threads_wanted)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.monotonic(), time.process_time()
    tutorial_procedure.train(args)
    seconds, cpu = time.monotonic() - t0, time.process_time() - c0
    print("RESULT " + json.dumps({"seconds": seconds, "cpu": cpu, "history": None}), flush=True)


def child_env(side_env):
    env = {k: v for k, v in os.environ.items() if k not in side_env}
    env.update(
        {k: v for k, v in side_env.items() if v is not None},
        TQDM_DISABLE="1",
        CONTENTION_UNSET=json.dumps([k for k, v in side_env.items() if v is None]),
    )
    return env


def round_of(work, side, copies, cfg, limit):
    """Start ``copies`` children of ``side``, let them run fit together; returns their result dicts. A copy still
    running ``limit`` seconds after the start is stopped: its "seconds" is None."""
    threads, env = SIDES[side]
    procs = []
    for i in range(copies):
        out = work / f"{side}-{copies}-{i}"
        procedure = "tutorial" if side == "tutorial" else "kit"
        arg = json.dumps(dict(cfg, output_dir=str(out), threads=threads, procedure=procedure))
        log = open(work / f"{side}-{copies}-{i}.log", "w+")
        # each copy in its own session, as separate users' notebooks are: Linux's autogroups share the CPU per
        # session, so copies in this script's session would split one share among themselves
        p = subprocess.Popen(
            [sys.executable, __file__, "--child", arg],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
            env=child_env(env),
        )
        procs.append((p, log))
    for p, _ in procs:  # all imported and set up
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"a copy of {side} did not start: {line!r}; see {work}")
    for p, _ in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    t_go = time.monotonic()
    results = []
    for p, log in procs:
        try:
            out, _ = p.communicate(timeout=max(0.1, limit - (time.monotonic() - t_go)))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the copy's own session: it and anything it started
            p.wait()
            results.append({"seconds": None, "cpu": None, "history": None})
            continue
        if p.returncode != 0:
            log.seek(0)
            raise SystemExit(f"a copy of {side} failed:\n{log.read()[-3000:]}")
        (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4], help="copies per round; 1 (solo) first")
    ap.add_argument("--sides", default="kit,fixed2-spin", help=f"comma-separated, of {', '.join(SIDES)}")
    ap.add_argument("--images", type=int, default=240, help="TRAIN images each copy trains on (12 per batch)")
    ap.add_argument("--train-images", type=int, default=240, help="TRAIN images generated (and pretrained on)")
    ap.add_argument("--val-images", type=int, default=24)
    ap.add_argument(
        "--tutorial-images",
        type=int,
        default=48,
        help="TRAIN images the tutorial side's copies train on (its per-caption ResNet-101 makes 240 take minutes)",
    )
    ap.add_argument(
        "--round-limit",
        type=float,
        default=120,
        help="seconds after which the copies still running are stopped and reported as '>limit'",
    )
    ap.add_argument("--work", default=None, help="data and runs (default: a temporary folder, removed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    sides = a.sides.split(",")
    unknown = [s for s in sides if s not in SIDES]
    if unknown or a.copies[0] != 1:
        raise SystemExit(f"--sides must name some of {', '.join(SIDES)} (not {unknown}); --copies must start at 1")
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="contention-")
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    print("== runs that share the cores: train1's recipe, N copies at once ==")
    print(f"command : python {' '.join(sys.argv)}")
    print(
        f"machine : {cpu_model()}, {os.cpu_count()} CPUs, load average (1/5/15 min) at start = {load_line()}",
        flush=True,
    )
    t_set = time.monotonic()
    cfg = dict(prepare(work, a), tutorial_images=a.tutorial_images)
    print(
        f"set-up (data, encoder, feature cache; untimed): {time.monotonic() - t_set:.0f} s; each copy trains on "
        f"{a.images} images ({-(-a.images // 12)} batches) and validates on {a.val_images}\n",
        flush=True,
    )
    rows = []
    for side in sides:
        solo = None
        for n in a.copies:
            t0 = time.monotonic()
            res = round_of(work, side, n, cfg, a.round_limit)
            done = sorted(r["seconds"] for r in res if r["seconds"] is not None)
            cut = len(res) - len(done)
            solo = solo or (done[0] if done else None)
            if solo is None:
                raise SystemExit(f"{side}'s solo run did not finish in --round-limit {a.round_limit} s")
            secs = " ".join([f"{s:.1f}" for s in done] + [f">{a.round_limit:.0f}"] * cut)
            ratios = " ".join([f"{s / solo:.2f}" for s in done] + [f">{a.round_limit / solo:.1f}"] * cut)
            worst = f">{a.round_limit / solo:.1f}" if cut else f"{done[-1] / solo:.2f}"
            hist = [r["history"] for r in res if r["history"]]
            used = f"{sum(r['cpu'] for r in res if r['cpu']) / sum(done):.2f}" if done else "-"
            threads = (
                (
                    f"{sorted({h[1] for x in hist for h in x})} -> {[x[-1][1] for x in hist]} "
                    f"({sum(len(x) - 1 for x in hist)} changes)"
                )
                if hist
                else "fixed"
            )
            rows.append([side, str(n), secs, ratios, worst, used, threads, load_line()])
            print(f"{side} x{n}: {secs} s (round {time.monotonic() - t0:.0f} s), load {load_line()}", flush=True)
    print()
    print(
        table(
            [
                "side",
                "copies",
                "fit s per copy",
                "ratio to solo",
                "worst",
                "CPUs used/copy (finished)",
                "threads",
                "load avg after",
            ],
            rows,
        )
    )
    print(load_note())
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
