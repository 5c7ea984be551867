"""The training loss at scored positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streams import Batch

LOSSES = ("sampled", "posterior")


def sequence_loss(logits: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Cross-entropy at scored positions, per scored token (nats).

    `sampled`: against the sampled next token (the realistic setting); `posterior`: against the exact
    posterior predictive (distillation, as in the paper's HMM runs).
    """
    mask = batch.scored
    logp = F.log_softmax(logits[mask].float(), dim=-1)
    if kind == "posterior":
        return -(batch.posterior[mask].to(logp.dtype) * logp).sum(-1).mean()
    targets = batch.tokens[:, 1:][mask[:, :-1]]
    return F.nll_loss(logp, targets)
