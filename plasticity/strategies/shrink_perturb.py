"""`shrink_perturb`: shrink and perturb (Ash & Adams 2020, "On Warm-Starting Neural Network Training",
arXiv:1910.08475).

θ ← shrink·θ + sigma·θ_fresh, where θ_fresh is a *whole fresh initialization* of the architecture (its
own init scheme, a new seed each time): sigma multiplies a fresh init, it is not a standard deviation.
So zero-initialized biases only shrink, LayerNorm gains move toward shrink + sigma, and every weight
matrix gets noise of std sigma·(its init std). Applied at the start of every phase after pretraining
(`every: 0`, the paper's setting: when new data arrive) or every `every` training steps instead.
The optimizer state is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.strategies.base import Strategy, check_param, register, strategy_seed
from plasticity.strategies.reinit import fresh_state
from streams.checks import is_number


@register
class ShrinkPerturb(Strategy):
    name = "shrink_perturb"
    description = "shrink the weights and add a scaled fresh init at each phase (Ash & Adams 2020)"
    ddp_safe = False  # edits weights outside the optimizer step, per process

    @dataclass
    class Params:
        shrink: float = 0.8  # λ in the paper
        sigma: float = 0.01  # multiplies a fresh initialization
        every: int = 0  # 0: at each phase start; N > 0: every N training steps instead
        seed: int = 0  # mixed with the stream's seed and the application count

    def check(self, p: Params) -> None:
        check_param(self.name, "shrink", p.shrink, is_number(p.shrink) and 0 <= p.shrink <= 1, "in [0, 1]")
        check_param(self.name, "sigma", p.sigma, is_number(p.sigma) and p.sigma >= 0, "a finite number >= 0")
        check_param(self.name, "every", p.every, type(p.every) is int and p.every >= 0, "an integer >= 0")
        check_param(self.name, "seed", p.seed, type(p.seed) is int and p.seed >= 0, "an integer >= 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.applied = 0  # how many times the weights were shrunk and perturbed
        self.steps = 0

    # No generator: each fresh init is drawn from a seed derived from `applied`.
    def state_dict(self) -> dict:
        return {"applied": self.applied, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.applied, self.steps = state["applied"], state["steps"]

    @torch.no_grad()
    def apply(self, module) -> None:
        model = module.model
        p = self.params
        fresh = fresh_state(model, strategy_seed(self.stream.seed, p.seed, self.applied)) if p.sigma > 0 else {}
        for name, w in model.named_parameters():
            w.mul_(p.shrink)
            if name in fresh:
                w.add_(fresh[name].to(w.device, w.dtype), alpha=p.sigma)
        self.applied += 1

    def on_phase_start(self, module, phase: int) -> None:
        if self.params.every == 0 and phase >= 1:
            self.apply(module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.params.every > 0 and self.steps % self.params.every == 0:
            self.apply(pl_module)
