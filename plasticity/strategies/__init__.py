"""Continual strategies, one file each, registered by name; `build_strategy` also takes an import path
(`package.module:ClassName`) so a strategy defined outside the package runs by name from a config."""

from __future__ import annotations

import importlib
from typing import Any

from plasticity.strategies.base import Strategy
from plasticity.strategies.cbp import CBP
from plasticity.strategies.ewc import EWC
from plasticity.strategies.l2_init import L2Init
from plasticity.strategies.lwf import LwF
from plasticity.strategies.naive import Frozen, Naive
from plasticity.strategies.redo import ReDo
from plasticity.strategies.replay import Replay
from plasticity.strategies.reset import Reset
from plasticity.strategies.shrink_perturb import ShrinkPerturb
from plasticity.strategies.si import SI

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


for _cls in (Naive, Frozen, Replay, EWC, SI, LwF, L2Init, ShrinkPerturb, CBP, ReDo, Reset):
    register(_cls)


def strategy_class(name: str) -> type[Strategy]:
    if name in STRATEGIES:
        return STRATEGIES[name]
    if name.startswith("avalanche."):  # the Avalanche bridge, imported only when an arm names it
        return _avalanche_strategy_class(name)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"strategy '{name}': cannot import it ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise ValueError(f"strategy '{name}': not a subclass of plasticity.strategies.Strategy")
        return cls
    from streams.base import did_you_mean

    known = sorted(STRATEGIES)
    raise ValueError(
        f"unknown strategy '{name}'; known: {', '.join(known)}, or an import path 'package.module:Class'."
        f"{did_you_mean(name, known)}"
    )


def _avalanche_strategy_class(name: str) -> type[Strategy]:
    try:
        bridge = importlib.import_module("plasticity.avalanche_bridge")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "avalanche":
            raise
        raise ValueError(
            f"strategy '{name}' needs the avalanche extra: pip install -e '.[avalanche]' -c constraints.txt"
        ) from None
    return bridge.avalanche_strategy_class(name)


def build_strategy(arm: str, entry: dict[str, Any]) -> Strategy:
    entry = dict(entry)
    name = entry.pop("strategy", None)
    if not isinstance(name, str):
        raise ValueError(f"arms.{arm}.strategy: missing; give a strategy name (e.g. naive, ewc) or an import path")
    try:
        return strategy_class(name)(**entry)
    except ValueError as e:
        raise ValueError(f"arms.{arm}: {e}") from None


__all__ = ["STRATEGIES", "Strategy", "build_strategy", "register", "strategy_class"]
