"""A causal wind tunnel: rows of a discrete causal model, some under interventions, with Bayesian model
averaging over every DAG.

Token layout (K = n_values, n = n_nodes; V = K + 1 + n·K, T = n_rows · (n + 1)):
    ids 0 .. K-1                 values
    id K                         OBS: the row is observational
    id K+1 + j·K + v             DO(j, v): in this row X_j is set to v (an intervention)
    sequence                     [marker x_1 .. x_n] × n_rows   (markers, then the values in node order)

Per sequence a DAG G is drawn uniformly from all labelled DAGs on n nodes (or is the fixed `graph`), and
each node's conditional probability table, one column per configuration of its parents, from a Dirichlet.
A row is observational, or with probability `p_intervene` carries do(X_j = v) with j and v uniform: X_j
shows v and every other node follows its table (truncated factorisation). Every value token is scored except
the intervened one; markers are not scored.

The prior on the tables (`prior`): `bdeu` (default) gives a node with m parents Dirichlet(alpha / K^m) on each
column — the likelihood-equivalent prior under which Markov-equivalent DAGs explain observational data
equally well, so only interventions can orient an edge; `k2` gives every column Dirichlet(alpha).

Exact posterior predictive. Given earlier rows D, the tables' posterior is a product of Dirichlets whose
counts skip the rows where that node was intervened on, so one row's joint under G is the product of
posterior-mean entries, the intervened node's factor dropped. The predictive of x_i is the mixture over G,
weighted by P(G) P(D | G), of that joint marginalised over the nodes after i and conditioned on the values
before i (and on the intervened value, announced by the marker): the DAG weights thereby include the
current row's earlier values. Vectorised over the batch; DAGs, parent sets and configurations precomputed
once per family.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streams.base import Batch, Family, numpy_rng, register
from streams.checks import check_int

MAX_NODES = 4  # 543 DAGs; 5 nodes would have 29,281


@functools.cache
def all_dags(n: int) -> tuple[tuple[int, ...], ...]:
    """Every labelled DAG on n nodes as a tuple of parent bitmasks (node k's parents), in a fixed order."""
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    dags = []
    for chosen in itertools.product((0, 1), repeat=len(pairs)):
        parents = [0] * n
        for (i, j), on in zip(pairs, chosen):
            if on:
                parents[j] |= 1 << i
        if _acyclic(parents):
            dags.append(tuple(parents))
    return tuple(dags)


def _acyclic(parents: list[int] | tuple[int, ...]) -> bool:
    done = 0
    for _ in range(len(parents)):  # peel parentless nodes; a cycle leaves some forever
        if done == (1 << len(parents)) - 1:
            return True
        ready = [k for k in range(len(parents)) if not done >> k & 1 and parents[k] & ~done == 0]
        if not ready:
            return False
        for k in ready:
            done |= 1 << k
    return done == (1 << len(parents)) - 1


def markov_class(parents: tuple[int, ...]) -> tuple[frozenset, frozenset]:
    """The Markov equivalence class of a DAG: its skeleton and its v-structures (Verma & Pearl 1990)."""
    n = len(parents)
    edges = {(i, j) for j in range(n) for i in range(n) if parents[j] >> i & 1}
    skeleton = frozenset(frozenset(e) for e in edges)
    v = frozenset((min(a, b), c, max(a, b)) for c in range(n) for a in range(n) for b in range(n)
                  if a < b and (a, c) in edges and (b, c) in edges and frozenset((a, b)) not in skeleton)
    return skeleton, v


def parse_graph(owner: str, graph: Any, n: int) -> tuple[int, ...]:
    """A list of edges [[i, j], ...] (i → j) as parent bitmasks; ValueError naming the parameter."""
    shape = "a list of [parent, child] node pairs"
    if not isinstance(graph, (list, tuple)):
        raise ValueError(f"{owner}.graph={graph!r}: must be {shape} (or null for a uniform prior over DAGs)")
    parents = [0] * n
    for e in graph:
        ok = (isinstance(e, (list, tuple)) and len(e) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in e) and e[0] != e[1])
        if not ok:
            raise ValueError(f"{owner}.graph: edge {e!r} must be [i, j] with i != j in 0..{n - 1}")
        if parents[e[1]] >> e[0] & 1:
            raise ValueError(f"{owner}.graph: edge {list(e)} appears twice")
        parents[e[1]] |= 1 << e[0]
    if not _acyclic(parents):
        raise ValueError(f"{owner}.graph={graph!r}: has a cycle; must be a DAG")
    return tuple(parents)


