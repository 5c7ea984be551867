"""The causal family against independent computations: DAG enumeration and the DAG sum against brute force,
the posterior predictive against closed-form Dirichlet marginal likelihoods summed over every DAG and every
completion of the current row, against numerical integration over the tables (2 nodes, binary), against
sampled frequencies, and its known limits (Markov equivalence without interventions, a fixed graph)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from streams import make
from streams.families.causal import Causal, all_dags, dag_sum, ignoring_interventions, markov_class
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def parents_of(dag: tuple[int, ...], k: int) -> list[int]:
    return [p for p in range(len(dag)) if dag[k] >> p & 1]


def test_every_dag_once_and_the_markov_classes():
    # OEIS A003024 (labelled DAGs) and A035512 (Markov equivalence classes: 2, 11, 185).
    for n, count, classes in ((2, 3, 2), (3, 25, 11), (4, 543, 185)):
        dags = all_dags(n)
        assert len(dags) == len(set(dags)) == count
        assert len({markov_class(d) for d in dags}) == classes
    chain, reverse, fork, collider = ((0, 1, 2), (2, 4, 0), (2, 0, 2), (0, 5, 0))  # parent bitmasks
    assert markov_class(chain) == markov_class(reverse) == markov_class(fork) != markov_class(collider)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_dag_sum_equals_the_sum_over_enumerated_dags(n):
    g = gen(n)
    psi = {(k, pa): torch.rand(5, generator=g, dtype=torch.float64) * 10 ** (4 * torch.rand(1, generator=g) - 2)
           for k in range(n) for pa in range(1 << n) if not pa >> k & 1}
    brute = sum(math.prod(psi[(k, d[k])] for k in range(n)) for d in all_dags(n))
    torch.testing.assert_close(dag_sum(psi, n), brute, rtol=1e-13, atol=0)


# --- a brute-force oracle: closed-form marginal likelihoods, every DAG, every completion of the row


def log_marginal(rows: list[tuple[tuple[int, ...], int]], dag: tuple[int, ...], fam: Causal) -> float:
    """log P(rows | DAG) with the tables integrated out: per node and parent configuration, the Dirichlet–
    multinomial ratio of gamma functions over the rows where the node was not set (rows: (values, set node))."""
    K, total = fam.n_values, 0.0
    for k in range(fam.n_nodes):
        pa = parents_of(dag, k)
        a = fam.alpha / K ** len(pa) if fam.prior == "bdeu" else fam.alpha
        counts: dict[tuple, list[int]] = {}
        for x, j in rows:
            if j != k:
                counts.setdefault(tuple(x[p] for p in pa), [0] * K)[x[k]] += 1
        for c in counts.values():
            total += math.lgamma(K * a) - math.lgamma(K * a + sum(c))
            total += sum(math.lgamma(a + ci) - math.lgamma(a) for ci in c)
    return total


def brute_posterior(fam: Causal, tokens: list[int], dags=None) -> torch.Tensor:
    n, K = fam.n_nodes, fam.n_values
    dags = all_dags(n) if dags is None else dags
    out = torch.zeros(len(tokens), fam.vocab_size, dtype=torch.float64)
    rows = [tokens[r : r + n + 1] for r in range(0, len(tokens), n + 1)]
    done: list[tuple[tuple[int, ...], int]] = []
    for r, row in enumerate(rows):
        marker, x = row[0], row[1:]
        j, v = (-1, -1) if marker == fam.obs_token else divmod(marker - fam.obs_token - 1, K)
        for i in range(n):
            if i == j:
                continue
            mass = [0.0] * K
            hidden = [k for k in range(i + 1, n) if k != j]
            for u in range(K):
                for rest in itertools.product(range(K), repeat=len(hidden)):
                    y = list(x[:i]) + [u] + [0] * (n - i - 1)
                    for k, val in zip(hidden, rest):
                        y[k] = val
                    if j >= 0:
                        y[j] = v
                    rows_u = done + [(tuple(y), j)]
                    mass[u] += sum(math.exp(log_marginal(rows_u, d, fam)) for d in dags) / len(dags)
            pos = r * (n + 1) + i  # the token before x_i
            out[pos, :K] = torch.tensor(mass, dtype=torch.float64) / sum(mass)
        done.append((tuple(x), j))
    return out


@pytest.mark.parametrize("params", [
    dict(n_nodes=3, n_values=2, n_rows=4, alpha=0.7, p_intervene=0.5),
    dict(n_nodes=3, n_values=3, n_rows=2, alpha=2.0, p_intervene=0.6, prior="k2"),
    dict(n_nodes=2, n_values=3, n_rows=5, alpha=1.5, p_intervene=0.3),
])
def test_matches_brute_force_over_dags_and_completions(params):
    fam = Causal(**params)
    batch = fam.sample(6, gen(1))
    check_posterior_shape_and_mass(batch)
    for b in range(len(batch)):
        torch.testing.assert_close(batch.posterior[b], brute_posterior(fam, batch.tokens[b].tolist()),
                                   rtol=0, atol=1e-12)


@pytest.mark.slow
def test_matches_brute_force_on_four_nodes():
    fam = Causal(n_nodes=4, n_values=2, n_rows=2, alpha=1.0, p_intervene=0.5)
    batch = fam.sample(2, gen(3))
    for b in range(len(batch)):
        torch.testing.assert_close(batch.posterior[b], brute_posterior(fam, batch.tokens[b].tolist()),
                                   rtol=0, atol=1e-12)


def test_matches_numeric_integration_over_the_tables():
    # 2 binary nodes, BDeu alpha 2: the root's θ ~ Beta(2, 2), the child's columns ~ Beta(1, 1), polynomial
    # densities that 24-node Gauss–Legendre integrates exactly along each table entry; the likelihood is the
    # generative model written out token by token (truncated factorisation), summed over the row's hidden values.
    fam = Causal(n_nodes=2, n_values=2, n_rows=4, alpha=2.0, p_intervene=0.5)
    nodes, weights = np.polynomial.legendre.leggauss(24)
    t, w = (nodes + 1) / 2, weights / 2

    def beta_weights(a):
        d = t ** (a - 1) * (1 - t) ** (a - 1)
        return w * d / (w * d).sum()

    root, child = beta_weights(2.0), beta_weights(1.0)

    def likelihood(dag, rows) -> float:
        # Parameters: one per (node, parent value) column; integrate over the tensor grid of all of them.
        cols = [(k, c) for k in range(2) for c in (range(2) if dag[k] else [None])]
        dens = [child if c is not None else root for _, c in cols]
        total = 0.0
        for idx in itertools.product(range(len(t)), repeat=len(cols)):
            theta = {col: t[i] for col, i in zip(cols, idx)}
            p = math.prod(d[i] for d, i in zip(dens, idx))
            for x, j in rows:
                for k in range(2):
                    if k == j:
                        continue
                    c = x[1 - k] if dag[k] else None
                    q = theta[(k, c)]
                    p *= q if x[k] == 1 else 1 - q
            total += p
        return total

    batch = fam.sample(4, gen(7))
    for b in range(len(batch)):
        tokens = batch.tokens[b].tolist()
        rows = [tokens[r : r + 3] for r in range(0, len(tokens), 3)]
        done = []
        for r, (marker, *x) in enumerate(rows):
            j, v = (-1, -1) if marker == fam.obs_token else divmod(marker - fam.obs_token - 1, 2)
            for i in range(2):
                if i == j:
                    continue
                mass = []
                for u in range(2):
                    # the row so far; X_1 is summed out when predicting X_0 of an observational row
                    rows_u = [[u, v]] if j == 1 else [[u, 0], [u, 1]] if i == 0 else [[x[0], u]]
                    mass.append(sum(likelihood(d, done + [(y, j)]) for d in all_dags(2) for y in rows_u))
                expected = torch.tensor(mass, dtype=torch.float64) / sum(mass)
                torch.testing.assert_close(batch.posterior[b, r * 3 + i, :2], expected, rtol=0, atol=1e-10)
            done.append((list(x), j))


@pytest.mark.parametrize("params, max_prefix", [
    (dict(n_nodes=2, n_values=2, n_rows=3, alpha=1.0, p_intervene=0.5), 7),
    (dict(n_nodes=3, n_values=2, n_rows=2, alpha=0.5, p_intervene=0.3), 7),
])
def test_next_token_frequencies_match_the_posterior(params, max_prefix):
    fam = Causal(**params)
    batch = fam.sample(120_000, gen(11))
    check_posterior_shape_and_mass(batch)
    result = check_prefix_consistency_and_frequencies(batch, max_prefix_len=max_prefix)
    assert result.n_tested >= 40 and result.n_sequences_tested >= 200_000, result


def test_graphs_are_uniform_over_dags_and_interventions_as_asked():
    fam = Causal(n_nodes=3, n_values=2, n_rows=2, p_intervene=0.25)
    batch = fam.sample(50_000, gen(2))
    counts = torch.bincount(batch.latent["graph"], minlength=25).to(torch.float64)
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 60, chi2  # df 24: p < 1e-4
    share = (batch.latent["intervened"] >= 0).to(torch.float64).mean()
    assert abs(share - 0.25) < 0.005  # 3.6 standard errors
    node = batch.latent["intervened"][batch.latent["intervened"] >= 0]
    assert (torch.bincount(node, minlength=3) / len(node) - 1 / 3).abs().max() < 0.015


def test_markov_equivalent_graphs_agree_only_without_interventions():
    # BDeu is likelihood-equivalent: a chain, its reverse and the fork explain observational rows alike;
    # interventions tell them apart; the collider (another class) differs; K2 is not equivalent.
    chain, reverse, fork, collider = [[0, 1], [1, 2]], [[2, 1], [1, 0]], [[1, 0], [1, 2]], [[0, 1], [2, 1]]

    def post(graph, p_intervene, prior="bdeu"):
        source = Causal(n_nodes=3, n_values=3, n_rows=10, p_intervene=p_intervene, graph=chain, prior=prior)
        tokens = source.sample(64, gen(4)).tokens
        fam = Causal(n_nodes=3, n_values=3, n_rows=10, p_intervene=p_intervene, graph=graph, prior=prior)
        return fam.predictive(tokens)[0]

    a = post(chain, 0.0)
    torch.testing.assert_close(post(reverse, 0.0), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(post(fork, 0.0), a, rtol=0, atol=1e-12)
    assert (post(collider, 0.0) - a).abs().max() > 1e-3
    assert (post(reverse, 0.5) - post(chain, 0.5)).abs().max() > 1e-3
    assert (post(reverse, 0.0, "k2") - post(chain, 0.0, "k2")).abs().max() > 1e-3


def test_a_fixed_graph_is_the_mixture_collapsed_to_it():
    fam = Causal(n_nodes=3, n_values=2, n_rows=6)
    batch = fam.sample(200, gen(5))
    known, _ = fam.predictive(batch.tokens, graphs=batch.latent["graph"])
    for g in batch.latent["graph"].unique().tolist():
        fixed = Causal(n_nodes=3, n_values=2, n_rows=6, graph=[[p, k] for k in range(3)
                                                           for p in parents_of(all_dags(3)[g], k)])
        rows = batch.latent["graph"] == g
        torch.testing.assert_close(fixed.predictive(batch.tokens[rows])[0], known[rows], rtol=0, atol=1e-12)
        torch.testing.assert_close(known[rows][0], brute_posterior(fam, batch.tokens[rows][0].tolist(),
                                                                   dags=[all_dags(3)[g]]), rtol=0, atol=1e-12)
    # The exact posterior's DAG weights: P(G | no rows) is the prior; they sum to 1 and concentrate.
    w = fam.graph_posterior(batch.tokens)
    torch.testing.assert_close(w[:, 0], torch.full((200, 25), 1 / 25, dtype=torch.float64))
    torch.testing.assert_close(w.sum(-1), torch.ones(200, 7, dtype=torch.float64))
    h_dag, h_class = fam.graph_entropy_bits(w)
    assert math.isclose(float(h_dag[0, 0]), math.log2(25), rel_tol=1e-12)
    assert (h_class <= h_dag + 1e-12).all() and float(h_dag[:, -1].mean()) < float(h_dag[:, 0].mean())
    # Each weight is the prior times the closed-form marginal likelihood of the rows so far, normalised.
    x, j, _ = fam.parse(batch.tokens[:1])
    rows = [(tuple(x[0, r].tolist()), int(j[0, r])) for r in range(6)]
    for r in (1, 3, 6):
        log_ml = torch.tensor([log_marginal(rows[:r], d, fam) for d in all_dags(3)], dtype=torch.float64)
        torch.testing.assert_close(w[0, r], torch.softmax(log_ml, 0), rtol=0, atol=1e-12)
    # the known-graph weights are one-hot on each sequence's DAG
    known_w = fam.graph_posterior(batch.tokens, graphs=batch.latent["graph"])
    assert torch.equal(known_w.argmax(-1), batch.latent["graph"][:, None].expand(200, 7))


def test_ignoring_the_marks_is_a_worse_predictor():
    fam = Causal(n_nodes=3, n_values=3, n_rows=8, p_intervene=0.5)
    batch = fam.sample(512, gen(6))
    naive, _ = fam.predictive(ignoring_interventions(fam, batch.tokens))
    known, _ = fam.predictive(batch.tokens, graphs=batch.latent["graph"])
    nxt = batch.tokens[:, 1:]
    s = batch.scored[:, :-1]

    def nll(post):
        return -torch.log(post[:, :-1].gather(-1, nxt[..., None]).squeeze(-1)[s]).mean()

    # On sampled tokens the Bayes predictor beats the one that ignores the marks, and knowing the graph
    # beats both (more information); all three differ.
    assert nll(known) < nll(batch.posterior) < nll(naive)


def test_layout_groups_and_bad_parameters():
    fam = make("causal", n_nodes=2, n_values=2, n_rows=3)
    assert (fam.vocab_size, fam.seq_len) == (2 + 1 + 4, 9)
    b = fam.sample(300, gen(0))
    assert torch.equal(b.latent["scored_obs"] | b.latent["scored_do"], b.scored)
    assert not (b.latent["scored_obs"] & b.latent["scored_do"]).any()
    markers = b.tokens[:, ::3]
    assert ((markers >= 2) & (markers <= 6)).all() and (b.tokens.reshape(300, 3, 3)[..., 1:] < 2).all()
    assert fam.with_length(5).seq_len == 15
    for bad, match in [(dict(n_nodes=5), "n_nodes"), (dict(alpha=0), "alpha"), (dict(p_intervene=1.5), "p_intervene"),
                       (dict(graph=[[0, 1], [1, 0]]), "cycle"), (dict(graph=[[0, 0]]), "graph"),
                       (dict(graph=[[0, 3]]), "graph"), (dict(prior="bde"), "prior")]:
        with pytest.raises(ValueError, match=match):
            Causal(**bad)
