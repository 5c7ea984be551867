"""`reset`: forget everything at each new phase — the from-scratch baseline run inside the stream.

At every phase start after pretraining (phase ≥ 1) all weights are replaced by a fresh random
initialization of the architecture (a new seed per phase) and the optimizer's state is cleared, so each
phase is learned by a new network with the arm's budget: the plasticity ceiling, and maximal forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.strategies.base import Strategy, check_param, register, strategy_seed
from plasticity.strategies.reinit import fresh_state, optimizer_of


@register
class Reset(Strategy):
    name = "reset"
    description = "a fresh initialization and optimizer at every phase: the from-scratch baseline"
    ddp_safe = False  # edits weights outside the optimizer step, per process

    @dataclass
    class Params:
        seed: int = 0  # mixed with the stream's seed and the phase index

    def check(self, p: Params) -> None:
        check_param(self.name, "seed", p.seed, type(p.seed) is int and p.seed >= 0, "an integer >= 0")

    @torch.no_grad()
    def on_phase_start(self, module, phase: int) -> None:
        if phase < 1:
            return
        fresh = fresh_state(module.model, strategy_seed(self.stream.seed, self.params.seed, phase))
        module.model.load_state_dict(fresh)  # copies in place: the optimizer keeps the same tensors
        optimizer = optimizer_of(module)
        if optimizer is not None:
            optimizer.state.clear()  # Adam restarts its moments and bias correction at step 0
