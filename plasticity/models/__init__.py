"""Models: one interface for a transformer, a prefix MLP and an LSTM.

Every model maps `tokens [B, T]` to next-token logits `[B, T, V]`, exposes `features(tokens) -> [B, T, d]`
(the last hidden features before the unembedding, for the effective-rank probe) and `unit_layers()`
(the hidden units that probes count as dormant and that CBP/ReDo re-initialize).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class ModelConfig:
    name: str = "transformer"
    # transformer
    n_layers: int = 2  # also the number of LSTM layers
    d_model: int = 64  # also the token-embedding width of the LSTM and of the MLP with mlp_input="embed"
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.0
    rotary: bool = False
    # mlp / lstm
    hidden: int = 256  # MLP width / LSTM hidden size
    depth: int = 2  # MLP hidden layers
    mlp_input: str = "onehot"  # "onehot" or "embed": how the MLP sees the prefix
    # e.g. "transformer": pick `hidden` so the parameter count is within 5% of that model's
    match_params: Optional[str] = None  # noqa: UP045  (OmegaConf structured configs want Optional)


@dataclass(eq=False)
class UnitLayer:
    """A layer of hidden units: `in_linear`'s output rows are their pre-activations, `act`'s output
    `[..., n_units]` their activations, `out_linear`'s input columns consume them. Re-initializing unit k
    means re-drawing `in_linear.weight[k]` (std `init_std`), zeroing `in_linear.bias[k]` and zeroing
    `out_linear.weight[:, k]`, so the network's function is unchanged at the moment of reset."""

    name: str
    in_linear: nn.Linear
    act: nn.Module
    out_linear: nn.Linear
    init_std: float = 0.02  # std of the normal the in_linear weights were drawn from

    @property
    def n_units(self) -> int:
        return self.in_linear.out_features


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


MATCH_TOLERANCE = 0.05


def _model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _count_for(cfg: ModelConfig, vocab_size: int, max_seq_len: int) -> int:
    # Built on the meta device: shapes only, no memory and no init cost, so the search is cheap.
    with torch.device("meta"):
        return count_parameters(_model_class(cfg.name)(cfg, vocab_size, max_seq_len))


def resolve_config(cfg: ModelConfig, vocab_size: int, max_seq_len: int) -> ModelConfig:
    """The config actually built: with `match_params` set, `hidden` is chosen so the parameter count is
    within 5% of the `match_params` model built from the same config (same vocab and length)."""
    _model_class(cfg.name)
    if cfg.match_params is None:
        return cfg
    _model_class(cfg.match_params)
    target_cfg = dataclasses.replace(cfg, name=cfg.match_params, match_params=None)
    target = _count_for(target_cfg, vocab_size, max_seq_len)
    if cfg.name == cfg.match_params:
        return dataclasses.replace(cfg, match_params=None)
    if cfg.name not in ("mlp", "lstm"):
        raise ValueError(f"match_params adjusts the width of 'mlp' or 'lstm' only, not '{cfg.name}'")

    def count(hidden: int) -> int:
        return _count_for(dataclasses.replace(cfg, hidden=hidden, match_params=None), vocab_size, max_seq_len)

    # The count grows strictly with `hidden`: bisect for the first width at or above the target.
    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            break
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    best = min({max(lo - 1, 1), lo}, key=lambda h: abs(count(h) - target))
    err = abs(count(best) - target) / target
    if err > MATCH_TOLERANCE:
        raise ValueError(
            f"cannot match the parameter count of '{cfg.match_params}' ({target}) with '{cfg.name}' "
            f"within {MATCH_TOLERANCE:.0%}: the closest width hidden={best} has {count(best)} parameters"
        )
    return dataclasses.replace(cfg, hidden=best, match_params=None)


def build_model(cfg: ModelConfig, vocab_size: int, max_seq_len: int) -> nn.Module:
    cfg = resolve_config(cfg, vocab_size, max_seq_len)
    return _model_class(cfg.name)(cfg, vocab_size, max_seq_len)


# The model files import ModelConfig and UnitLayer from here, so they come after the definitions.
from plasticity.models.lstm import LSTM  # noqa: E402
from plasticity.models.mlp import PrefixMLP  # noqa: E402
from plasticity.models.transformer import Transformer  # noqa: E402

MODELS: dict[str, type[nn.Module]] = {"transformer": Transformer, "mlp": PrefixMLP, "lstm": LSTM}

__all__ = [
    "LSTM",
    "MODELS",
    "ModelConfig",
    "PrefixMLP",
    "Transformer",
    "UnitLayer",
    "build_model",
    "count_parameters",
    "resolve_config",
]
