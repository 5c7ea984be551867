"""Hidden Markov models: belief transport (task B of Agarwal, Dalal & Misra, arXiv:2512.22471).

Generative model. The hidden chain starts in a uniformly random state s_1 (the initial distribution
is uniform over the n_states states, for every HMM); then s_{t+1} ~ T[s_t, :] and o_t ~ E[s_t, :].
`T[s, s']` = P(s_{t+1} = s' | s_t = s), `E[s, o]` = P(o_t = o | s_t = s).

header=True (default): every sequence has its own random HMM, shown to the model in a header.
    Each row of T is drawn from Dirichlet(concentration, with `stickiness` added to the diagonal
    entry's concentration), each row of E from Dirichlet(concentration). Every row is then put on the
    grid: with m = 1/grid units, each entry gets one unit (so every probability is >= grid > 0) and the
    other m - n units are shared by the largest-remainder method, so a row sums to exactly m units. The
    model reads exactly the numbers the oracle uses.
    Tokens: 0 = SEP, 1..n_symbols = observation symbols (symbol o is token 1 + o),
    n_symbols + 1 + j = the grid value j * grid, for j = 0..m.
    Sequence: T row-major, then E row-major, as grid tokens (n_states^2 + n_states * n_symbols tokens),
    then SEP, then `length` observations.
    Scored: the SEP position and every observation but the last (each predicts the next observation).
header=False: one fixed HMM given by `transition` and `emission` (rows renormalized in float64).
    Tokens: 0 = SEP, 1..n_symbols = observations. Sequence: SEP o_1..o_length; scored 0..length-1.

Posterior: the forward filter in float64 (renormalized as often as underflow requires; see
`forward_predictive`). With b_t the distribution of s_t given
o_1..o_{t-1} (b_1 uniform), the next-observation predictive is b_t E; after o_t is seen,
b_{t+1} ∝ (b_t ⊙ E[:, o_t]) T. Batched over per-sequence T [B, S, S] and E [B, S, K]
(S = n_states, K = n_symbols).

latent: "transition" [B, S, S], "emission" [B, S, K] (float64), "states" [B, length] (long, 0-based).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from streams.base import Batch, Family, register, sample_categorical, sample_dirichlet
from streams.checks import check_int

NAME = "hmm"


def _check_float(param: str, value: Any, low: float, inclusive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    ok = ok and (float(value) >= low if inclusive else float(value) > low)
    if not ok:
        op = ">=" if inclusive else ">"
        raise ValueError(f"{NAME}.{param}={value!r}: must be a finite float {op} {low}")
    return float(value)


def _check_stochastic(param: str, value: Any, rows: int, cols: int) -> torch.Tensor:
    """A rows x cols row-stochastic matrix given as nested lists; returned renormalized in float64."""
    shape_msg = f"{NAME}.{param}: must be a {rows} x {cols} list of lists of probabilities"
    if value is None:
        raise ValueError(f"{NAME}.{param}=None: header=False needs a {rows} x {cols} row-stochastic matrix")
    try:
        m = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{shape_msg}; got {value!r}") from e
    if m.shape != (rows, cols):
        raise ValueError(f"{shape_msg}; got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"{NAME}.{param}={value!r}: entries must be finite and >= 0")
    sums = m.sum(-1)
    if ((sums - 1).abs() > 1e-9).any():
        raise ValueError(
            f"{NAME}.{param}={value!r}: every row must sum to 1 (within 1e-9); row sums {sums.tolist()}"
        )
    return m / sums[:, None]


def round_to_grid(p: torch.Tensor, m: int) -> torch.Tensor:
    """Integer units [..., n] for probability rows p [..., n]: each entry gets 1 unit, the other m - n
    are shared in proportion to p by the largest-remainder method (ties to the lower index), so each
    row sums to exactly m and every entry is within one unit of 1 + p * (m - n)."""
    n = p.shape[-1]
    q = p.to(torch.float64) * (m - n)
    floor = q.floor()
    leftover = (m - n) - floor.sum(-1, keepdim=True).long()  # in [0, n]: sum q = m - n up to rounding
    order = torch.argsort(floor - q, dim=-1, stable=True)  # largest remainder first
    bonus = torch.zeros_like(order).scatter_(-1, order, (torch.arange(n) < leftover).long())  # the first `leftover`
    return 1 + floor.long() + bonus


def grid_draw(units: torch.Tensor, rows: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Exact draws from rows of integer units: `units` [B, R, n] with every row summing to m, `rows`
    [B, ...] row indices; returns [B, ...] categories c with probability units[b, row, c] / m. Each row's
    categories are laid end to end over m cells (a lookup table), and a cell r ~ U{0..m-1} picks one."""
    B, R, n = units.shape
    table = torch.repeat_interleave(torch.arange(n).repeat(B * R), units.reshape(-1))  # [B * R * m]
    cell = torch.randint(m, rows.shape, generator=generator)
    base = torch.arange(B).reshape(B, *([1] * (rows.dim() - 1))) * R
    return torch.take(table, (base + rows) * m + cell)


