"""The model registry: model classes by name, their configs, parameter matching, building."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from streams.checks import MAX_SIZE, did_you_mean
from streams.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model", nn.Module)
register = MODELS.register
DEFAULT_MODEL = "transformer"
MATCH_KEY = "match_params"
MATCH_TOLERANCE = 0.05


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_class(spec: Mapping[str, Any]) -> type[nn.Module]:
    return MODELS.get(spec.get("name", DEFAULT_MODEL))


def model_config(spec: Mapping[str, Any]) -> Any:
    """The model's own `Config` from a spec `{name, **parameters}` (MATCH_KEY aside); ValueError naming an
    unknown or out-of-range key."""
    cls = model_class(spec)
    params = {k: v for k, v in spec.items() if k not in ("name", MATCH_KEY)}
    allowed = [f.name for f in dataclasses.fields(cls.Config)]
    for key in params:
        if key not in allowed:
            raise ValueError(f"model.{key}: not a parameter of model '{cls.name}'; allowed: {', '.join(allowed)}."
                             f"{did_you_mean(key, allowed)}")
    try:
        return cls.Config(**params)
    except TypeError as e:
        raise ValueError(f"model '{cls.name}': {e}") from None


def normalize(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with every parameter spelled out (defaults filled in), as the run records it."""
    cls = model_class(spec)
    out: dict[str, Any] = {"name": spec.get("name", DEFAULT_MODEL), **dataclasses.asdict(model_config(spec))}
    match = spec.get(MATCH_KEY)
    if match is not None:
        out[MATCH_KEY] = normalize({"name": match} if isinstance(match, str) else match)
        if cls.width_param is None:
            raise ValueError(f"model.{MATCH_KEY}: model '{cls.name}' has no width parameter to adjust")
    return out


def _count_for(cls: type[nn.Module], config: Any, vocab_size: int, max_seq_len: int) -> int:
    # Built on the meta device: shapes only, no memory and no init cost, so the search is cheap.
    with torch.device("meta"):
        return count_parameters(cls(config, vocab_size, max_seq_len))


def resolve(spec: Mapping[str, Any], vocab_size: int, max_seq_len: int) -> tuple[type[nn.Module], Any]:
    """(model class, Config actually built): with MATCH_KEY, the width parameter is chosen so the parameter
    count is within 5% of the matched model's."""
    cls, config = model_class(spec), model_config(spec)
    match = spec.get(MATCH_KEY)
    if match is None:
        return cls, config
    target_spec = {"name": match} if isinstance(match, str) else dict(match)
    target = _count_for(model_class(target_spec), model_config(target_spec), vocab_size, max_seq_len)
    key = cls.width_param
    if key is None:
        raise ValueError(f"model.{MATCH_KEY}: model '{cls.name}' has no width parameter to adjust")

    def count(width: int) -> int:
        return _count_for(cls, dataclasses.replace(config, **{key: width}), vocab_size, max_seq_len)

    # The count grows strictly with the width: bisect for the first width at or above the target.
    lo, hi = 1, 2
    while count(hi) < target and hi < MAX_SIZE:
        lo, hi = hi, min(hi * 2, MAX_SIZE)
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min({max(lo - 1, 1), lo}, key=lambda w: abs(count(w) - target))
    err = abs(count(best) - target) / target
    if err > MATCH_TOLERANCE:
        raise ValueError(
            f"model.{MATCH_KEY}: cannot match the parameter count of '{target_spec['name']}' ({target}) with "
            f"'{cls.name}' within {MATCH_TOLERANCE:.0%}: the closest width {key}={best} has {count(best)} parameters"
        )
    return cls, dataclasses.replace(config, **{key: best})


def build_model(spec: Mapping[str, Any], vocab_size: int, max_seq_len: int) -> nn.Module:
    cls, config = resolve(spec, vocab_size, max_seq_len)
    return cls(config, vocab_size, max_seq_len)
