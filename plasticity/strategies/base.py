"""The strategy contract: a Lightning Callback plus optional loss terms, batch transforms and phase hooks.

A strategy is one file: a `Strategy` subclass decorated with `@register`, with a `name`, a one-line
`description` and its parameters as a dataclass `Params` (their defaults live there and nowhere else).
It is built once per arm from its config entry (`{strategy: NAME, ...params}`; a strategy defined
outside the package: `strategy: package.module:Class`), attached to the arm's module and registered with
the arm's Trainer, so any Lightning hook (on_after_backward, on_train_batch_end, ...) is available too.
Unknown keys and out-of-range values raise ValueError naming the key.

Resume: a checkpoint holds `state_dict()`, and a resumed arm calls `load_state_dict(state)` right after
`attach` (on_phase_start is not called again), so a strategy whose future depends on anything attach
does not rebuild identically must return it from state_dict: tensors, numbers, strings, None and
lists/dicts of them only (checkpoints load with weights_only=True).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from streams.checks import did_you_mean
from streams.registry import Registry
from streams.seeding import derive_seed, make_generator

if TYPE_CHECKING:  # the module trains the strategies: it sits a layer above them
    from plasticity.train.lightning_module import WindTunnelModule
    from streams import Batch, Stream


class Strategy(pl.Callback):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    frozen: ClassVar[bool] = False  # True: weights never change; the arm is evaluated, not trained
    # True: the strategy trains the arm with its own loop (`run_arm`), e.g. the Avalanche bridge
    external_loop: ClassVar[bool] = False
    # The `loss` settings the strategy can train with (None: any); checked before the run starts
    losses: ClassVar[tuple[str, ...] | None] = None
    # False: it edits weights outside the optimizer step from process-local statistics or noise, so under
    # DDP (trainer.devices > 1) the processes' weights would drift apart; such an arm refuses DDP.
    ddp_safe: ClassVar[bool] = True

    @dataclass
    class Params:
        pass

    def __init__(self, **params: Any):
        allowed = [f.name for f in dataclasses.fields(self.Params)]
        for key in params:
            if key not in allowed:
                choices = ", ".join(allowed) if allowed else "(none)"
                hint = did_you_mean(key, allowed)
                raise ValueError(f"strategy '{self.name}': unknown parameter '{key}'; allowed: {choices}.{hint}")
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

    def run_arm(self, loop: ArmLoop) -> str | None:
        """For `external_loop` strategies: train `loop.model` on stream steps [loop.start, loop.end),
        calling `loop.evaluator.evaluate(model, step)` at every step in `loop.evaluator.eval_steps` and
        `loop.on_step()` after every training step; return a divergence message or None."""
        raise NotImplementedError

    def on_phase_start(self, module: WindTunnelModule, phase: int) -> None:
        pass

    def on_phase_end(self, module: WindTunnelModule, phase: int) -> None:
        pass

    def transform_batch(self, module: WindTunnelModule, batch: Batch) -> Batch:
        return batch

    def penalty(self, module: WindTunnelModule, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the strategy's future depends on beyond what attach rebuilds (checkpointed)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called on resume, after attach. The default restores nothing: warn when that looks wrong."""
        cls = type(self)
        if cls.state_dict is not Strategy.state_dict or cls.load_state_dict is not Strategy.load_state_dict:
            return
        held = [k for k, v in vars(self).items() if k not in _BASE_ATTRIBUTES and _holds_tensors(v)]
        if held:
            print(f"warning: strategy '{self.name}' holds tensor state ({', '.join(held)}) but implements no "
                  "state_dict/load_state_dict: the resumed arm restarts it from attach and may differ from "
                  "an uninterrupted run", file=sys.stderr, flush=True)


@dataclass
class ArmLoop:
    """What an `external_loop` strategy gets to train an arm with its own loop: the arm's model, the stream
    steps to train, its evaluator, and the experiment's settings that make the arm comparable to native
    ones. `on_step()` is called after every training step (progress, token count); `stop_requested()` says
    a stop signal asked the run to checkpoint and stop."""

    arm: str
    model: nn.Module
    stream: Stream
    start: int
    end: int
    evaluator: Any  # plasticity.eval.evaluator.Evaluator (a layer above strategies)
    device: torch.device
    optim: Any  # plasticity.train.optim.OptimConfig
    loss: str
    eval_batch_size: int
    on_step: Callable[[], None] = lambda: None
    stop_requested: Callable[[], bool] = lambda: False


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", Strategy,
    # Extras that bring a family of strategies: names with the prefix are resolved by the function, which is
    # imported only when such a name is used.
    prefixes={"avalanche.": ("plasticity.avalanche_bridge:avalanche_strategy_class",
                             "the avalanche extra: pip install -e '.[avalanche]' -c constraints.txt")},
)
register = STRATEGIES.register  # @register on a Strategy subclass with a name and a one-line description


def build_strategy(arm: str, entry: dict[str, Any]) -> Strategy:
    entry = dict(entry)
    name = entry.pop("strategy", None)
    if not isinstance(name, str):
        raise ValueError(f"arms.{arm}.strategy: missing; give a strategy name (e.g. naive, ewc) or an import path")
    try:
        return STRATEGIES.get(name)(**entry)
    except ValueError as e:
        raise ValueError(f"arms.{arm}: {e}") from None


_BASE_ATTRIBUTES = {"params", "module", "stream", "init_state", "start_state"}


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, torch.Generator, torch.nn.Module)):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a Batch
        return any(_holds_tensors(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies, for state_dict (a checkpoint must not alias live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def tensors_to(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copies on `device`, for load_state_dict (the checkpoint may have been mapped elsewhere)."""
    return {k: v.detach().to(device, copy=True) for k, v in tensors.items()}


def strategy_seed(*entropy: int) -> int:
    """The seed of a strategy's own draws, mixed from integers (the stream's seed, the strategy's, a counter)."""
    return derive_seed(*entropy, bits=63)


def strategy_generator(*entropy: int) -> torch.Generator:
    """A CPU generator for a strategy's own draws (the same on CPU and CUDA runs)."""
    return make_generator(*entropy, bits=63)


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore a CPU generator from `generator.get_state()` (which a CUDA map_location moves to the GPU)."""
    generator.set_state(state.cpu())


def check_param(strategy: str, key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"strategy '{strategy}': {key}={value!r}: must be {allowed}")
