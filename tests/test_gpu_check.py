"""benchmarks/gpu_check.py --dry-run: every step of the prepared GPU check runs at tiny sizes on the CPU, so the
script cannot rot between the sessions that are lent a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_step(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path), "--dry-run"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["train_smoke", "encoder", "train_step", "beam", "coco_epoch", "papermill", "torchrun"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert steps["train_step"]["fast_path"] and steps["train_step"]["speed_up"] > 0
    assert steps["torchrun"]["backend"] == "gloo" and steps["papermill"]["device"] == "cpu"
    assert "| coco_epoch | ok |" in (tmp_path / "gpu_check.md").read_text()
