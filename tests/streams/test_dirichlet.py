"""The Dirichlet–categorical family against the Pólya-urn ratio computed from gamma functions, against
numeric integration over θ, and against sampled frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import streams
from streams.families.dirichlet import Dirichlet
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def log_marginal(counts: list[int], alpha: list[float]) -> float:
    """log P(a particular sequence with these counts) = log B(α + c) − log B(α)."""
    A, n = sum(alpha), sum(counts)
    return (math.lgamma(A) - math.lgamma(A + n)
            + sum(math.lgamma(a + c) - math.lgamma(a) for a, c in zip(alpha, counts)))


def polya_posterior(tokens: list[int], alpha: list[float]) -> torch.Tensor:
    """P(x_{t+1}=k | x_1..x_t) = P(x_1..x_t, k) / P(x_1..x_t). Token ids: 0 BOS, symbols 1..K."""
    K, T = len(alpha), len(tokens)
    post = torch.zeros(T, K + 1, dtype=torch.float64)
    counts = [0] * K
    for t in range(T - 1):
        if t > 0:
            counts[tokens[t] - 1] += 1
        base = log_marginal(counts, alpha)
        for k in range(K):
            bumped = counts[:k] + [counts[k] + 1] + counts[k + 1 :]
            post[t, k + 1] = math.exp(log_marginal(bumped, alpha) - base)
    return post


@pytest.mark.parametrize("n_symbols, alpha, length", [(3, [0.5, 2.0, 1.3], 12), (2, 1.0, 8), (5, 0.1, 20)])
def test_matches_gamma_function_ratio(n_symbols, alpha, length):
    fam = Dirichlet(n_symbols=n_symbols, alpha=alpha, length=length)
    alphas = list(alpha) if isinstance(alpha, list) else [alpha] * n_symbols
    batch = fam.sample(200, gen(n_symbols))
    for b in range(len(batch)):
        expected = polya_posterior(batch.tokens[b].tolist(), alphas)
        torch.testing.assert_close(batch.posterior[b], expected, rtol=0, atol=1e-10)


def test_matches_numeric_integration_over_theta():
    # K = 2, α = (1, 3): the predictive is ∫θ_k p(x|θ) p(θ) dθ / ∫p(x|θ) p(θ) dθ, a polynomial integrand
    # of degree <= length + 3 that 64-node Gauss–Legendre integrates exactly (up to rounding).
    a1, a2, L = 1.0, 3.0, 10
    nodes, weights = np.polynomial.legendre.leggauss(64)
    theta, w = (nodes + 1) / 2, weights / 2  # on [0, 1]; θ = P(symbol 1)
    prior = theta ** (a1 - 1) * (1 - theta) ** (a2 - 1)
    batch = Dirichlet(n_symbols=2, alpha=[a1, a2], length=L).sample(100, gen(5))
    for b in range(len(batch)):
        x = batch.tokens[b, 1:].numpy()
        for t in range(L):
            c1, c2 = int((x[:t] == 1).sum()), int((x[:t] == 2).sum())
            lik = prior * theta**c1 * (1 - theta) ** c2
            p1 = float((w * lik * theta).sum() / (w * lik).sum())
            expected = torch.tensor([0.0, p1, 1 - p1], dtype=torch.float64)
            torch.testing.assert_close(batch.posterior[b, t], expected, rtol=0, atol=1e-10)


def test_layout_and_latent():
    K, L = 4, 16
    batch = Dirichlet(n_symbols=K, length=L).sample(64, gen(0))
    assert batch.tokens.shape == (64, L + 1) and batch.vocab_size == K + 1
    assert (batch.tokens[:, 0] == 0).all() and ((batch.tokens[:, 1:] >= 1) & (batch.tokens[:, 1:] <= K)).all()
    theta = batch.latent["theta"]
    assert theta.shape == (64, K) and theta.dtype == torch.float64
    torch.testing.assert_close(theta.sum(-1), torch.ones(64, dtype=torch.float64))
    assert batch.scored[:, :L].all() and not batch.scored[:, L].any()
    assert (batch.posterior[..., 0] == 0).all(), "no mass on BOS"


def test_symbols_follow_theta():
    # With long sequences the empirical frequencies approach each sequence's θ (std <= 0.5/sqrt(4000)).
    batch = Dirichlet(n_symbols=3, alpha=2.0, length=4000).sample(8, gen(6))
    freq = torch.nn.functional.one_hot(batch.tokens[:, 1:] - 1, 3).double().mean(1)
    assert (freq - batch.latent["theta"]).abs().max() < 0.04


@pytest.mark.parametrize(
    "params, seed",
    [(dict(n_symbols=2, length=6), 301), (dict(n_symbols=2, alpha=[0.3, 2.0], length=6), 302),
     (dict(n_symbols=3, alpha=[0.5, 1.0, 3.0], length=4), 303)],
)
def test_prefix_consistency_and_frequencies(params, seed):
    # False-alarm rate of each check: 1e-3 overall (Bonferroni over the tested prefix groups).
    batch = Dirichlet(**params).sample(100_000, gen(seed))
    check_posterior_shape_and_mass(batch)
    report = check_prefix_consistency_and_frequencies(batch, alpha=1e-3)
    assert report.n_tested >= 10, report
    assert report.n_sequences_tested >= 200_000, report


def test_determinism():
    fam = Dirichlet(alpha=[0.5, 1.0, 1.5, 2.0])
    a, b, c = fam.sample(32, gen(1)), fam.sample(32, gen(1)), fam.sample(32, gen(2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.posterior, b.posterior)
    assert torch.equal(a.latent["theta"], b.latent["theta"])
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, param",
    [
        (dict(n_symbols=1), "dirichlet.n_symbols"),
        (dict(alpha=0.0), "dirichlet.alpha"),
        (dict(alpha=-1.0), "dirichlet.alpha"),
        (dict(alpha=float("nan")), "dirichlet.alpha"),
        (dict(alpha=[1.0, 2.0]), "dirichlet.alpha"),  # n_symbols is 4
        (dict(n_symbols=2, alpha=[1.0, 0.0]), "dirichlet.alpha"),
        (dict(alpha="big"), "dirichlet.alpha"),
        (dict(length=0), "dirichlet.length"),
    ],
)
def test_bad_parameters(params, param):
    with pytest.raises(ValueError, match=param):
        Dirichlet(**params)


def test_registry_and_length():
    fam = streams.make("dirichlet", n_symbols=3, alpha=[1, 2, 3], length=5)
    assert fam.seq_len == 6 and fam.vocab_size == 4
    assert fam.with_length(40).sample(2, gen(0)).tokens.shape == (2, 41)


@pytest.mark.parametrize(
    "params", [dict(), dict(n_symbols=2, length=1), dict(n_symbols=50, alpha=0.01, length=64)]
)
def test_posterior_mass(params):
    check_posterior_shape_and_mass(Dirichlet(**params).sample(50, gen(9)))
