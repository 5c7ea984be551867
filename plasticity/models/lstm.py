"""An LSTM baseline: token embedding -> nn.LSTM (n_layers, hidden) -> one GELU layer -> output head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from plasticity.models.registry import register
from plasticity.models.units import UnitLayer, activation, check_activation
from streams.checks import check_int


@dataclass
class LSTMConfig:
    n_layers: int = 2  # stacked LSTM layers
    hidden: int = 256  # LSTM hidden size (and the width of the GELU layer after it)
    d_model: int = 64  # token-embedding width
    dropout: float = 0.0  # between LSTM layers
    activation: str = "gelu"  # of the hidden layer after the LSTM: gelu | relu | tanh

    def __post_init__(self) -> None:
        check_activation(self.activation)
        check_int("model", "n_layers", self.n_layers, 1, 1024)
        check_int("model", "hidden", self.hidden, 1)
        check_int("model", "d_model", self.d_model, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout={self.dropout!r}: must be in [0, 1)")


@register
class LSTM(nn.Module):
    name = "lstm"
    description = "LSTM over token embeddings, then one GELU layer"
    Config = LSTMConfig
    width_param = "hidden"

    def __init__(self, cfg: LSTMConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(
            cfg.d_model, cfg.hidden, num_layers=cfg.n_layers, batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        # The LSTM's gates are not "units" in the ReDo/CBP sense; this GELU layer is.
        self.fc = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = activation(cfg.activation)
        self.head = nn.Linear(cfg.hidden, vocab_size)
        self.init_std = 1.0 / math.sqrt(cfg.hidden)
        for layer in (self.fc, self.head):
            nn.init.normal_(layer.weight, std=self.init_std)
            nn.init.zeros_(layer.bias)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        return self.act(self.fc(h))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))

    def unit_layers(self) -> list[UnitLayer]:
        return [UnitLayer("fc", self.fc, self.act, self.head, self.init_std)]
