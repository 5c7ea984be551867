"""The change-point family against brute-force enumeration of every change-point configuration (segment
marginals in closed form), against sampled frequencies, and its latent θ path against its definition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import streams
from streams.families.changepoint import Changepoint, bocpd_predictive
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def log_segment(symbols: list[int], alpha: list[float]) -> float:
    """log P(this particular segment) under one θ ~ Dirichlet(α): log B(α + c) − log B(α)."""
    counts = [symbols.count(k) for k in range(len(alpha))]
    A, n = sum(alpha), len(symbols)
    return (math.lgamma(A) - math.lgamma(A + n)
            + sum(math.lgamma(a + c) - math.lgamma(a) for a, c in zip(alpha, counts)))


def joint(x: list[int], alpha: list[float], hazard: float) -> float:
    """P(x_1..x_n): a sum over all 2^(n-1) sets of change-points between consecutive symbols."""
    n = len(x)
    total = 0.0
    for cuts in itertools.product((False, True), repeat=n - 1):
        changes = sum(cuts)
        log_p = changes * math.log(hazard) + (n - 1 - changes) * math.log(1 - hazard)
        start = 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                log_p += log_segment(x[start:i], alpha)
                start = i
        log_p += log_segment(x[start:], alpha)
        total += math.exp(log_p)
    return total


def brute_predictive(x: list[int], alpha: list[float], hazard: float) -> np.ndarray:
    """[L, K]: row n is P(x_{n+1} = k | x_1..x_n) = P(x_1..x_n, k) / Σ_k' P(x_1..x_n, k')."""
    rows = []
    for n in range(len(x)):
        j = np.array([joint(x[:n] + [k], alpha, hazard) for k in range(len(alpha))])
        rows.append(j / j.sum())
    return np.array(rows)


# ---------------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize(
    "n_symbols, alpha, hazard, length",
    [(3, [0.5, 1.0, 2.0], 0.2, 8), (2, 1.0, 0.05, 7), (4, 0.3, 0.9, 6)],
)
def test_matches_changepoint_enumeration(n_symbols, alpha, hazard, length):
    fam = streams.make("changepoint", n_symbols=n_symbols, alpha=alpha, hazard=hazard, length=length)
    batch = fam.sample(25, gen(0))
    check_posterior_shape_and_mass(batch)
    assert batch.tokens.shape == (25, length + 1) and (batch.tokens[:, 0] == 0).all()
    assert batch.scored[:, :length].all() and not batch.scored[:, length].any()
    assert (batch.posterior[..., 0] == 0).all()
    alphas = list(alpha) if isinstance(alpha, list) else [alpha] * n_symbols
    for b in range(len(batch)):
        x = (batch.tokens[b, 1:] - 1).tolist()
        expected = brute_predictive(x, alphas, hazard)
        np.testing.assert_allclose(batch.posterior[b, :length, 1:].numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "x", [[0] * 8, [0, 1] * 4, [0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2, 0, 2], [1, 0, 2, 1, 0, 2, 1, 0]]
)
def test_recursion_on_hand_picked_sequences(x):
    """Sequences that random sampling rarely produces: long runs, clean switches, alternation."""
    alpha = [0.2, 0.7, 1.5]
    for hazard in (0.01, 0.5):
        got = bocpd_predictive(torch.tensor([x]), torch.tensor(alpha, dtype=torch.float64), hazard)[0]
        np.testing.assert_allclose(got.numpy(), brute_predictive(x, alpha, hazard), rtol=0, atol=1e-10)


def test_long_sequences_stay_normalized_and_reduce_to_dirichlet_at_low_hazard():
    # At L = 128 the recursion runs over several chunks; the predictive must stay a distribution.
    fam = streams.make("changepoint", n_symbols=5, alpha=0.5, hazard=0.1, length=128)
    check_posterior_shape_and_mass(fam.sample(64, gen(1)))
    # A hazard of 1e-12 is, to ~1e-10, a single segment: the Pólya-urn rule (c_k + α_k) / (n + Σα).
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    x = torch.randint(3, (8, 100), generator=gen(2))
    counts = torch.zeros(8, 100, 3, dtype=torch.float64)
    counts[:, 1:] = torch.nn.functional.one_hot(x[:, :-1], 3).double().cumsum(1)
    polya = (counts + alpha) / (torch.arange(100, dtype=torch.float64)[:, None] + alpha.sum())
    torch.testing.assert_close(bocpd_predictive(x, alpha, 1e-12), polya, rtol=0, atol=1e-9)
    # And a hazard near 1 forgets everything: every predictive is the prior mean.
    torch.testing.assert_close(bocpd_predictive(x, alpha, 1 - 1e-12), (alpha / alpha.sum()).expand(8, 100, 3),
                               rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Sampling agrees with the posterior and with the generative model


def test_prefix_consistency_and_frequencies():
    fam = streams.make("changepoint", n_symbols=2, alpha=1.0, hazard=0.3, length=6)
    batch = fam.sample(100_000, gen(3))
    check_posterior_shape_and_mass(batch)
    # Chi-square per prefix group, Bonferroni: the whole check false-alarms with probability <= 1e-3.
    result = check_prefix_consistency_and_frequencies(batch, alpha=1e-3)
    assert result.n_groups == 1 + 2 + 4 + 8 + 16 + 32
    assert result.n_tested == result.n_groups
    assert result.n_sequences_tested == 6 * 100_000


def test_latent_theta_path_follows_the_model():
    K, L, hazard, B = 3, 40, 0.15, 5000
    fam = streams.make("changepoint", n_symbols=K, alpha=[0.5, 1.0, 2.0], hazard=hazard, length=L)
    batch = fam.sample(B, gen(4))
    theta, change = batch.latent["theta"], batch.latent["change"]
    assert theta.shape == (B, L, K) and change.shape == (B, L) and change.dtype == torch.bool
    torch.testing.assert_close(theta.sum(-1), torch.ones(B, L, dtype=torch.float64))
    assert change[:, 0].all(), "x_1 always has a freshly drawn θ"
    same = (theta[:, 1:] == theta[:, :-1]).all(-1)
    assert torch.equal(same, ~change[:, 1:]), "θ stays fixed exactly until a change-point"
    # Change-points occur with probability `hazard` (binomial; |z| > 5.5 false-alarms with p < 4e-8).
    n = B * (L - 1)
    z = (change[:, 1:].sum().item() - n * hazard) / math.sqrt(n * hazard * (1 - hazard))
    assert abs(z) < 5.5, z
    # Fresh θ's have the Dirichlet(α) mean α / Σα = (1/7, 2/7, 4/7) (sd of each mean < 0.005).
    fresh = theta[change]
    mean = torch.tensor([1, 2, 4], dtype=torch.float64) / 7
    torch.testing.assert_close(fresh.mean(0), mean, rtol=0, atol=0.02)
    # Symbols follow θ, and the next symbol follows the posterior: Σ(1{x=k} - p_k) is a martingale.
    x = torch.nn.functional.one_hot(batch.tokens[:, 1:] - 1, K).double()
    for probs in (theta, batch.posterior[:, :L, 1:]):
        z = (x - probs).sum((0, 1)) / (probs * (1 - probs)).sum((0, 1)).sqrt()
        assert z.abs().max() < 5.5, z


# ---------------------------------------------------------------------------------------------------
# Determinism, parameters, validation


def test_determinism():
    fam = streams.make("changepoint", length=16)
    a, b, c = fam.sample(16, gen(5)), fam.sample(16, gen(5)), fam.sample(16, gen(6))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.posterior, b.posterior)
    assert all(torch.equal(a.latent[k], b.latent[k]) for k in a.latent)
    assert not torch.equal(a.tokens, c.tokens)


def test_registry_shapes_and_length():
    fam = streams.make("changepoint")
    assert isinstance(fam, Changepoint) and fam.length_param == "length"
    assert fam.vocab_size == 5 and fam.seq_len == 33
    one = fam.with_length(1).sample(4, gen(7))
    assert one.tokens.shape == (4, 2) and one.scored[:, 0].all()
    prior = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(one.posterior[:, 0], prior.expand(4, 5), rtol=0, atol=0)


@pytest.mark.parametrize(
    "params, param",
    [
        (dict(hazard=0.0), "hazard"),
        (dict(hazard=1.0), "hazard"),
        (dict(hazard=-0.1), "hazard"),
        (dict(hazard=True), "hazard"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=[1.0, 2.0]), "alpha"),  # needs n_symbols = 4 entries
        (dict(alpha=[1.0, 1.0, 0.0, 1.0]), "alpha"),
        (dict(n_symbols=1), "n_symbols"),
        (dict(length=0), "length"),
    ],
)
def test_bad_parameters_name_the_parameter(params, param):
    with pytest.raises(ValueError, match=rf"changepoint\.{param}"):
        streams.make("changepoint", **params)
