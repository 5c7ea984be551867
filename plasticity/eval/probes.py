"""Probes of a network's plasticity: dormant units (ReDo), effective rank of the last hidden features,
weight and gradient norms, and the distance travelled from a reference (initial or pretrained) state."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from plasticity.models.units import ActivityCapture, dormancy_scores


class ProbeForward:
    """What the probes read off one no-grad forward pass in eval mode: every hidden unit's mean |activation|
    over all positions (float64, CPU) and the last hidden features (the head's input). `recording(model)`
    captures them from whatever forward runs inside it, so the evaluator can take them from the forward
    that scores a bank's first chunk instead of running the probes' own; a model without a `head` gives no
    features that way, and `run` then passes the tokens through `model.features`."""

    def __init__(self):
        self.activity: dict[str, torch.Tensor] = {}
        self.features: torch.Tensor | None = None

    @contextmanager
    def recording(self, model: nn.Module):
        capture = ActivityCapture(model.unit_layers(), dtype=torch.float64, grad_only=False)
        head = getattr(model, "head", None)
        handle = head.register_forward_pre_hook(self._keep_features) if isinstance(head, nn.Module) else None
        capture.start()
        try:
            yield self
        finally:
            if handle is not None:
                handle.remove()
            self.activity = {name: a.cpu() for name, a in capture.take().items()}

    def _keep_features(self, _module, inputs) -> None:
        self.features = inputs[0]

    @classmethod
    def run(cls, model: nn.Module, tokens: torch.Tensor) -> ProbeForward:
        """The probes' own forward through `model.features` on `tokens`."""
        probe = cls()
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad(), probe.recording(model):
                probe.features = model.features(tokens)
        finally:
            model.train(was_training)
        return probe


def unit_activity(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean |activation| of every unit over all positions of `tokens`, per UnitLayer (float64, CPU)."""
    return ProbeForward.run(model, tokens).activity


def dormant_fraction(activity: dict[str, torch.Tensor], tau: float) -> dict[str, float]:
    """The τ-dormant share of each layer's units (dormancy score <= τ, plasticity.models.units)."""
    return {name: (dormancy_scores(a) <= tau).to(torch.float64).mean().item() for name, a in activity.items()}


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
              reference_state: dict[str, torch.Tensor] | None = None, reference_name: str = "init",
              forward: ProbeForward | None = None) -> dict:
    """Flat probe dict: `dormant_frac/<layer>`, `dormant_frac` (over all units), `effective_rank`,
    `weight_norm` and, given a reference state, `distance_from_<reference_name>`. `forward`: what a forward
    pass on `tokens` already recorded (ProbeForward.recording); without its features, the probes' own."""
    if forward is None or forward.features is None:
        forward = ProbeForward.run(model, tokens)
    activity, features = forward.activity, forward.features
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
