"""Fixes for Avalanche 0.6.0 bugs that change results, applied only while a bridge arm trains.

- Synaptic Intelligence on CPU: `SynapticIntelligencePlugin.extract_weights` stores
  `param.detach().cpu().flatten()`, which on a CUDA device is a copy but on the CPU is a *view of the
  live parameter*. The saved "old" weights, the "new" ones and the anchor θ* all alias the current
  weights, so the path integral Σ g·Δθ and the penalty (θ − θ*)² are both identically 0: SI silently
  trains like Naive. The fix stores a copy, which is what the same code does on CUDA.

Each fix is a context manager that patches and restores, so importing the bridge changes nothing in
Avalanche and code outside a bridge arm sees Avalanche as shipped.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from avalanche.training.plugins import SynapticIntelligencePlugin


@torch.no_grad()
def _extract_weights_copy(model, target, excluded_parameters):
    for name, param in SynapticIntelligencePlugin.allowed_parameters(model, excluded_parameters):
        target[name].data = param.detach().cpu().flatten().clone()


@contextmanager
def avalanche_fixes():
    original = SynapticIntelligencePlugin.__dict__["extract_weights"]
    SynapticIntelligencePlugin.extract_weights = staticmethod(_extract_weights_copy)
    try:
        yield
    finally:
        SynapticIntelligencePlugin.extract_weights = original
