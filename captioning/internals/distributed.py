"""torchrun support for training: several processes, one shard of every epoch each, gradients averaged after
backward, sums and lists gathered so that every process sees the whole split's numbers. With one process (the
usual case) every method is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from captioning.internals.errors import KitError


class ProcessGroup:
    """``world`` processes (``WORLD_SIZE``), this one being ``rank`` (``RANK``); joined on construction."""

    def __init__(self, cfg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            cuda = cfg["device"].startswith("cuda")
            if cuda:
                local = int(os.environ.get("LOCAL_RANK", "0"))
                gpus = torch.cuda.device_count()
                if local >= gpus:  # NCCL refuses two processes on one GPU, after a long wait
                    raise KitError(
                        f"torchrun process LOCAL_RANK={local} has no GPU of its own: this machine has "
                        f"{gpus} GPU(s) and NCCL needs one per process. Start at most {gpus} processes "
                        f"(torchrun --nproc_per_node {max(gpus, 1)}), or train on the CPU (device=cpu: "
                        "gloo)"
                    )
                torch.cuda.set_device(local)
                cfg["device"] = f"cuda:{local}"  # each process on its own GPU
            dist.init_process_group("nccl" if cuda else "gloo")

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def average_gradients(self, modules):
        if self.world == 1:
            return
        for m in modules:
            for p in m.parameters():
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def sum(self, *values, device="cpu"):
        """Sum numbers over all processes (identity when single-process)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def gather(self, items):
        """Concatenate a list from every process, in rank order."""
        if self.world == 1:
            return items
        out = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]