@dataclass(frozen=True)
class _Tables:
    """What the oracle precomputes once per (n, K, alpha, prior): the node families f = (node k, parent set
    pa) that some DAG has, and which DAGs use which. Node k's values lie on axis k of a [K] * n grid of
    joint assignments (a = Σ_k x_k K^(n-1-k))."""

    dags: tuple[tuple[int, ...], ...]
    families: tuple[tuple[int, int], ...]  # (k, pa), sorted
    members: torch.Tensor  # [G, n] long: DAG g's family of node k
    uses: torch.Tensor  # [G, F] float64: 1 where DAG g has family f
    alpha: tuple[float, ...]  # per family: the Dirichlet concentration of each entry of its columns
    config_weights: torch.Tensor  # [G, n, n] long: parent p's place value in node k's configuration under g
    digits: torch.Tensor  # [K^n, n] long: the node values of each joint assignment


@functools.cache
def _tables(n: int, K: int, alpha: float, prior: str) -> _Tables:
    dags = all_dags(n)
    families = tuple(sorted({(k, pa[k]) for pa in dags for k in range(n)}))
    index = {f: i for i, f in enumerate(families)}
    members = torch.tensor([[index[(k, pa[k])] for k in range(n)] for pa in dags], dtype=torch.long)
    uses = torch.zeros(len(dags), len(families), dtype=torch.float64).scatter_(1, members, 1.0)
    f_alpha = tuple(alpha / K ** bin(pa).count("1") if prior == "bdeu" else alpha for _, pa in families)

    def place_values(pa: int) -> list[int]:  # parents in node order, the first most significant
        ps = [p for p in range(n) if pa >> p & 1]
        return [K ** (len(ps) - 1 - ps.index(p)) if p in ps else 0 for p in range(n)]

    config = torch.tensor([[place_values(pa[k]) for k in range(n)] for pa in dags], dtype=torch.long)
    digits = torch.tensor(list(itertools.product(range(K), repeat=n)), dtype=torch.long)
    return _Tables(dags, families, members, uses, f_alpha, config, digits)


def _submasks(mask: int):
    """The non-empty subsets of a bitmask."""
    sub = mask
    while sub:
        yield sub
        sub = (sub - 1) & mask


def dag_sum(psi: dict[tuple[int, int], torch.Tensor], n: int) -> torch.Tensor:
    """Σ over DAGs G on n nodes of Π_k psi[(k, pa_G(k))], for broadcastable tensors `psi` keyed by node and
    parent bitmask (a missing key counts as 0). Inclusion–exclusion over the sinks (Robinson 1973; Tian & He
    2009): f(S) = Σ_{∅≠T⊆S} (−1)^{|T|+1} f(S∖T) Π_{k∈T} A_k(S∖T), with A_k(U) = Σ_{pa⊆U} psi[(k, pa)], so the
    2^n subsets do the work of the (up to 543) DAGs. Every subtracted term is a sub-sum of the added ones,
    so the cancellation costs only a few ulps."""
    A: dict[tuple[int, int], torch.Tensor] = {}
    for k in range(n):
        others = ((1 << n) - 1) & ~(1 << k)
        for U in [0, *_submasks(others)]:
            terms = [psi[(k, pa)] for pa in [0, *_submasks(U)] if (k, pa) in psi]
            A[(k, U)] = functools.reduce(torch.add, terms) if terms else torch.zeros(())
    f: dict[int, torch.Tensor] = {0: torch.ones((), dtype=torch.float64)}
    for S in sorted(range(1, 1 << n), key=lambda m: bin(m).count("1")):
        total = None
        for T in _submasks(S):
            rest = S & ~T
            term = f[rest]
            for k in range(n):
                if T >> k & 1:
                    term = term * A[(k, rest)]
            term = term if bin(T).count("1") % 2 else -term
            total = term if total is None else total + term
        f[S] = total
    return f[(1 << n) - 1]


