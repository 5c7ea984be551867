"""An LSTM baseline: token embedding -> nn.LSTM (n_layers, hidden) -> one GELU layer -> output head."""

from __future__ import annotations

import math

import torch
from torch import nn

from plasticity.models import ModelConfig, UnitLayer


class LSTM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        if cfg.hidden < 1 or cfg.n_layers < 1:
            raise ValueError(f"model.hidden={cfg.hidden}, model.n_layers={cfg.n_layers}: both must be >= 1")
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.lstm = nn.LSTM(
            cfg.d_model, cfg.hidden, num_layers=cfg.n_layers, batch_first=True,
            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
        )
        # The LSTM's gates are not "units" in the ReDo/CBP sense; this GELU layer is.
        self.fc = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = nn.GELU()
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
