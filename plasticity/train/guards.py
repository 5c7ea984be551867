"""The divergence guard every training step runs, natively and in the Avalanche bridge: NaN or Inf in the
loss or any logit stops the arm with a `DivergenceError` naming the step, the phase and the last finite
loss."""

from __future__ import annotations

import math

import torch

from plasticity.train.stopping import DivergenceError


def finiteness(loss: torch.Tensor, logits: torch.Tensor) -> tuple[float, bool]:
    """(the loss as a float, whether this process saw a NaN/Inf in the loss or the logits). One reduction
    and one host sync per step: NaN or Inf anywhere makes `probe` non-finite (x * 0 is NaN for x = ±Inf);
    only then is it worked out which one it was."""
    probe = float(loss.detach() + logits.detach().sum() * 0)
    if math.isfinite(probe):
        return probe, False
    value = float(loss.detach())
    return value, not math.isfinite(value) or not bool(torch.isfinite(logits.detach()).all())


def divergence(value: float, local: bool, step: int, phase: int | None, last_finite: float | None) -> DivergenceError:
    """The error a diverged step raises: what was non-finite, where, and the last finite loss."""
    what = "loss" if not math.isfinite(value) else "logits" if local else "loss or logits in another process"
    return DivergenceError(f"non-finite {what} at step {step}, phase {phase}; last finite loss {last_finite}")

