"""Probes of a network's plasticity: dormant units (ReDo), effective rank of the last hidden features,
weight and gradient norms, and the distance travelled from a reference (initial or pretrained) state."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _activity_and_features(model: nn.Module, tokens: torch.Tensor
                           ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass through `model.features`, with forward hooks on every UnitLayer's activation."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            a = output.detach().abs().to(torch.float64).reshape(-1, output.shape[-1])
            sums[name] = sums.get(name, 0) + a.sum(0)
            counts[name] = counts.get(name, 0) + a.shape[0]
        return hook

    try:
        for layer in model.unit_layers():
            handles.append(layer.act.register_forward_hook(hook_for(layer.name)))
        with torch.no_grad(), _eval_mode(model):
            features = model.features(tokens)
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name]).cpu() for name in sums}, features


def unit_activity(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean |activation| of every unit over all positions of `tokens`, per UnitLayer (float64, CPU)."""
    return _activity_and_features(model, tokens)[0]


def dormant_fraction(activity: dict[str, torch.Tensor], tau: float) -> dict[str, float]:
    """ReDo (Sokar et al. 2023): a unit is τ-dormant when its mean |activation| divided by the layer's mean
    of those is <= τ. A layer whose units are all silent counts as entirely dormant."""
    out = {}
    for name, a in activity.items():
        mean = a.mean()
        score = a / mean if mean > 0 else torch.zeros_like(a)
        out[name] = (score <= tau).to(torch.float64).mean().item()
    return out


def effective_rank(features: torch.Tensor) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the singular values normalized to sum to 1.
    `features [N, d]` (leading axes are flattened). 0.0 for an all-zero matrix."""
    f = features.detach().to(torch.float64).reshape(-1, features.shape[-1])
    s = torch.linalg.svdvals(f)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    return math.exp(-torch.xlogy(p, p).sum().item())


def weight_norm(model: nn.Module) -> float:
    return math.sqrt(sum(p.detach().to(torch.float64).pow(2).sum().item() for p in model.parameters()))


def grad_norm(model: nn.Module) -> float:
    """L2 norm of the current gradients (0.0 when none has been computed)."""
    grads = [p.grad.detach().to(torch.float64) for p in model.parameters() if p.grad is not None]
    return math.sqrt(sum(g.pow(2).sum().item() for g in grads))


def distance_from(model: nn.Module, reference_state: dict[str, torch.Tensor]) -> float:
    """L2 distance between the model's parameters and those of `reference_state` (a state_dict)."""
    total = 0.0
    for name, p in model.named_parameters():
        if name not in reference_state:
            raise KeyError(f"parameter '{name}' is missing from the reference state")
        ref = reference_state[name]
        if ref.shape != p.shape:
            raise ValueError(f"parameter '{name}': shape {tuple(p.shape)} vs reference {tuple(ref.shape)}")
        diff = p.detach().to(torch.float64) - ref.detach().to(device=p.device, dtype=torch.float64)
        total += diff.pow(2).sum().item()
    return math.sqrt(total)


def probe_all(model: nn.Module, tokens: torch.Tensor, tau: float,
              reference_state: dict[str, torch.Tensor] | None = None, reference_name: str = "init") -> dict:
    """Flat probe dict: `dormant_frac/<layer>`, `dormant_frac` (over all units), `effective_rank`,
    `weight_norm` and, given a reference state, `distance_from_<reference_name>`."""
    activity, features = _activity_and_features(model, tokens)
    dormant = dormant_fraction(activity, tau)
    out: dict = {f"dormant_frac/{name}": frac for name, frac in dormant.items()}
    n_units = sum(a.numel() for a in activity.values())
    if n_units:
        out["dormant_frac"] = sum(dormant[k] * activity[k].numel() for k in dormant) / n_units
    out["effective_rank"] = effective_rank(features)
    out["weight_norm"] = weight_norm(model)
    if reference_state is not None:
        out[f"distance_from_{reference_name}"] = distance_from(model, reference_state)
    return out
