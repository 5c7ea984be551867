"""Dirichlet–categorical belief accumulation: i.i.d. symbols from a per-sequence θ ~ Dirichlet(α).

Token layout (V = 1 + n_symbols, T = length + 1):
    id 0                     BOS
    ids 1 .. n_symbols       symbols
    sequence                 BOS x1 x2 ... x_length

Positions 0 .. length-1 are scored. After BOS x1..x_n with counts c_k, the posterior predictive of the
next symbol is the Pólya-urn rule (c_k + α_k) / (n + Σα), with zero mass on BOS. Symbols come after the
special token, so raising n_symbols adds new tokens at the end of the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch, Family, register, sample_categorical, sample_dirichlet
from streams.checks import check_int, check_positive_floats
from streams.pool import mixture

BOS = 0


@register
@dataclass
class Dirichlet(Family):
    n_symbols: int = 4
    alpha: float | list[float] = 1.0  # one concentration for all symbols, or one per symbol
    length: int = 32

    name = "dirichlet"
    description = "i.i.d. symbols from a Dirichlet-drawn distribution; Polya-urn posterior"
    length_param = "length"

    def __post_init__(self) -> None:
        check_int(self.name, "n_symbols", self.n_symbols, 2)
        check_int(self.name, "length", self.length, 1)
        check_positive_floats(self.name, "alpha", self.alpha, self.n_symbols)

    @property
    def alphas(self) -> tuple[float, ...]:
        return check_positive_floats(self.name, "alpha", self.alpha, self.n_symbols)

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols

    @property
    def seq_len(self) -> int:
        return self.length + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample_tasks(self.draw_tasks(batch_size, generator), generator)

    # --- finite task pools (streams.pool): a task is θ
    def draw_tasks(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"theta": sample_dirichlet(self.alphas, (n,), generator)}  # [n, K] float64

    def pool_posterior(self, tasks: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Σ_k w_k θ_k, w_k ∝ Π θ_k[x_s] over the symbols seen."""
        theta = tasks["theta"]
        x = batch.tokens[:, 1:] - 1  # [B, L]
        B, L = x.shape
        log_theta = torch.log(theta)

        def loglik(sl):
            out = torch.zeros(B, sl.stop - sl.start, L + 1, dtype=torch.float64)
            out[:, :, 1:] = log_theta[sl][:, x].permute(1, 0, 2)
            return out

        posterior = torch.zeros(B, L + 1, self.vocab_size, dtype=torch.float64)
        posterior[:, :L, 1:] = mixture(len(theta), loglik,
                                       lambda w, sl: torch.einsum("bnt,nk->btk", w[:, :, :L], theta[sl]))
        return posterior

    def sample_tasks(self, tasks: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        theta = tasks["theta"]  # [B, K] float64
        (B, K), L = theta.shape, self.length
        alpha = torch.tensor(self.alphas, dtype=torch.float64)
        x = sample_categorical(theta[:, None, :].expand(B, L, K), generator)  # [B, L], 0..K-1
        tokens = torch.cat([torch.full((B, 1), BOS, dtype=torch.long), x + 1], dim=1)

        # Counts of x[:, :t] at position t (prefix BOS x1..x_t): an exclusive cumulative sum.
        onehot = torch.nn.functional.one_hot(x, K).to(torch.float64)
        counts = onehot.cumsum(1) - onehot
        n = torch.arange(L, dtype=torch.float64)[None, :, None]
        posterior = torch.zeros(B, L + 1, K + 1, dtype=torch.float64)
        posterior[:, :L, 1:] = (counts + alpha) / (n + alpha.sum())
        scored = torch.zeros(B, L + 1, dtype=torch.bool)
        scored[:, :L] = True
        return Batch(tokens, posterior, scored, {"theta": theta})