def compose_moves(moves: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """States [B, L] of Markov chains started in `first` [B] from per-step moves [B, L-1, S] (s_{t+1} =
    moves[t][s_t]), without a loop over time: the moves are composed by a log-depth prefix scan (pointer
    jumping). With every move m_t(s) drawn from T[s, :] independently of s_t, the states have the chain's
    law; drawing a move for every possible state at once is what removes the sequential sampling loop."""
    B, steps = moves.shape[:2]
    d = 1
    while d < steps:  # moves[:, t] maps s_{max(0, t+1-2d)} to s_{t+1}
        moves = torch.cat([moves[:, :d], moves[:, d:].gather(2, moves[:, :-d])], dim=1)
        d *= 2
    later = moves.gather(2, first[:, None, None].expand(B, steps, 1)).squeeze(-1)
    return torch.cat([first[:, None], later], dim=1)


def forward_predictive(obs: torch.Tensor, transition: torch.Tensor, emission: torch.Tensor,
                       emission_floor: float = 0.0) -> torch.Tensor:
    """P(o_{t+1} = . | o_1..o_t) for t = 0..L-1, as float64 [B, L, K], for observations obs [B, L]
    (0-based symbols), transition [B, S, S] and emission [B, S, K], uniform initial state.

    The belief is carried unnormalized (the predictive is normalized at the end, so its scale cancels)
    and renormalized only as often as underflow requires: each step multiplies its total mass by
    sum_s b(s) E[s, o] >= emission_floor (rows of T sum to 1), so with a positive `emission_floor` (a
    lower bound on every emission probability: the grid step for header HMMs) renormalizing every
    k = 200 / log10(1 / floor) steps keeps the mass above 1e-200. Without one, every step."""
    B, L = obs.shape
    S, K = emission.shape[1:]
    T = transition.to(torch.float64)
    E = emission.to(torch.float64)
    every = max(1, int(200 / math.log10(1 / emission_floor))) if 0 < emission_floor < 1 else 1
    # time-major, so that every step writes one contiguous block: likelihood[t, b, 0, s] = E[b, s, o_t]
    likelihood = E.gather(2, obs[:, None, :].expand(B, S, L)).permute(2, 0, 1)[:, :, None]
    belief = torch.empty(L, B, 1, S, dtype=torch.float64)  # ∝ distribution of s_{t+1} given o_1..o_t
    belief[0] = 1.0 / S
    for t in range(L - 1):
        torch.bmm(belief[t] * likelihood[t], T, out=belief[t + 1])
        if (t + 1) % every == 0:
            belief[t + 1] /= belief[t + 1].sum(-1, keepdim=True)
    pred = torch.bmm(belief[:, :, 0].transpose(0, 1), E)
    return pred / pred.sum(-1, keepdim=True)


@register
@dataclass
class HMM(Family):
    n_states: int = 5
    n_symbols: int = 5
    length: int = 32
    header: bool = True
    transition: list[list[float]] | None = None
    emission: list[list[float]] | None = None
    concentration: float = 1.0
    grid: float = 0.05
    stickiness: float = 0.0

    name = NAME
    description = "Hidden Markov models (random per sequence, shown in a grid-token header, or one fixed HMM)"
    length_param = "length"

    def __post_init__(self) -> None:
        check_int(NAME, "n_states", self.n_states, 1)
        check_int(NAME, "n_symbols", self.n_symbols, 2)
        check_int(NAME, "length", self.length, 1)
        if not isinstance(self.header, bool):
            raise ValueError(f"{NAME}.header={self.header!r}: must be true or false")
        _check_float("concentration", self.concentration, 0.0, inclusive=False)
        _check_float("stickiness", self.stickiness, 0.0, inclusive=True)
        grid = self.grid
        if isinstance(grid, bool) or not isinstance(grid, (int, float)) or not 0.0 < float(grid) < 1.0:
            raise ValueError(f"{NAME}.grid={grid!r}: must be a float in the open interval (0, 1)")
        inv = 1.0 / float(grid)
        if abs(inv - round(inv)) >= 1e-9:
            raise ValueError(
                f"{NAME}.grid={grid!r}: must be in (0, 1) and divide 1 exactly "
                f"(1/grid = {inv:.6g} is not an integer)"
            )
        self._units = round(inv)
        if self.header:
            need = max(self.n_states, self.n_symbols)
            if self._units < need:
                raise ValueError(
                    f"{NAME}.grid={grid!r}: must be <= 1/max(n_states, n_symbols) = 1/{need} so that every "
                    f"probability can be at least grid"
                )
            for param in ("transition", "emission"):
                if getattr(self, param) is not None:
                    raise ValueError(
                        f"{NAME}.{param}: only used with header=False "
                        f"(header=True draws a random HMM per sequence)"
                    )
        else:
            self._transition = _check_stochastic("transition", self.transition, self.n_states, self.n_states)
            self._emission = _check_stochastic("emission", self.emission, self.n_states, self.n_symbols)

    @property
    def header_len(self) -> int:
        return self.n_states * (self.n_states + self.n_symbols) if self.header else 0

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_symbols + (self._units + 1 if self.header else 0)

    @property
    def seq_len(self) -> int:
        return self.header_len + 1 + self.length

    def _random_hmms(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid units of per-sequence T [B, S, S] and E [B, S, K]."""
        S, K = self.n_states, self.n_symbols
        alpha_t = torch.full((S, S), float(self.concentration), dtype=torch.float64)
        alpha_t += float(self.stickiness) * torch.eye(S, dtype=torch.float64)
        t = sample_dirichlet(alpha_t.numpy(), (batch_size, S), generator)
        e = sample_dirichlet((float(self.concentration),) * K, (batch_size, S), generator)
        return round_to_grid(t, self._units), round_to_grid(e, self._units)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        first = torch.randint(self.n_states, (batch_size,), generator=generator)
        return self._sequences(self.draw_tasks(batch_size, generator), first, generator)

    # --- finite task pools (streams.pool): a task is the HMM (its grid units, shown in the header)
    def draw_tasks(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not self.header:  # one fixed HMM: every task is the same
            return {"fixed": torch.zeros(n, dtype=torch.long)}
        t_units, e_units = self._random_hmms(n, generator)
        return {"t_units": t_units, "e_units": e_units}

    def sample_tasks(self, tasks: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        n = len(next(iter(tasks.values())))
        return self._sequences(tasks, torch.randint(self.n_states, (n,), generator=generator), generator)

    def pool_posterior(self, tasks: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The family's own posterior: the header shows the sequence's HMM exactly (and a fixed HMM is every
        task), so the pool cannot tell more than the filter that reads it."""
        return batch.posterior

    def _sequences(self, tasks: dict[str, torch.Tensor], first: torch.Tensor, generator: torch.Generator) -> Batch:
        B, S, K, L, m = len(first), self.n_states, self.n_symbols, self.length, self._units
        if self.header:  # integer grid units: exact draws by table lookup
            t_units, e_units = tasks["t_units"], tasks["e_units"]
            T = t_units.to(torch.float64) / m
            E = e_units.to(torch.float64) / m
            moves = grid_draw(t_units, torch.arange(S).expand(B, L - 1, S), m, generator)
            states = compose_moves(moves, first)
            obs = grid_draw(e_units, states, m, generator)
        else:
            T = self._transition.expand(B, S, S)
            E = self._emission.expand(B, S, K)
            states = compose_moves(sample_categorical(T[:, None].expand(B, L - 1, S, S), generator), first)
            obs = sample_categorical(E.gather(1, states[..., None].expand(B, L, K)), generator)

        H = self.header_len
        tokens = torch.empty(B, self.seq_len, dtype=torch.long)
        if self.header:
            tokens[:, :H] = 1 + K + torch.cat([t_units.reshape(B, -1), e_units.reshape(B, -1)], dim=1)
        tokens[:, H] = 0
        tokens[:, H + 1 :] = 1 + obs

        posterior = torch.zeros(B, self.seq_len, self.vocab_size, dtype=torch.float64)
        floor = 1.0 / m if self.header else 0.0  # every header probability is at least one grid unit
        posterior[:, H : H + L, 1 : 1 + K] = forward_predictive(obs, T, E, floor)
        scored = torch.zeros(B, self.seq_len, dtype=torch.bool)
        scored[:, H : H + L] = True
        latent = {"transition": T, "emission": E, "states": states}
        return Batch(tokens, posterior, scored, latent)
