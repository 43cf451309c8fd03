"""torchrun with 2 CPU processes (gloo) trains like one process: every training caption seen once per epoch,
BLEU over the whole validation split, one loadable checkpoint written by rank 0."""

import os
import subprocess
import sys

from captioning.checkpoints import load_checkpoint
from captioning.solver import fit


def test_torchrun_two_processes_matches_single_process(shapes_data, tmp_path):
    common = [
        f"data_folder={shapes_data.data_folder}",
        f"data_name={shapes_data.data_name}",
        "encoder_weights=None",
        "encoded_image_size=2",
        "embed_dim=16",
        "decoder_dim=24",
        "attention_dim=16",
        "batch_size=20",
        "epochs=1",
        "workers=0",
        "print_freq=0",
        "progress=False",
        "decoder=attention",
        "recalibrate_images=40",
    ]
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "captioning",
        "train",
        *common,
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = sorted(p.name for p in out.iterdir())
    assert ckpts == sorted(
        [
            "BEST_checkpoint_Attention_" + shapes_data.data_name + ".pth.tar",
            "checkpoint_Attention_" + shapes_data.data_name + ".pth.tar",
        ]
    )
    ddp = load_checkpoint(str(out / ckpts[0]))["history"][0]

    from captioning.cli import parse_overrides

    single = fit(parse_overrides(common) | {"output_dir": str(tmp_path / "one")})
    one = single["history"][0]
    assert ddp["train_captions"] == one["train_captions"] == 40 * 5  # each caption once per epoch
    assert ddp["val_images"] == one["val_images"] == 10  # BLEU over the whole validation split
    assert ddp["train_loss"] == ddp["train_loss"] and 0 < ddp["train_loss"] < 10
