"""The logit layout Avalanche expects, and the criterion.

Avalanche treats the model's output as `[batch, classes, ...]`: `CrossEntropyLoss` takes `[B, C, d1]`
with `[B, d1]` targets, and LwF distils `out[:, units]` with a softmax over dim 1. Our models return
`[B, L, V]`, which LwF would silently read as L "classes" (it distils over sequence positions). So the
wrapper returns `[B, V, L]` (a transposed view, no copy), and the targets are the next tokens `[B, L]`
with `IGNORE_INDEX` where the position is not scored: `CrossEntropyLoss(ignore_index=IGNORE_INDEX)`
is then exactly `plasticity.module.sequence_loss(..., "sampled")`, the mean over scored positions.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100  # CrossEntropyLoss's default ignore_index


class SequenceLogits(nn.Module):
    """`model(tokens) -> [B, L, V]` seen as `tokens -> [B, V, L]`; `self.model` is the wrapped model
    (its parameters are the wrapper's, under the prefix `model.`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).transpose(1, 2)


def sequence_criterion() -> nn.Module:
    """Mean cross-entropy over scored positions (nats per scored token), on [B, V, L] logits."""
    return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)


def unwrap(model: nn.Module) -> nn.Module:
    """The [B, L, V] model inside a `SequenceLogits` (or the model itself)."""
    return model.model if isinstance(model, SequenceLogits) else model
