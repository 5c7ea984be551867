"""Models: one interface for a transformer, a prefix MLP and an LSTM, and a registry to add more.

Every model maps `tokens [B, T]` to next-token logits `[B, T, V]`, exposes `features(tokens) -> [B, T, d]`
(the last hidden features before the unembedding, for the effective-rank probe) and `unit_layers()`
(the hidden units that probes count as dormant and that CBP/ReDo re-initialize).

A model is one file: an `nn.Module` decorated with `@register`, with a `name`, a one-line `description`
and a `Config` dataclass of its own parameters, which checks their ranges (ValueError naming the key).
A model config is a mapping `{name: NAME, **parameters}` (a model defined elsewhere: `name:
package.module:Class`); `match_params: OTHER` (a name or such a mapping) picks the model's width
parameter (`width_param`) so its parameter count is within 5% of OTHER's, built for the same vocabulary
and length.
"""

import importlib
import pkgutil

from plasticity.models.registry import MODELS, build_model, count_parameters, model_config, normalize, register, resolve
from plasticity.models.units import UnitLayer

for _module in pkgutil.iter_modules(__path__):  # every model file registers itself
    if _module.name not in ("registry", "units"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "UnitLayer", "build_model", "count_parameters", "model_config", "normalize", "register",
           "resolve"]
