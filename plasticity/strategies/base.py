"""The strategy contract: a Lightning Callback plus optional loss terms, batch transforms and phase hooks.

A strategy is built once per arm from its config entry (`{strategy: NAME, ...params}`), attached to the
arm's module and registered with the arm's Trainer, so any Lightning hook (on_after_backward,
on_train_batch_end, ...) is available too. Parameters are a dataclass `Params`: unknown keys and
out-of-range values raise ValueError naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pytorch_lightning as pl
import torch

if TYPE_CHECKING:
    from plasticity.module import WindTunnelModule
    from streams import Batch, Stream


class Strategy(pl.Callback):
    name: ClassVar[str] = ""
    frozen: ClassVar[bool] = False  # True: weights never change; the arm is evaluated, not trained
    # True: the strategy trains the arm with its own loop (`run_arm`), e.g. the Avalanche bridge
    external_loop: ClassVar[bool] = False

    @dataclass
    class Params:
        pass

    def __init__(self, **params: Any):
        allowed = [f.name for f in dataclasses.fields(self.Params)]
        for key in params:
            if key not in allowed:
                from streams.base import did_you_mean

                choices = ", ".join(allowed) if allowed else "(none)"
                raise ValueError(
                    f"strategy '{self.name}': unknown parameter '{key}'; allowed: {choices}.{did_you_mean(key, allowed)}"
                )
        try:
            self.params = self.Params(**params)
        except TypeError as e:
            raise ValueError(f"strategy '{self.name}': {e}") from None
        self.check(self.params)
        self.module: WindTunnelModule | None = None
        self.stream: Stream | None = None
        self.init_state: dict[str, torch.Tensor] = {}
        self.start_state: dict[str, torch.Tensor] = {}

    def check(self, params: Any) -> None:
        """Raise ValueError naming the parameter when a value is out of range."""

    def attach(self, module: WindTunnelModule, stream: Stream, init_state: dict[str, torch.Tensor]) -> None:
        """Called once when the arm starts, after its weights were forked from the pretrained ones.

        `init_state` is the model's random initialization (before pretraining); `start_state` the weights
        the arm starts from (the pretrained ones)."""
        self.module, self.stream = module, stream
        self.init_state = {k: v.detach().clone() for k, v in init_state.items()}
        self.start_state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def run_arm(self, experiment, arm: str, model, evaluator, start: int, end: int) -> str | None:
        """For `external_loop` strategies: train `model` on stream steps [start, end), calling
        `evaluator.evaluate(model, step)` at every step in `evaluator.eval_steps`; return a divergence
        message or None."""
        raise NotImplementedError

    def on_phase_start(self, module: WindTunnelModule, phase: int) -> None:
        pass

    def on_phase_end(self, module: WindTunnelModule, phase: int) -> None:
        pass

    def transform_batch(self, module: WindTunnelModule, batch: Batch) -> Batch:
        return batch

    def penalty(self, module: WindTunnelModule, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        return None


def check_param(strategy: str, key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"strategy '{strategy}': {key}={value!r}: must be {allowed}")
