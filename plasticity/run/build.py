"""One builder: everything a config names, built once per run and checked before any work starts.

`build(cfg)` resolves the stream, the model (on the meta device: shapes only), every arm's strategy and
the device; every mistake is a ConfigError of one line. The CLI, the sweep planner (which validates
every trial before the first one runs) and the experiment all use the same `BuiltRun`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from plasticity.eval.rows import RESERVED_ARMS
from plasticity.models import resolve
from plasticity.run import distributed
from plasticity.run.config import ConfigError, to_container
from plasticity.strategies import Strategy, build_strategy
from streams.stream import Stream


@dataclass
class BuiltRun:
    """A config and what it builds: the stream, the model class and its resolved config (a matched width
    chosen), the arms' strategies (by arm name), the device."""

    cfg: DictConfig
    stream: Stream
    model_class: type[nn.Module]
    model_config: object
    strategies: dict[str, Strategy]
    device: torch.device

    def new_model(self, seed: int) -> nn.Module:
        """A fresh model, its initialization drawn after `torch.manual_seed(seed)`."""
        torch.manual_seed(seed)
        return self.model_class(self.model_config, self.stream.vocab_size, self.stream.max_seq_len)


def _one_line(e: Exception, key: str) -> ConfigError:
    msg = (str(e).splitlines() or [type(e).__name__])[0]
    return ConfigError(msg if msg.startswith(key) else f"{key}: {msg}")


def build(cfg: DictConfig) -> BuiltRun:
    """Build and check everything `cfg` names (no eval banks, no training); arms are spelled out in full."""
    try:
        return _build(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, ArithmeticError, IndexError) as e:
        raise _one_line(e, "") from None


def _build(cfg: DictConfig) -> BuiltRun:
    spec = to_container(cfg.stream)
    if cfg.eval.size is not None:
        spec["eval_size"] = cfg.eval.size
    try:
        stream = Stream.from_spec(spec, seed=cfg.seed)
    except ValueError as e:
        raise _one_line(e, "stream") from None
    try:
        model_class, model_config = resolve(to_container(cfg.model), stream.vocab_size, stream.max_seq_len)
        with torch.device("meta"):  # shapes only: as cheap for a huge model as for a tiny one
            model_class(model_config, stream.vocab_size, stream.max_seq_len)
    except ValueError as e:
        raise _one_line(e, "model") from None
    entries = to_container(cfg.arms)
    strategies = {arm: build_strategy(arm, dict(entry)) for arm, entry in entries.items()}
    for arm, strategy in strategies.items():
        if arm in RESERVED_ARMS:
            raise ConfigError(f"arms.{arm}: '{arm}' is reserved; give the arm another name")
        if strategy.losses is not None and cfg.loss not in strategy.losses:
            raise ConfigError(f"loss={cfg.loss}: arm '{arm}' (strategy '{strategy.name}') trains only with "
                              f"loss={' or '.join(strategy.losses)}")
        # the run records every parameter, defaults included
        cfg.arms[arm] = {"strategy": entries[arm]["strategy"], **dataclasses.asdict(strategy.params)}
    if len(stream.phases) > 1 and not strategies:
        raise ConfigError("arms: a stream with several phases needs at least one arm (e.g. arms=[frozen,naive])")
    problem = distributed.check(cfg, strategies)
    if problem:
        raise ConfigError(problem)
    accel = cfg.trainer.accelerator
    if accel == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=cuda: no CUDA device is available here; use auto or cpu")
    device = torch.device("cuda" if accel in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and distributed.enabled(cfg):
        if cfg.trainer.devices > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={cfg.trainer.devices}: only {torch.cuda.device_count()} GPUs here")
        device = torch.device("cuda", distributed.rank(cfg))
    return BuiltRun(cfg, stream, model_class, model_config, strategies, device)
