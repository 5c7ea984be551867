"""`cbp`: continual backpropagation (Dohare et al., "Loss of plasticity in deep continual learning",
Nature 632, 2024; arXiv:2306.13812; reference code: shibhansh/loss-of-plasticity, lop/algos/cbp_linear.py).

For each layer of hidden units (the models' `unit_layers()`), every training step:
- contribution utility u ← η·u + (1−η)·|h|·Σ_k|w_out[k, i]|, with |h| the unit's mean |activation| over
  the step's batch and positions, and age += 1;
- ρ·(number of mature units, age > maturity_threshold) is added to a fractional count, and its whole part
  of the mature units with the lowest utility are re-initialized: incoming row re-drawn from the layer's
  init, bias 0, outgoing column 0 (so the function is unchanged), their Adam moments, utility and age
  reset. ρ times the *mature* count follows the reference code; once all are mature it is ρ·n_units.

Ages start at 0 when the arm attaches (the pretrained units are old, but their utilities are unknown):
nothing is replaced during the first `maturity_threshold` steps, which lets the utilities warm up
(their time constant is 1/(1−η) = 100 steps at the default η).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.models.units import ActivityCapture
from plasticity.strategies.base import (
    Strategy,
    check_param,
    cpu_tensors,
    register,
    set_generator_state,
    strategy_generator,
    tensors_to,
)
from plasticity.strategies.reinit import optimizer_of, reinit_units
from streams.checks import is_number


@register
class CBP(Strategy):
    name = "cbp"
    description = "continual backprop: replace the mature hidden units of lowest utility (Dohare et al. 2024)"
    ddp_safe = False  # edits weights outside the optimizer step, per process

    @dataclass
    class Params:
        replacement_rate: float = 1e-4  # ρ: units replaced per mature unit per step
        decay_rate: float = 0.99  # η: of the running utility
        maturity_threshold: int = 100  # steps a unit is protected after (re)initialization
        seed: int = 0  # for the re-drawn weights; mixed with the stream's seed

    def check(self, p: Params) -> None:
        check_param(self.name, "replacement_rate", p.replacement_rate,
                    is_number(p.replacement_rate) and 0 <= p.replacement_rate <= 1, "in [0, 1]")
        check_param(self.name, "decay_rate", p.decay_rate, is_number(p.decay_rate) and 0 <= p.decay_rate < 1,
                    "in [0, 1)")
        check_param(self.name, "maturity_threshold", p.maturity_threshold,
                    type(p.maturity_threshold) is int and p.maturity_threshold >= 0, "an integer >= 0")
        check_param(self.name, "seed", p.seed, type(p.seed) is int and p.seed >= 0, "an integer >= 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.layers = module.model.unit_layers()
        self.generator = strategy_generator(stream.seed, self.params.seed, 0x6362)
        dev = next(module.model.parameters()).device
        self.utility = {u.name: torch.zeros(u.n_units, device=dev) for u in self.layers}
        self.age = {u.name: torch.zeros(u.n_units, dtype=torch.long, device=dev) for u in self.layers}
        self.pending = {u.name: 0.0 for u in self.layers}  # fractional units owed to replacement
        self.replaced = 0
        self.capture = ActivityCapture(self.layers)

    def state_dict(self) -> dict:
        return {"utility": cpu_tensors(self.utility), "age": cpu_tensors(self.age), "pending": dict(self.pending),
                "replaced": self.replaced, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.module.model.parameters()).device
        self.utility, self.age = tensors_to(state["utility"], device), tensors_to(state["age"], device)
        self.pending, self.replaced = dict(state["pending"]), state["replaced"]
        set_generator_state(self.generator, state["generator"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.capture.start()

    def on_after_backward(self, trainer, pl_module) -> None:
        self.capture.stop()  # the training forward is done; later (evaluation) passes are not seen

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        activity = self.capture.take()
        optimizer = optimizer_of(pl_module)
        rho, eta = self.params.replacement_rate, self.params.decay_rate
        for layer in self.layers:
            if layer.name not in activity:
                continue
            u, age = self.utility[layer.name], self.age[layer.name]
            contribution = activity[layer.name].to(u.device) * layer.out_linear.weight.abs().sum(0).float()
            u.mul_(eta).add_(contribution, alpha=1 - eta)
            age += 1
            mature = (age > self.params.maturity_threshold).nonzero().flatten()
            if mature.numel() == 0:
                continue
            self.pending[layer.name] += rho * mature.numel()
            k = min(int(self.pending[layer.name]), mature.numel())
            if k == 0:
                continue
            self.pending[layer.name] -= k
            idx = mature[u[mature].topk(k, largest=False).indices]
            reinit_units(layer, idx, optimizer, self.generator)
            u[idx], age[idx] = 0.0, 0
            self.replaced += k

    def on_train_end(self, trainer, pl_module) -> None:
        self.capture.stop()
