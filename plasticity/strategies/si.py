"""`si`: synaptic intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic
Intelligence", arXiv:1703.04200).

Each step adds ω += −g·Δθ, the parameter's share of the drop in the task loss along the path actually
taken (g the task loss's gradient, Δθ the optimizer's update). At the end of a phase
Ω += max(0, ω / (Δθ_phase² + ξ)), ω is reset and the anchor θ* moves to the current weights; the loss
gains c·Σ Ω·(θ − θ*)².

Choices:
- g is the gradient of the task loss alone, as in the paper's code. The penalty is already in the loss
  when Lightning runs backward, so in on_before_optimizer_step (before clipping) the penalty's own
  gradient, exactly 2c·Ω·(θ − θ*), is subtracted from p.grad. Δθ is the real update (Adam
  preconditioning, clipping and weight decay included), taken in on_train_batch_end.
- Negative contributions (noise: the step raised the loss along that coordinate) are clipped at 0; a
  negative Ω would make the quadratic push weights away from the anchor without bound.
- The arm never saw pretraining's trajectory, so no importance exists for phase 0: SI protects phases
  from 1 on, and its penalty is zero until phase 1 ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.strategies.base import Strategy, check_param, cpu_tensors, register, tensors_to
from streams.checks import is_number


@register
class SI(Strategy):
    name = "si"
    description = "synaptic intelligence: path-integral importance penalty (Zenke et al. 2017)"

    @dataclass
    class Params:
        c: float = 1.0  # penalty strength
        xi: float = 0.1  # ξ: damping of the path-length normalization

    def check(self, p: Params) -> None:
        check_param(self.name, "c", p.c, is_number(p.c) and p.c >= 0, "a finite number >= 0")
        check_param(self.name, "xi", p.xi, is_number(p.xi) and p.xi > 0, "a finite number > 0")

    def _params(self, module) -> dict[str, torch.Tensor]:
        return {n: p for n, p in module.model.named_parameters() if p.requires_grad}

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        params = self._params(module)
        self.omega = {n: torch.zeros_like(p) for n, p in params.items()}  # Ω, accumulated importance
        self.path = {n: torch.zeros_like(p) for n, p in params.items()}  # ω, this phase's path integral
        self.anchor = {n: p.detach().clone() for n, p in params.items()}  # θ*, also the phase's start
        self._grad: dict[str, torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}

    # _grad/_before live within one step only: a checkpoint is written after the step's update.
    def state_dict(self) -> dict:
        return {"omega": cpu_tensors(self.omega), "path": cpu_tensors(self.path), "anchor": cpu_tensors(self.anchor)}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.module.model.parameters()).device
        self.omega, self.path, self.anchor = (tensors_to(state[k], device) for k in ("omega", "path", "anchor"))

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        c = self.params.c
        self._grad, self._before = {}, {}
        for n, p in self._params(pl_module).items():
            if p.grad is None:
                continue
            # Remove the penalty's gradient: ω measures the task loss's decrease only.
            self._grad[n] = p.grad.detach() - 2 * c * self.omega[n] * (p.detach() - self.anchor[n])
            self._before[n] = p.detach().clone()

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for n, p in self._params(pl_module).items():
            if n in self._grad:
                self.path[n] -= self._grad[n] * (p.detach() - self._before[n])
        self._grad, self._before = {}, {}

    @torch.no_grad()
    def on_phase_end(self, module, phase: int) -> None:
        for n, p in self._params(module).items():
            moved = p.detach() - self.anchor[n]
            self.omega[n] += (self.path[n] / (moved.pow(2) + self.params.xi)).clamp_(min=0)
            self.path[n].zero_()
            self.anchor[n] = p.detach().clone()

    def penalty(self, module, batch, logits):
        return self.params.c * sum((self.omega[n] * (p - self.anchor[n]).pow(2)).sum()
                                   for n, p in self._params(module).items())
