"""The optimizer and the learning-rate schedule of every fit (native arms, pretraining, fresh learners, and
the Avalanche bridge's arms, which must train with exactly the same optimizer to be comparable)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant  (pretraining and single-phase runs)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    online_lr: float = 3e-4  # constant learning rate of online arms after pretraining
    fused: bool = False  # AdamW's fused kernel: on CPU 1.4% faster, not bit-identical (docs/benchmarks.md)
    optimizer: str = "adamw"  # adamw | sgd (plain SGD, the loss-of-plasticity papers' other optimizer)
    momentum: float = 0.0  # SGD's momentum


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD (L2 weight decay, optional momentum); weight decay on
    matrices only (embeddings and linear weights), not on biases and gains, nor on a parameter a model marks
    `no_weight_decay = True` (Mamba's A_log: decay would pull every state's rate toward one)."""
    def decays(p: nn.Parameter) -> bool:
        return p.ndim >= 2 and not getattr(p, "no_weight_decay", False)

    decay = [p for p in model.parameters() if decays(p)]
    no_decay = [p for p in model.parameters() if not decays(p)]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum)
    return torch.optim.AdamW(
        groups, lr=lr, betas=(optim.beta1, optim.beta2),
        **({"fused": True} if optim.fused else {}),  # the default path otherwise, as runs have always used
    )


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float):
    """Linear warmup then cosine decay to min_ratio (or constant after warmup)."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over `total` steps (see lr_lambda)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup, total, min_ratio))
