"""A prefix MLP: no attention, no recurrence. At position t it reads the whole prefix tokens[:t+1],
zero-padded to max_seq_len and flattened (one-hot V per position, or a d_model embedding per position),
through `depth` GELU layers of width `hidden` and an output head.

The first layer never materializes the [B, T, max_seq_len, ·] prefix tensor: applied to a zero-padded
prefix, a linear map is a sum of per-position contributions, so the pre-activation at t is
`bias + cumsum_s<=t W[:, s, ·] x_s` — for one-hot inputs a gathered weight column per position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from plasticity.models.registry import register
from plasticity.models.units import UnitLayer, activation, check_activation, layer_norm
from streams.checks import check_int

INPUTS = ("onehot", "embed")


@dataclass
class MLPConfig:
    hidden: int = 256  # width of every hidden layer
    depth: int = 2  # hidden layers
    input: str = "onehot"  # how the MLP sees the prefix: one-hot per position, or an embedding per position
    d_model: int = 64  # the embedding width with input="embed"
    activation: str = "gelu"  # gelu | relu | tanh
    layer_norm: bool = False  # a LayerNorm on every hidden layer's pre-activation

    def __post_init__(self) -> None:
        check_activation(self.activation)
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"model.layer_norm={self.layer_norm!r}: must be true or false")
        check_int("model", "hidden", self.hidden, 1)
        check_int("model", "depth", self.depth, 1, 1024)
        check_int("model", "d_model", self.d_model, 1)
        if self.input not in INPUTS:
            raise ValueError(f"model.input={self.input!r}: must be one of {', '.join(INPUTS)}")


@register
class PrefixMLP(nn.Module):
    name = "mlp"
    description = "MLP over the whole zero-padded prefix (no attention, no recurrence)"
    Config = MLPConfig
    width_param = "hidden"

    def __init__(self, cfg: MLPConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, cfg.d_model) if cfg.input == "embed" else None
        per_position = vocab_size if self.embed is None else cfg.d_model
        widths = [max_seq_len * per_position] + [cfg.hidden] * cfg.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(activation(cfg.activation) for _ in range(cfg.depth))
        self.norms = nn.ModuleList(layer_norm(cfg.hidden, cfg.layer_norm) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.hidden, vocab_size)

        # Only t+1 of the max_seq_len positions are ever non-zero, so the first layer's fan-in is the number
        # of positions (times d_model for embeddings of unit scale), not the flattened width.
        first_fan_in = max_seq_len * (1 if self.embed is None else cfg.d_model)
        self.init_stds = [1.0 / math.sqrt(first_fan_in)] + [1.0 / math.sqrt(cfg.hidden)] * (cfg.depth - 1)
        for layer, std in zip(self.layers, self.init_stds):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(cfg.hidden))
        nn.init.zeros_(self.head.bias)

    def input_preactivation(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first layer's pre-activation `[B, T, hidden]` on the causal, zero-padded prefix."""
        B, T = tokens.shape
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.max_seq_len}")
        first = self.layers[0]
        if self.embed is None:
            # W[:, s, v] is the weight of "token v at position s"; gather it for each (b, s).
            W = first.weight.view(-1, self.max_seq_len, self.vocab_size)[:, :T].permute(1, 2, 0)  # [T, V, H]
            contrib = W[torch.arange(T, device=tokens.device), tokens]  # [B, T, H]
        else:
            W = first.weight.view(-1, self.max_seq_len, self.cfg.d_model)[:, :T]  # [H, T, d]
            contrib = torch.einsum("hsd,bsd->bsh", W, self.embed(tokens))
        return contrib.cumsum(dim=1) + first.bias

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.acts[0](self.norms[0](self.input_preactivation(tokens)))
        for layer, norm, act in zip(self.layers[1:], self.norms[1:], self.acts[1:]):
            x = act(norm(layer(x)))
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))

    def unit_layers(self) -> list[UnitLayer]:
        outs = list(self.layers[1:]) + [self.head]
        return [
            UnitLayer(f"layer{i}", self.layers[i], self.acts[i], outs[i], self.init_stds[i])
            for i in range(self.cfg.depth)
        ]
