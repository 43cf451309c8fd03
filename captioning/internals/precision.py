"""Which training steps run in bf16 mixed precision (cfg ``precision``).

On a GPU the kit has always trained the decoder under bf16 autocast ("auto"). On a CPU "auto" keeps fp32, and
``precision="bf16"`` is the choice to make knowingly: where the cores multiply bf16 natively (AVX512-BF16 or AMX
on x86, as oneDNN reports it) the notebooks' epochs with the student's own code are about 1.2× faster
(``benchmarks/cpu_precision.py``), but at three seeds the attention decoder's pointing game came out at 0.80–0.83
where fp32 runs gave 0.83–0.85 (docs/results.md, *bf16 training steps on a CPU*); elsewhere bf16 is emulated and
slower than fp32. Only the training steps change: validation, beam search and the encoder's features stay fp32 on
a CPU, so the captions a checkpoint gives do not depend on the machine that decodes them.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_has_native_bf16():
    """True when oneDNN reports native bf16 arithmetic on this CPU (False when PyTorch cannot tell)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN, or the private check gone
        return False


def bf16_training(precision, device):
    """cfg ``precision`` ("auto", "fp32" or "bf16") and a ``torch.device`` → whether the training steps run under
    bf16 autocast: "auto" on a GPU only."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda"