@register
@dataclass
class Causal(Family):
    n_nodes: int = 3
    n_values: int = 3
    n_rows: int = 8
    alpha: float = 1.0
    p_intervene: float = 0.5
    graph: list | None = None  # fixed edges [[i, j], ...] (i → j); None: a uniform prior over all DAGs
    prior: str = "bdeu"  # the tables' Dirichlet: 'bdeu' (alpha / K^parents per entry) or 'k2' (alpha)

    name = "causal"
    description = "rows of a random discrete causal model with interventions; exact averaging over DAGs"
    length_param = "n_rows"

    def __post_init__(self) -> None:
        check_int(self.name, "n_nodes", self.n_nodes, 2, MAX_NODES)
        check_int(self.name, "n_values", self.n_values, 2, 16)
        check_int(self.name, "n_rows", self.n_rows, 1)
        for param, value, ok, allowed in (
                ("alpha", self.alpha, lambda v: v > 0, "> 0"),
                ("p_intervene", self.p_intervene, lambda v: 0 <= v <= 1, "in [0, 1]")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"{self.name}.{param}={value!r}: must be a number {allowed}")
        if self.prior not in ("bdeu", "k2"):
            raise ValueError(f"{self.name}.prior={self.prior!r}: must be 'bdeu' or 'k2'")
        if self.graph is not None:
            parse_graph(self.name, self.graph, self.n_nodes)

    # --- layout
    @property
    def vocab_size(self) -> int:
        return self.n_values + 1 + self.n_nodes * self.n_values

    @property
    def seq_len(self) -> int:
        return self.n_rows * (self.n_nodes + 1)

    @property
    def obs_token(self) -> int:
        return self.n_values

    def do_token(self, node: torch.Tensor | int, value: torch.Tensor | int) -> torch.Tensor | int:
        return self.n_values + 1 + node * self.n_values + value

    @property
    def tables(self) -> _Tables:
        return _tables(self.n_nodes, self.n_values, float(self.alpha), self.prior)

    @property
    def dags(self) -> tuple[tuple[int, ...], ...]:
        """The DAGs the oracle averages over, as parent bitmasks; `latent['graph']` indexes this list."""
        return self.tables.dags

    def log_prior(self) -> torch.Tensor:
        """log P(G) over `dags`: uniform, or all mass on the fixed graph."""
        G = len(self.dags)
        if self.graph is None:
            return torch.full((G,), -math.log(G), dtype=torch.float64)
        out = torch.full((G,), -math.inf, dtype=torch.float64)
        out[self.dags.index(parse_graph(self.name, self.graph, self.n_nodes))] = 0.0
        return out

    # --- sampling
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        n, K, R, B = self.n_nodes, self.n_values, self.n_rows, batch_size
        tab = self.tables
        support = torch.isfinite(self.log_prior()).nonzero().squeeze(1)
        g = support[torch.randint(len(support), (B,), generator=generator)]
        # Tables: a column for every configuration of the node's parents under its own DAG.
        config = tab.config_weights[g]  # [B, n, n]
        n_parents = (config > 0).sum(-1).to(torch.float64)  # [B, n]
        alpha = float(self.alpha) / K**n_parents if self.prior == "bdeu" else torch.full_like(n_parents, self.alpha)
        shape = (B, n, K ** (n - 1), K)
        gamma = numpy_rng(generator).standard_gamma(np.broadcast_to(alpha.numpy()[:, :, None, None], shape))
        gamma = torch.from_numpy(np.maximum(gamma, 1e-300))
        theta = gamma / gamma.sum(-1, keepdim=True)  # [B, n, C, K]

        do = torch.rand(B, R, generator=generator, dtype=torch.float64) < self.p_intervene
        j = torch.randint(n, (B, R), generator=generator)
        v = torch.randint(K, (B, R), generator=generator)
        clamp = torch.nn.functional.one_hot(j, n).bool() & do[..., None]  # [B, R, n]
        u = torch.rand(B, R, n, 1, generator=generator, dtype=torch.float64)
        # Ancestral sampling as a fixed point: with the uniforms fixed, n sweeps settle every node in
        # topological depth order, whatever the DAG (a node at depth d is final after sweep d).
        x = torch.zeros(B, R, n, dtype=torch.long)
        for _ in range(n):
            x = torch.where(clamp, v[..., None], x)
            cfg = torch.einsum("bkp,brp->brk", config, x)  # [B, R, n]
            probs = theta[torch.arange(B)[:, None, None], torch.arange(n)[None, None, :], cfg]  # [B,R,n,K]
            x = (probs.cumsum(-1) < u).sum(-1).clamp(max=K - 1)
        x = torch.where(clamp, v[..., None], x)

        marker = torch.where(do, self.do_token(j, v), self.obs_token)
        tokens = torch.cat([marker[..., None], x], dim=-1).reshape(B, R * (n + 1))
        posterior, scored = self.predictive(tokens)
        intervened = torch.where(do, j, -1)
        row_do = do.repeat_interleave(n + 1, dim=1)
        return Batch(tokens, posterior, scored, {
            "graph": g, "intervened": intervened,
            "scored_obs": scored & ~row_do, "scored_do": scored & row_do})

    # --- the oracle
    def parse(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of `tokens` [B, T]: values x [B, R, n], intervened node j (-1: none) and value v [B, R]."""
        n, K = self.n_nodes, self.n_values
        rows = tokens.reshape(tokens.shape[0], -1, n + 1)
        marker, x = rows[..., 0], rows[..., 1:]
        do = marker > self.obs_token
        code = (marker - self.obs_token - 1).clamp(min=0)
        return x, torch.where(do, code // K, -1), code % K

    def _log_prior(self, B: int, graphs: torch.Tensor | None) -> torch.Tensor:
        """[B, G]: the family's prior, or all mass on each sequence's DAG `graphs[b]`."""
        G = len(self.dags)
        if graphs is None:
            return self.log_prior().expand(B, G)
        out = torch.full((B, G), -math.inf, dtype=torch.float64)
        out[torch.arange(B), graphs] = 0.0
        return out

    def _fit(self, x: torch.Tensor, j: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Every family's factor over the current row (broadcastable [K or 1] * n + [B, R], 1 for the set node)
        and its score, the log-likelihood of the rows before each row ([F, B, R+1])."""
        n, K = self.n_nodes, self.n_values
        tab = self.tables
        B, R, _ = x.shape
        # Every tensor keeps the (sequence, row) axes last: the value axes, small, broadcast over them,
        # which keeps the elementwise work contiguous. Counts over earlier rows of every family's cells (its
        # node's and parents' values), skipping the rows where its node was set; the posterior-mean table.
        active = j != torch.arange(n)[:, None, None]  # [n, B, R]
        log_fit = torch.zeros(len(tab.families), B, R, dtype=torch.float64)  # log factor of each row
        factors = {}
        for f, (k, pa) in enumerate(tab.families):
            nodes = [i for i in range(n) if (pa | 1 << k) >> i & 1]
            at = sum(x[..., i] * K ** (len(nodes) - 1 - c) for c, i in enumerate(nodes))  # [B, R]
            seen = torch.zeros(K ** len(nodes), B, R, dtype=torch.float64).scatter_(
                0, at[None], active[k, None].to(torch.float64))
            counts = (seen.cumsum(2) - seen).view(*[K] * len(nodes), B, R)  # before each row
            a = tab.alpha[f]
            table = (counts + a) / (counts.sum(nodes.index(k), keepdim=True) + K * a)
            log_fit[f] = torch.log(table.reshape(-1, B, R).gather(0, at[None])[0]) * active[k]
            shape = [K if i in nodes else 1 for i in range(n)]
            factors[(k, pa)] = torch.where(active[k], table.reshape(*shape, B, R), 1.0)  # set node: 1
        score = torch.cat([log_fit.new_zeros(len(tab.families), B, 1), log_fit.cumsum(2)], 2)
        return factors, score

    def graph_posterior(self, tokens: torch.Tensor, graphs: torch.Tensor | None = None) -> torch.Tensor:
        """[B, R+1, G]: P(DAG | the first r rows) for r = 0..R (see `predictive` for `graphs`)."""
        x, j, _ = self.parse(tokens)
        _, score = self._fit(x, j)
        log_w = self._log_prior(x.shape[0], graphs).T[:, :, None] + score[self.tables.members].sum(1)
        return torch.softmax(log_w, dim=0).permute(1, 2, 0)  # [B, R+1, G]: a row's joint sums its families'

    def predictive(self, tokens: torch.Tensor, graphs: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(posterior [B, T, V], scored [B, T]) from the tokens alone. `graphs` [B] (indices into `dags`)
        conditions each sequence on that DAG instead of the family's prior: the predictor that knows the
        true graph."""
        n, K = self.n_nodes, self.n_values
        tab = self.tables
        x, j, v = self.parse(tokens)
        B, R, _ = x.shape
        # A modular prior (uniform, or one DAG per sequence): a family is allowed where a DAG with mass has it.
        allowed = (torch.isfinite(self._log_prior(B, graphs)).to(torch.float64) @ tab.uses) > 0  # [B, F]
        factors, score = self._fit(x, j)

        # The mixture's joint over the current row, Σ_G P(G | earlier rows) Π_k factor, as a sum over DAGs
        # of products of per-family terms: each family's score (rescaled per node) times its factor.
        live = score[:, :, :R].masked_fill(~allowed.T[:, :, None], -math.inf)  # [F, B, R]
        psi = {}
        for k in range(n):
            mine = [f for f, (kk, _) in enumerate(tab.families) if kk == k]
            weight = torch.exp(live[mine] - live[mine].amax(0, keepdim=True))
            for c, f in enumerate(mine):
                psi[tab.families[f]] = weight[c] * factors[tab.families[f]]
        joint = dag_sum(psi, n).expand(*[K] * n, B, R).reshape(K**n, B, R)
        consistent = (j < 0) | (tab.digits[:, j.clamp(min=0)] == v)  # [K^n, B, R]
        joint = joint * consistent  # only the intervened value
        posterior = torch.zeros(B, R, n + 1, self.vocab_size, dtype=torch.float64)
        for i in range(n):  # marginalise the later nodes, condition on the earlier ones
            marg = joint.view(K**i, K, K ** (n - 1 - i), B, R).sum(2)  # [K^i, K, B, R]
            prefix = (x[..., :i] * K ** torch.arange(i - 1, -1, -1)).sum(-1)  # [B, R]
            p = marg.gather(0, prefix.expand(1, K, B, R))[0]  # [K, B, R]
            posterior[:, :, i, :K] = (p / p.sum(0, keepdim=True)).permute(1, 2, 0)
        scored = torch.ones(B, R, n + 1, dtype=torch.bool)
        scored[..., n] = False  # the last value predicts the next row's marker
        scored[..., :n] &= j[..., None] != torch.arange(n)  # the intervened value is set, not predicted
        posterior = posterior * scored[..., None]
        T = R * (n + 1)
        return posterior.reshape(B, T, -1), scored.reshape(B, T)

    def graph_entropy_bits(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Entropy (bits) of the posterior over DAGs and over Markov equivalence classes, from
        `graph_posterior`'s weights [..., G]."""
        classes: dict = {}
        ids = torch.tensor([classes.setdefault(markov_class(pa), len(classes)) for pa in self.dags])
        by_class = weights.new_zeros(*weights.shape[:-1], len(classes)).index_add_(-1, ids, weights)

        def entropy(p: torch.Tensor) -> torch.Tensor:
            return -torch.xlogy(p, p).sum(-1) / math.log(2)

        return entropy(weights), entropy(by_class)


def ignoring_interventions(family: Causal, tokens: torch.Tensor) -> torch.Tensor:
    """The tokens with every DO marker replaced by OBS: what a predictor that ignores the marks sees."""
    rows = tokens.reshape(tokens.shape[0], -1, family.n_nodes + 1).clone()
    rows[..., 0] = family.obs_token
    return rows.reshape(tokens.shape)

