"""Continual strategies, one file each, registered by `@register` (plasticity.strategies.base); a strategy
defined outside the package runs by its import path (`strategy: package.module:ClassName`), and the
Avalanche bridge's `avalanche.<Name>` strategies through the registry's prefix table."""

import importlib
import pkgutil

from plasticity.strategies.base import STRATEGIES, ArmLoop, Strategy, build_strategy, register

for _module in pkgutil.iter_modules(__path__):  # every strategy file registers itself
    if _module.name not in ("base", "reinit"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "ArmLoop", "Strategy", "build_strategy", "register"]
