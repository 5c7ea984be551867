"""Re-initialization for strategies that redraw weights: a fresh init of a whole model (reset,
shrink_perturb), re-drawn hidden units and their optimizer moments (cbp, redo)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from plasticity.models.units import UnitLayer


def optimizer_of(module) -> torch.optim.Optimizer | None:
    """The module's optimizer, or None before a Trainer has set it up (e.g. at attach)."""
    try:
        optimizers = module.trainer.optimizers
    except RuntimeError:
        return None
    return optimizers[0] if optimizers else None


def fresh_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A new random initialization of `model`'s architecture (CPU state dict), drawn with `seed`.

    The models initialize themselves in __init__ with their own scheme (GPT-2 stds, fan-in scaling), so
    a fresh instance built from the same (cfg, vocab_size, max_seq_len) is the exact init distribution.
    Other models fall back to each submodule's `reset_parameters` (PyTorch's defaults)."""
    with torch.random.fork_rng(devices=[]):  # leaves the global CPU stream (and CUDA's) untouched
        torch.default_generator.manual_seed(seed)
        if all(hasattr(model, a) for a in ("cfg", "vocab_size", "max_seq_len")):
            fresh = type(model)(model.cfg, model.vocab_size, model.max_seq_len)
        else:
            fresh = copy.deepcopy(model).cpu()
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return fresh.state_dict()


@torch.no_grad()
def reset_moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, index) -> None:
    """Zero the per-element optimizer state (Adam's exp_avg/exp_avg_sq, SGD momentum...) at `index`.

    Adam's step count is one scalar per tensor, so a reset entry restarts its moments without bias
    correction: its first updates have magnitude ≈ (1-β1)/sqrt(1-β2)·lr, bounded like any other."""
    if optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0


@torch.no_grad()
def reinit_units(layer: UnitLayer, idx: torch.Tensor, optimizer: torch.optim.Optimizer | None,
                 generator: torch.Generator) -> None:
    """Re-draw units `idx` of a layer: incoming row ~ N(0, init_std²), bias 0, outgoing column 0.

    With the outgoing weights at zero the network computes the same function right after the reset, and
    the new unit grows in through the gradient of its outgoing weights (Dohare et al. 2024)."""
    if idx.numel() == 0:
        return
    w_in, b_in, w_out = layer.in_linear.weight, layer.in_linear.bias, layer.out_linear.weight
    idx = idx.to(w_in.device)
    fresh = torch.randn(idx.numel(), w_in.shape[1], generator=generator) * layer.init_std
    w_in[idx] = fresh.to(w_in)
    w_out[:, idx] = 0
    reset_moments(optimizer, w_in, idx)
    reset_moments(optimizer, w_out, (slice(None), idx))
    if b_in is not None:
        b_in[idx] = 0
        reset_moments(optimizer, b_in, idx)
