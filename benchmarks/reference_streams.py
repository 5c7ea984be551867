"""Per-sequence reference implementations of the five task families, for benchmarks/bench_streams.py.

This is how research code usually generates these tasks: one Python loop over sequences, and inside it
one over positions, with numpy for the small vectors (a forward filter per sequence, BOCPD per
sequence). They are written to be reasonably fast *for that style* — numpy Generators, vectorized
draws within a sequence where that is the natural thing to do, no needless copies — so that the
speedup bench_streams.py reports is against an honest baseline, not a strawman.

Each family has
- `<family>_posterior(tokens, ...) -> (posterior [T, V] float64, scored [T] bool)`: the exact
  posterior predictive at every position, computed from the tokens of ONE sequence alone. The
  benchmark feeds the vectorized family's own sampled tokens through these and checks they agree to
  1e-9, so both sides compute the same thing.
- `sample_<family>(batch_size, rng, ...) -> (tokens [B, T], posterior [B, T, V], scored [B, T])`:
  draws the tasks and tokens sequence by sequence, calls the posterior function on each, and stacks
  the batch into torch tensors (what a training loop would consume).

Token layouts are those of streams/families/*.py (see their docstrings).
"""

from __future__ import annotations

import bisect

import numpy as np
import torch


def _stack(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    tokens, post, scored = zip(*rows)
    return (torch.from_numpy(np.stack(tokens)), torch.from_numpy(np.stack(post)),
            torch.from_numpy(np.stack(scored)))


# ---------------------------------------------------------------------------------------------------
# Bijection: k1 v1 ... kP vP; keys 0..K-1, values K..2K-1.


def bijection_posterior(tokens, n_keys: int):
    K = n_keys
    T = len(tokens)
    post = np.zeros((T, 2 * K))
    scored = np.zeros(T, dtype=bool)
    used: set[int] = set()  # values shown so far
    bound: dict[int, int] = {}  # key -> value, for keys shown so far
    for i in range(0, T, 2):
        key, value = int(tokens[i]), int(tokens[i + 1]) - K
        scored[i] = True
        if key in bound:
            post[i, K + bound[key]] = 1.0
        else:
            free = [v for v in range(K) if v not in used]
            post[i, [K + v for v in free]] = 1.0 / len(free)
        bound[key] = value
        used.add(value)
    return post, scored


def sample_bijection(batch_size: int, rng: np.random.Generator, n_keys: int = 8, n_pairs: int | None = None):
    K = n_keys
    P = K if n_pairs is None else n_pairs
    rows = []
    for _ in range(batch_size):
        perm = rng.permutation(K)  # perm[k]: value bound to key k
        keys = rng.permutation(K)[:P]
        tokens = np.empty(2 * P, dtype=np.int64)
        tokens[0::2] = keys
        tokens[1::2] = K + perm[keys]
        post, scored = bijection_posterior(tokens, K)
        rows.append((tokens, post, scored))
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------
# Recall: k1 v1 ... kP vP QUERY q1 a1 ... qQ aQ; QUERY 0, keys 1..K, values K+1..K+NV.


def recall_posterior(tokens, n_keys: int, n_values: int):
    K, NV = n_keys, n_values
    T = len(tokens)
    post = np.zeros((T, 1 + K + NV))
    scored = np.zeros(T, dtype=bool)
    bound: dict[int, int] = {}
    i = 0
    while i < T - 1:
        if tokens[i] == 0:  # the QUERY marker
            i += 1
            continue
        key, value = int(tokens[i]), int(tokens[i + 1])
        scored[i] = True
        if key in bound:
            post[i, bound[key]] = 1.0
        else:
            post[i, 1 + K :] = 1.0 / NV
        bound[key] = value
        i += 2
    return post, scored


def sample_recall(batch_size: int, rng: np.random.Generator, n_keys: int = 8, n_values: int = 8,
                  n_pairs: int = 8, n_queries: int = 4):
    K, NV, P, Q = n_keys, n_values, n_pairs, n_queries
    rows = []
    for _ in range(batch_size):
        table = rng.integers(0, NV, K)
        keys = rng.integers(0, K, P + Q)
        pairs = np.empty(2 * (P + Q), dtype=np.int64)
        pairs[0::2] = keys + 1
        pairs[1::2] = table[keys] + 1 + K
        tokens = np.concatenate([pairs[: 2 * P], [0], pairs[2 * P :]]).astype(np.int64)
        post, scored = recall_posterior(tokens, K, NV)
        rows.append((tokens, post, scored))
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------
# Dirichlet–categorical: BOS x1 .. xL; BOS 0, symbols 1..K.


def dirichlet_posterior(tokens, alpha: np.ndarray):
    K = len(alpha)
    L = len(tokens) - 1
    post = np.zeros((L + 1, K + 1))
    scored = np.zeros(L + 1, dtype=bool)
    counts = np.zeros(K)
    A = alpha.sum()
    for t in range(L):
        post[t, 1:] = (counts + alpha) / (t + A)
        scored[t] = True
        counts[tokens[t + 1] - 1] += 1
    return post, scored


def sample_dirichlet(batch_size: int, rng: np.random.Generator, n_symbols: int = 4, alpha: float = 1.0,
                     length: int = 32):
    a = np.full(n_symbols, float(alpha))
    rows = []
    for _ in range(batch_size):
        theta = rng.dirichlet(a)
        x = rng.choice(n_symbols, size=length, p=theta)
        tokens = np.concatenate([[0], x + 1]).astype(np.int64)
        post, scored = dirichlet_posterior(tokens, a)
        rows.append((tokens, post, scored))
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------
# HMM with a grid-token header: T row-major, E row-major as grid tokens, SEP, o_1..o_L.
# Tokens: 0 = SEP, 1..O symbols, O+1+j = grid value j/m.


def hmm_posterior(tokens, n_states: int, n_symbols: int, units: int):
    """Reads T and E back from the header tokens, then runs the forward filter."""
    S, NO, m = n_states, n_symbols, units
    H = S * S + S * NO
    grid = (np.asarray(tokens[:H], dtype=np.float64) - (NO + 1)) / m
    Tm = grid[: S * S].reshape(S, S)
    E = grid[S * S :].reshape(S, NO)
    obs = np.asarray(tokens[H + 1 :]) - 1
    L = len(obs)
    post = np.zeros((len(tokens), 1 + NO + m + 1))
    scored = np.zeros(len(tokens), dtype=bool)
    belief = np.full(S, 1.0 / S)  # distribution of the next hidden state given the observations so far
    for t in range(L):
        pred = belief @ E
        post[H + t, 1 : 1 + NO] = pred / pred.sum()
        scored[H + t] = True
        filtered = belief * E[:, obs[t]]
        belief = (filtered / filtered.sum()) @ Tm
    return post, scored


def _round_to_grid(p: np.ndarray, m: int) -> np.ndarray:
    """Integer units per row: one each, the other m - n by largest remainder (ties to the lower index)."""
    n = p.shape[-1]
    q = p * (m - n)
    floor = np.floor(q)
    units = 1 + floor.astype(np.int64)
    for row in range(p.shape[0]):
        leftover = (m - n) - int(floor[row].sum())
        order = np.argsort(floor[row] - q[row], kind="stable")
        units[row, order[:leftover]] += 1
    return units


def sample_hmm(batch_size: int, rng: np.random.Generator, n_states: int = 5, n_symbols: int = 5,
               length: int = 32, concentration: float = 1.0, grid: float = 0.05):
    S, NO, L = n_states, n_symbols, length
    m = round(1 / grid)
    rows = []
    for _ in range(batch_size):
        t_units = _round_to_grid(rng.dirichlet(np.full(S, concentration), size=S), m)
        e_units = _round_to_grid(rng.dirichlet(np.full(NO, concentration), size=S), m)
        # Inverse-CDF draws on Python lists (bisect beats numpy calls on 5-element rows).
        cum_t = np.cumsum(t_units, axis=1).tolist()
        cum_e = np.cumsum(e_units, axis=1).tolist()
        u = (rng.random(2 * L) * m).tolist()
        s = int(rng.integers(S))
        obs = np.empty(L, dtype=np.int64)
        for t in range(L):
            obs[t] = min(bisect.bisect_right(cum_e[s], u[t]), NO - 1)
            s = min(bisect.bisect_right(cum_t[s], u[L + t]), S - 1)
        header = NO + 1 + np.concatenate([t_units.ravel(), e_units.ravel()])
        tokens = np.concatenate([header, [0], obs + 1]).astype(np.int64)
        post, scored = hmm_posterior(tokens, S, NO, m)
        rows.append((tokens, post, scored))
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------
# Change-points (BOCPD, Adams & MacKay 2007): BOS x1 .. xL; BOS 0, symbols 1..K.


def changepoint_posterior(tokens, alpha: np.ndarray, hazard: float):
    """Run-length recursion with per-run-length Dirichlet counts, one sequence at a time."""
    K = len(alpha)
    A = alpha.sum()
    H = hazard
    x = np.asarray(tokens[1:]) - 1
    L = len(x)
    post = np.zeros((L + 1, K + 1))
    scored = np.zeros(L + 1, dtype=bool)
    post[0, 1:] = alpha / A
    scored[0] = True
    # Preallocated buffers, one row per run: run j began with symbol x[j] (0-based), so after x[0..t-1]
    # runs 0..t-1 are alive, run j has length t - j, and its symbol counts are counts[j].
    weights = np.zeros(L)
    counts = np.zeros((L, K))
    weights[0] = 1.0
    counts[0, x[0]] = 1
    starts = np.arange(L, dtype=np.float64)
    fresh = H * alpha / A
    for t in range(1, L):
        n = t
        run_pred = (counts[:n] + alpha) / ((t + A) - starts[:n])[:, None]  # [runs, K]
        post[t, 1:] = fresh + (1 - H) * (weights[:n] @ run_pred)
        scored[t] = True
        k = x[t]
        weights[:n] *= (1 - H) * run_pred[:, k]
        weights[n] = fresh[k]
        weights[: n + 1] /= weights[: n + 1].sum()
        counts[: n + 1, k] += 1
    return post, scored


def sample_changepoint(batch_size: int, rng: np.random.Generator, n_symbols: int = 4, alpha: float = 1.0,
                       hazard: float = 0.05, length: int = 32):
    a = np.full(n_symbols, float(alpha))
    rows = []
    for _ in range(batch_size):
        x = np.empty(length, dtype=np.int64)
        change = (rng.random(length) < hazard).tolist()
        u = rng.random(length).tolist()
        cdf = np.cumsum(rng.dirichlet(a)).tolist()
        for t in range(length):
            if t > 0 and change[t]:
                cdf = np.cumsum(rng.dirichlet(a)).tolist()
            x[t] = min(bisect.bisect_right(cdf, u[t] * cdf[-1]), n_symbols - 1)
        tokens = np.concatenate([[0], x + 1]).astype(np.int64)
        post, scored = changepoint_posterior(tokens, a, hazard)
        rows.append((tokens, post, scored))
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------
# Causal: [marker x_1..x_n] × rows; values 0..K-1, OBS K, DO(j, v) K+1+j·K+v; BDeu tables; every DAG.


def _dags(n: int) -> list[list[list[int]]]:
    """Every DAG on n nodes as parent lists, by trying every edge set and keeping the acyclic ones."""
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    out = []
    for mask in range(1 << len(pairs)):
        parents = [[i for b, (i, j) in enumerate(pairs) if mask >> b & 1 and j == k] for k in range(n)]
        order, left = [], set(range(n))
        while left:
            ready = [k for k in left if all(p in order for p in parents[k])]
            if not ready:
                break
            order += ready
            left -= set(ready)
        if not left:
            out.append(parents)
    return out


def causal_posterior(tokens, n_nodes: int, n_values: int, alpha: float):
    """Per DAG: Dirichlet counts per (node, parent values) and the log-likelihood of the rows so far; per
    row, each DAG's joint over all assignments (numpy), mixed by the DAG weights and conditioned value by value."""
    n, K = n_nodes, n_values
    dags = _dags(n)
    T = len(tokens)
    post = np.zeros((T, K + 1 + n * K))
    scored = np.zeros(T, dtype=bool)
    grid = np.array(list(np.ndindex(*[K] * n)))  # [K^n, n]
    # dag -> node -> counts [K] * n_parents + [K]
    counts = [[np.zeros([K] * len(parents[k]) + [K]) for k in range(n)] for parents in dags]
    loglik = np.zeros(len(dags))
    for r in range(0, T, n + 1):
        marker, x = int(tokens[r]), [int(t) for t in tokens[r + 1 : r + n + 1]]
        j, v = (-1, -1) if marker == K else divmod(marker - K - 1, K)
        joints = np.ones((len(dags), len(grid)))
        for g, parents in enumerate(dags):
            for k in range(n):
                if k != j:
                    a = alpha / K ** len(parents[k])
                    cfg = tuple(grid[:, parents[k]].T)
                    c = counts[g][k]
                    joints[g] *= (c[cfg + (grid[:, k],)] + a) / (c.sum(-1)[cfg] + K * a)
        w = np.exp(loglik - loglik.max())
        mix = (w[:, None] * joints).sum(0) / w.sum()
        if j >= 0:
            mix = mix * (grid[:, j] == v)
        for i in range(n):
            if i == j:
                continue
            keep = np.all(grid[:, :i] == x[:i], axis=1)
            p = np.array([mix[keep & (grid[:, i] == u)].sum() for u in range(K)])
            post[r + i, :K] = p / p.sum()
            scored[r + i] = True
        observed = int(np.ravel_multi_index(x, [K] * n))
        for g, parents in enumerate(dags):
            loglik[g] += np.log(joints[g][observed])
            for k in range(n):
                if k != j:
                    counts[g][k][tuple(x[p] for p in parents[k]) + (x[k],)] += 1
    return post, scored


def sample_causal(batch_size: int, rng: np.random.Generator, n_nodes: int = 3, n_values: int = 3, n_rows: int = 8,
                  alpha: float = 1.0, p_intervene: float = 0.5):
    n, K = n_nodes, n_values
    dags = _dags(n)
    rows = []
    for _ in range(batch_size):
        parents = dags[rng.integers(len(dags))]
        tables = [{} for _ in range(n)]
        tokens = []
        for _ in range(n_rows):
            do = rng.random() < p_intervene
            j, v = int(rng.integers(n)), int(rng.integers(K))
            x = [None] * n
            while None in x:  # ancestral order: a node once its parents have values
                for k in range(n):
                    if x[k] is None and all(x[p] is not None for p in parents[k]):
                        if do and k == j:
                            x[k] = v
                            continue
                        key = tuple(x[p] for p in parents[k])
                        if key not in tables[k]:
                            tables[k][key] = rng.dirichlet(np.full(K, alpha / K ** len(parents[k])))
                        x[k] = int(min(np.searchsorted(np.cumsum(tables[k][key]), rng.random()), K - 1))
            tokens += [K + 1 + j * K + v if do else K, *x]
        tokens = np.array(tokens, dtype=np.int64)
        post, scored = causal_posterior(tokens, n, K, alpha)
        rows.append((tokens, post, scored))
    return _stack(rows)
