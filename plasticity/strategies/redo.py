"""`redo`: recycling dormant neurons (Sokar, Agarwal, Castro & Evci 2023, "The Dormant Neuron Phenomenon
in Deep Reinforcement Learning", arXiv:2302.12902).

Every `every` training steps, each hidden unit (the models' `unit_layers()`) is scored on that step's
batch: s_i = mean|h_i| / mean over the layer of mean|h_j|, over all positions. Units with s_i ≤ τ are
τ-dormant and are recycled: incoming row re-drawn from the layer's init, bias 0, outgoing column 0 (the
function is unchanged), their Adam moments reset. A layer whose units are all silent is recycled whole.

τ defaults to 0.1, the threshold of the testbed's dormancy probe (eval.tau), so ReDo recycles exactly
what the probe reports as dormant. GELU units are rarely exactly silent, so τ = 0 (the paper's strictest
setting) would seldom fire; the paper's smaller thresholds (e.g. 0.025) can be set per arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.models.units import ActivityCapture, dormant_units
from plasticity.strategies.base import Strategy, check_param, register, set_generator_state, strategy_generator
from plasticity.strategies.reinit import optimizer_of, reinit_units
from streams.checks import is_number


@register
class ReDo(Strategy):
    name = "redo"
    description = "recycle tau-dormant hidden units every N steps (Sokar et al. 2023)"
    ddp_safe = False  # edits weights outside the optimizer step, per process

    @dataclass
    class Params:
        every: int = 100  # training steps between recycling passes
        tau: float = 0.1  # τ: dormancy threshold on the normalized score
        seed: int = 0  # for the re-drawn weights; mixed with the stream's seed

    def check(self, p: Params) -> None:
        check_param(self.name, "every", p.every, type(p.every) is int and p.every >= 1, "an integer >= 1")
        check_param(self.name, "tau", p.tau, is_number(p.tau) and 0 <= p.tau < 1, "in [0, 1)")
        check_param(self.name, "seed", p.seed, type(p.seed) is int and p.seed >= 0, "an integer >= 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.layers = module.model.unit_layers()
        self.generator = strategy_generator(stream.seed, self.params.seed, 0x7264)
        self.capture = ActivityCapture(self.layers)
        self.steps = 0
        self.replaced = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "replaced": self.replaced, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.replaced = state["steps"], state["replaced"]
        set_generator_state(self.generator, state["generator"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (self.steps + 1) % self.params.every == 0:  # the step that ends a period is the one scored
            self.capture.start()

    def on_after_backward(self, trainer, pl_module) -> None:
        self.capture.stop()  # the training forward is done; later (evaluation) passes are not seen

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        activity = self.capture.take()
        if not activity:
            return
        optimizer = optimizer_of(pl_module)
        for layer in self.layers:
            if layer.name in activity:
                idx = dormant_units(activity[layer.name], self.params.tau)
                reinit_units(layer, idx, optimizer, self.generator)
                self.replaced += idx.numel()

    def on_train_end(self, trainer, pl_module) -> None:
        self.capture.stop()
