"""Optional speed-ups installed beside the kit, found at run time through the ``captioning.internals.plugins`` entry-point
group. The kit's pyproject.toml declares one, ``fast_path``; the student edition's declares none and
trains and decodes with the student's own ``forward`` / ``one_step``. Nothing here names a plug-in's module.

A ``fast_path`` plug-in provides ``supports(decoder)``, ``scores(decoder, encoder_out, captions, caplens, group)``
(what ``solver.decoder_scores`` computes, reorganised) and ``beam_step(decoder, encoder_out, beam)`` (a step for
``decoding.beam_search``, or None). The solver uses it only after checking that it reproduces the decoder's own
scores (``solver.fast_path_matches``); ``beam_step`` checks itself on a probe.

``CAPTIONING_PLUGINS=off`` in the environment turns every plug-in off (what the student edition runs). A run from
a plain checkout, with no distribution installed, finds no entry point: ``register`` names a plug-in explicitly.
"""

from __future__ import annotations

import importlib
import os
import warnings
from importlib.metadata import distributions

import torch

GROUP = "captioning.plugins"
DISABLE_ENV = "CAPTIONING_PLUGINS"
_loaded = {}


def get(name):
    """The plug-in module registered as ``name``, or None (none installed, or turned off)."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return None
    if name not in _loaded:
        _loaded[name] = None
        for ep in _declared(name):
            try:
                _loaded[name] = ep.load()
                break
            except ImportError as e:  # declared but not importable here (e.g. a copy of the student package)
                warnings.warn(
                    f"plug-in '{name}' ({ep.value}) could not be imported ({e}); running without it", stacklevel=2
                )
    return _loaded[name]


def register(name, module):
    """Use ``module`` as the plug-in ``name`` in this process, as an installed entry point would declare it: for
    a run from a plain checkout, where nothing is installed (``benchmarks/gpu_check.py`` registers the kit's fast
    path this way). ``CAPTIONING_PLUGINS=off`` still turns it off."""
    _loaded[name] = module


def _declared(name):
    """The entry points ``name`` of GROUP of every installed distribution. (``entry_points()`` would keep only the
    first distribution of each name on the path, e.g. a stale ``captioning.egg-info`` in the working directory.)"""
    seen = set()
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP and ep.name == name and ep.value not in seen:
                seen.add(ep.value)
                yield ep


def reload():
    """Re-import the loaded plug-ins (after ``models.py`` was re-imported: they know its classes)."""
    for name, module in list(_loaded.items()):
        if module is not None:
            _loaded[name] = importlib.reload(module)


@torch.no_grad()
def fast_path_matches(decoder_scores, fast, decoder, encoder_out, captions, caplens, rtol=1e-4, atol=1e-5):
    """Does the plug-in ``fast`` give the decoder's own ``forward`` scores on this batch (eval mode)?
    ``decoder_scores`` is ``captioning.solver.decoder_scores`` (passed in: nothing here imports the course layer).

    Args: encoder_out (B, S, S, C); captions (B, cpi, T); caplens (B, cpi). Returns: (ok, reason).
    """
    was = decoder.training
    decoder.eval()
    try:
        ref, ref_t, ref_a = decoder_scores(decoder, encoder_out.float(), captions, caplens)
        got, got_t, got_a = decoder_scores(decoder, encoder_out.float(), captions, caplens, fast=fast)
    except Exception as e:  # a decoder of another shape: not the plug-in's to speed up
        return False, f"{type(e).__name__}: {e}"
    finally:
        decoder.train(was)
    if ref.shape != got.shape or not torch.equal(ref_t, got_t):
        return False, "different output shapes"
    if not torch.allclose(ref, got, rtol=rtol, atol=atol):
        return False, f"scores differ by up to {(ref - got).abs().max().item():.3g}"
    if (ref_a is None) != (got_a is None) or (
        ref_a is not None and not torch.allclose(ref_a.sum(dim=1), got_a.sum(dim=1), rtol=rtol, atol=atol)
    ):
        return False, "attention weights differ"
    return True, ""
