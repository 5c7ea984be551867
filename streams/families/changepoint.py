"""Change-points: a categorical source whose parameter is redrawn at random times (in-context drift).

Generative model. θ_1 ~ Dirichlet(α) and x_1 ~ Categorical(θ_1). Before each later symbol x_t
(t >= 2), with probability `hazard` a change-point occurs and θ_t is a fresh Dirichlet(α) draw,
independent of the past; otherwise θ_t = θ_{t-1}. Then x_t ~ Categorical(θ_t).

Tokens: 0 = BOS, 1..n_symbols = symbols (symbol k is token 1 + k). Sequence: BOS x_1..x_length.
Scored: positions 0..length-1 (position t predicts x_{t+1}).

Posterior: Bayesian online change-point detection (Adams & MacKay 2007, arXiv:0710.3742), exact, in
float64. After x_1..x_t, the current segment started after x_s for some s in 0..t-1 (run length
r = t - s); w_t(s) is its posterior. With c^{(s)} the symbol counts of x_{s+1}..x_t and A = Σα,
    P(x_{t+1} = k | x_1..x_t) = H α_k / A + (1 - H) Σ_s w_t(s) (c^{(s)}_k + α_k) / (r + A)
(a change before x_{t+1} starts a fresh segment; otherwise the current one continues), and for t = 0
it is α_k / A. Seeing x_{t+1} = k: w_{t+1}(t) ∝ H α_k / A and
w_{t+1}(s) ∝ (1 - H) w_t(s) (c^{(s)}_k + α_k) / (r + A).
Counts come from prefix sums, so a step is O(t K) tensor work over the whole batch.

latent: "theta" [B, length, K] (the θ that generated each symbol), "change" [B, length] (True where a
fresh θ was drawn for that symbol; always True for x_1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch, Family, register, sample_categorical, sample_dirichlet
from streams.checks import check_int, check_open_unit, check_positive_floats
from streams.pool import mixture

NAME = "changepoint"


def bocpd_predictive(x: torch.Tensor, alpha: torch.Tensor, hazard: float) -> torch.Tensor:
    """P(x_{t+1} = . | x_1..x_t) for t = 0..L-1, float64 [B, L, K], for symbols x [B, L] (0-based),
    Dirichlet parameters alpha [K] and constant hazard."""
    B, L = x.shape
    K = alpha.shape[0]
    a = alpha.to(torch.float64)
    A = float(a.sum())
    H = float(hazard)
    prefix = torch.zeros(B, L, K, dtype=torch.float64)  # prefix[:, s] = counts of x_1..x_s
    prefix[:, 1:] = torch.nn.functional.one_hot(x[:, :-1], K).to(torch.float64).cumsum(1)
    steps = torch.arange(L, dtype=torch.float64)
    # inv_denom[t, s] = 1 / ((t - s) + A): the Dirichlet predictive's normalizer for a run of length t - s
    inv_denom = 1.0 / ((steps[:, None] - steps[None, :]).clamp(min=0) + A)
    a_seen = a[x]  # [B, L]: α of each observed symbol
    # A fresh segment's weight relative to a continuing one, (H α_k / A) / (1 - H), for k = x_{t+1}.
    fresh_weight = a_seen * (H / ((1 - H) * A))

    # v_t(s) = w_t(s) / (t - s + A), where w_t(s) is the posterior that the current segment started after
    # x_s; the continuing segment's predictive is Σ_s v_t(s) (prefix_t - prefix_s + α). The v_t rows are
    # gathered in chunks of positions and contracted with prefix by one bmm per chunk (a full [B, L, L]
    # buffer would be as fast to fill but slow to allocate at L = 128).
    vsum = torch.empty(B, L, 1, dtype=torch.float64)
    vcounts = torch.empty(B, L, K, dtype=torch.float64)
    chunk = min(L, 32)
    v = torch.zeros(B, chunk, L, dtype=torch.float64)
    counts_by_symbol = prefix.transpose(1, 2).contiguous()  # [B, K, L]
    rows = torch.arange(B)
    w = torch.ones(B, 1, dtype=torch.float64)  # w_1 over s = 0: x_1 always starts the first segment
    for t0 in range(0, L, chunk):
        n = min(chunk, L - t0)
        for t in range(max(t0, 1), t0 + n):
            # Row t of the chunk has support s < t; entries beyond are zero or stale zeros from before.
            vt = torch.mul(w, inv_denom[t, :t], out=v[:, t - t0, :t])
            if t == L - 1:
                break
            # Seeing x_{t+1} = k: a continuing run s is weighted by (c^{(s)}_k + α_k) / (t - s + A).
            seen = counts_by_symbol[:, :, : t + 1][rows, x[:, t]]  # seen[:, s] = prefix[:, s, k]
            w = vt * (seen[:, t:] + a_seen[:, t : t + 1] - seen[:, :t])
            w = torch.cat([w, fresh_weight[:, t : t + 1]], 1)
            w = w / w.sum(-1, keepdim=True)
        vsum[:, t0 : t0 + n] = v[:, :n].sum(-1, keepdim=True)
        vcounts[:, t0 : t0 + n] = torch.bmm(v[:, :n], prefix)

    cont = (prefix + a) * vsum - vcounts
    pred = H * (a / A) + (1 - H) * cont
    pred[:, 0] = a / A
    return pred


@register
@dataclass
class Changepoint(Family):
    n_symbols: int = 4
    alpha: float | list[float] = 1.0
    hazard: float = 0.05
    length: int = 32

    name = NAME
    description = "Categorical source whose Dirichlet-drawn parameter changes at random times (exact BOCPD)"
    length_param = "length"

    def __post_init__(self) -> None:
        check_int(NAME, "n_symbols", self.n_symbols, 2)
        self._alpha = check_positive_floats(NAME, "alpha", self.alpha, self.n_symbols)
        check_open_unit(NAME, "hazard", self.hazard)
        check_int(NAME, "length", self.length, 1)

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols

    @property
    def seq_len(self) -> int:
        return 1 + self.length

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample_tasks(self.draw_tasks(batch_size, generator), generator)

    # --- finite task pools (streams.pool): a task is a whole trajectory of θ (its change-points included)
    def draw_tasks(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        K, L = self.n_symbols, self.length
        candidates = sample_dirichlet(self._alpha, (n, L), generator)
        change = torch.rand(n, L, generator=generator, dtype=torch.float64) < self.hazard
        change[:, 0] = True
        segment = change.long().cumsum(1) - 1  # θ_t is the candidate drawn at the segment's start
        return {"theta": candidates.gather(1, segment[..., None].expand(n, L, K)), "change": change}

    def pool_posterior(self, tasks: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Σ_k w_k θ_k(t+1), w_k ∝ Π_{s<=t} θ_k(s)[x_s]: a trajectory explains the symbols or it does not."""
        theta = tasks["theta"]  # [N, L, K]
        if theta.shape[1] != self.length:
            raise ValueError(f"{NAME}: a pool's tasks are trajectories of {theta.shape[1]} symbols, not {self.length}")
        x = batch.tokens[:, 1:] - 1
        B, L = x.shape
        log_theta = torch.log(theta)
        steps = torch.arange(L)

        def loglik(sl):
            out = torch.zeros(B, sl.stop - sl.start, L + 1, dtype=torch.float64)
            out[:, :, 1:] = log_theta[sl][:, steps[None, :], x].permute(1, 0, 2)
            return out

        posterior = torch.zeros(B, L + 1, self.vocab_size, dtype=torch.float64)
        posterior[:, :L, 1:] = mixture(len(theta), loglik,
                                       lambda w, sl: torch.einsum("bnt,ntk->btk", w[:, :, :L], theta[sl]))
        return posterior

    def sample_tasks(self, tasks: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        theta, change = tasks["theta"], tasks["change"]
        (B, L, K) = theta.shape
        x = sample_categorical(theta, generator)

        tokens = torch.zeros(B, L + 1, dtype=torch.long)
        tokens[:, 1:] = 1 + x
        posterior = torch.zeros(B, L + 1, K + 1, dtype=torch.float64)
        alpha = torch.tensor(self._alpha, dtype=torch.float64)
        posterior[:, :L, 1:] = bocpd_predictive(x, alpha, self.hazard)
        scored = torch.zeros(B, L + 1, dtype=torch.bool)
        scored[:, :L] = True
        return Batch(tokens, posterior, scored, {"theta": theta, "change": change})
