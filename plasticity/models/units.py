"""Hidden units: the layers whose units the probes count as dormant and that CBP and ReDo re-initialize,
their activations captured by forward hooks, and the dormancy score (ReDo)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def check_activation(name) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r}: must be one of {', '.join(ACTIVATIONS)}")


def activation(name: str) -> nn.Module:
    """The hidden units' nonlinearity (the models' `activation` parameter)."""
    return ACTIVATIONS[name]()


def layer_norm(width: int, enabled: bool) -> nn.Module:
    """A LayerNorm, or the identity where a model's `layer_norm` parameter turns normalization off."""
    return nn.LayerNorm(width) if enabled else nn.Identity()


@dataclass(eq=False)
class UnitLayer:
    """A layer of hidden units: `in_linear`'s output rows are their pre-activations, `act`'s output
    `[..., n_units]` their activations, `out_linear`'s input columns consume them. Re-initializing unit k
    means re-drawing `in_linear.weight[k]` (std `init_std`), zeroing `in_linear.bias[k]` and zeroing
    `out_linear.weight[:, k]`, so the network's function is unchanged at the moment of reset."""

    name: str
    in_linear: nn.Linear
    act: nn.Module
    out_linear: nn.Linear
    init_std: float = 0.02  # std of the normal the in_linear weights were drawn from

    @property
    def n_units(self) -> int:
        return self.in_linear.out_features


class ActivityCapture:
    """Forward hooks on each layer's `act`, live between start() and stop(): a forward stores the units'
    mean |activation| over all leading axes (batch and positions), detached, in `dtype`, by layer name.

    `grad_only`: only forwards with gradients enabled are seen. Strategies start a capture in
    on_train_batch_start and stop it in on_after_backward, so only the training forward is seen (the
    evaluator's no-grad passes run in on_train_batch_end, and hooks left in place would also be copied
    into any deep copy of the model); the probes capture one no-grad forward in float64."""

    def __init__(self, layers: list[UnitLayer], dtype: torch.dtype = torch.float32, grad_only: bool = True):
        self.layers, self.dtype, self.grad_only = layers, dtype, grad_only
        self.activity: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if torch.is_grad_enabled() or not self.grad_only:
                self.activity[name] = output.detach().abs().to(self.dtype).reshape(-1, output.shape[-1]).mean(0)
        return hook

    def start(self) -> None:
        self.stop()
        self.activity = {}
        self._handles = [layer.act.register_forward_hook(self._hook(layer.name)) for layer in self.layers]

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> dict[str, torch.Tensor]:
        """Stop, and hand over what was captured since start() (empty if nothing, or already taken)."""
        self.stop()
        activity, self.activity = self.activity, {}
        return activity


def dormancy_scores(activity: torch.Tensor) -> torch.Tensor:
    """ReDo (Sokar et al. 2023): each unit's mean |activation| divided by the layer's mean of those. A layer
    whose units are all silent scores 0 everywhere (entirely dormant)."""
    mean = activity.mean()
    return activity / mean if mean > 0 else torch.zeros_like(activity)


def dormant_units(activity: torch.Tensor, tau: float) -> torch.Tensor:
    """Indices of a layer's τ-dormant units (score <= τ), given their mean |activation|."""
    return (dormancy_scores(activity) <= tau).nonzero().flatten()
