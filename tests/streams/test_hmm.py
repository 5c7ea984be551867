"""The HMM family against brute-force enumeration of every hidden state path, against sampled
frequencies, and its grid rounding against an independent largest-remainder implementation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import streams
from streams.families.hmm import HMM, round_to_grid
from streams.stream import load_stream
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies

FIXED_T = [[0.7, 0.2, 0.1], [0.15, 0.6, 0.25], [0.3, 0.3, 0.4]]
FIXED_E = [[0.8, 0.15, 0.05], [0.1, 0.5, 0.4], [0.25, 0.05, 0.7]]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def path_joint(obs: list[int], T: np.ndarray, E: np.ndarray) -> float:
    """P(o_1..o_n) summed over all S^n hidden paths, uniform initial state."""
    S = T.shape[0]
    paths = np.array(list(itertools.product(range(S), repeat=len(obs))))
    p = np.full(len(paths), 1.0 / S)
    for i, o in enumerate(obs):
        p = p * E[paths[:, i], o]
        if i:
            p = p * T[paths[:, i - 1], paths[:, i]]
    return float(p.sum())


def brute_predictive(obs: list[int], T: np.ndarray, E: np.ndarray) -> np.ndarray:
    """[L, K]: row n is P(o_{n+1} = k | o_1..o_n) = P(o_1..o_n, k) / Σ_k' P(o_1..o_n, k')."""
    K = E.shape[1]
    rows = []
    for n in range(len(obs)):
        joint = np.array([path_joint(obs[:n] + [k], T, E) for k in range(K)])
        rows.append(joint / joint.sum())
    return np.array(rows)


def check_against_brute_force(fam: HMM, batch: streams.Batch) -> None:
    H, L, K = fam.header_len, fam.length, fam.n_symbols
    for b in range(len(batch)):
        T = batch.latent["transition"][b].numpy()
        E = batch.latent["emission"][b].numpy()
        obs = (batch.tokens[b, H + 1 :] - 1).tolist()
        assert len(obs) == L and all(0 <= o < K for o in obs)
        expected = brute_predictive(obs, T, E)
        got = batch.posterior[b, H : H + L, 1 : 1 + K].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Exactness


def test_fixed_hmm_matches_path_enumeration():
    fam = streams.make("hmm", n_states=3, n_symbols=3, length=6, header=False,
                       transition=FIXED_T, emission=FIXED_E)
    batch = fam.sample(40, gen(0))
    check_posterior_shape_and_mass(batch)
    # Rows are renormalized in float64, so they may move by an ulp.
    torch.testing.assert_close(batch.latent["transition"][0], torch.tensor(FIXED_T, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert (batch.tokens[:, 0] == 0).all()
    assert batch.scored[:, :6].all() and not batch.scored[:, 6].any()
    check_against_brute_force(fam, batch)


@pytest.mark.parametrize("n_states, n_symbols, stickiness", [(2, 3, 0.0), (3, 2, 2.0)])
def test_header_hmm_matches_path_enumeration(n_states, n_symbols, stickiness):
    fam = streams.make("hmm", n_states=n_states, n_symbols=n_symbols, length=6, stickiness=stickiness)
    batch = fam.sample(30, gen(1))
    check_posterior_shape_and_mass(batch)
    S, K, H = n_states, n_symbols, fam.header_len
    assert H == S * S + S * K and batch.tokens.shape == (30, H + 1 + 6) == (30, fam.seq_len)
    assert (batch.tokens[:, H] == 0).all()
    # Only the SEP and observation positions but the last are scored, and only symbols get mass.
    assert batch.scored[:, H : H + 6].all() and batch.scored.sum() == 30 * 6
    assert (batch.posterior[..., 1 + K :] == 0).all() and (batch.posterior[..., 0] == 0).all()
    # The SEP position predicts o_1 from the uniform initial state alone.
    E = batch.latent["emission"]
    torch.testing.assert_close(batch.posterior[:, H, 1 : 1 + K], E.mean(1), rtol=0, atol=1e-12)
    check_against_brute_force(fam, batch)


def test_header_decodes_to_the_matrices_the_oracle_uses():
    fam = streams.make("hmm", n_states=3, n_symbols=4, grid=0.05, length=4)
    batch = fam.sample(500, gen(2))
    S, K, m = 3, 4, 20
    header = batch.tokens[:, : fam.header_len]
    assert ((header >= K + 1) & (header <= K + 1 + m)).all(), "header tokens must be grid-value tokens"
    units = header - (K + 1)
    t_units = units[:, : S * S].reshape(-1, S, S)  # row-major T, then row-major E
    e_units = units[:, S * S :].reshape(-1, S, K)
    for u, key in ((t_units, "transition"), (e_units, "emission")):
        assert (u.sum(-1) == m).all(), "every row must sum to exactly 1/grid units"
        assert (u >= 1).all(), "every probability must be at least grid"
        assert torch.equal(batch.latent[key], u.to(torch.float64) / m)
    assert fam.vocab_size == 1 + K + m + 1


# ---------------------------------------------------------------------------------------------------
# Grid rounding


def reference_round(p: list[float], m: int) -> list[int]:
    """Largest-remainder apportionment of m - n units after one unit each (ties to the lower index)."""
    n = len(p)
    q = [x * (m - n) for x in p]
    units = [1 + math.floor(x) for x in q]
    leftover = m - sum(units)
    order = sorted(range(n), key=lambda i: (-(q[i] - math.floor(q[i])), i))
    for i in order[:leftover]:
        units[i] += 1
    return units


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=2, max_size=8).filter(
        lambda w: sum(w) > 0
    ),
    extra=st.integers(0, 60),
)
def test_round_to_grid_is_largest_remainder(weights, extra):
    p = np.array(weights) / sum(weights)
    m = len(p) + extra
    got = round_to_grid(torch.tensor(p), m).tolist()
    assert got == reference_round(p.tolist(), m)
    assert sum(got) == m and min(got) >= 1
    assert all(abs(u - (1 + x * (m - len(p)))) < 1 for u, x in zip(got, p))


def test_round_to_grid_on_near_uniform_rows_is_exact():
    # Concentration 1e4 makes every row ~uniform; 1/4 lies on a 0.05 grid, so it must come out exactly.
    fam = streams.make("hmm", n_states=4, n_symbols=4, grid=0.05, concentration=1e4, length=2)
    batch = fam.sample(200, gen(3))
    assert (batch.latent["transition"] == 0.25).all() and (batch.latent["emission"] == 0.25).all()


def test_stickiness_raises_the_diagonal():
    # With concentration 1 and stickiness 20, the Dirichlet mean of T_ii is 21/23 ≈ 0.91 instead of 1/3;
    # on a 0.05 grid (20 units, one per entry, 17 shared) that is about (1 + 17 * 21/23) / 20 ≈ 0.83.
    B = 2000
    plain = streams.make("hmm", n_states=3, n_symbols=2, length=2).sample(B, gen(4))
    sticky = streams.make("hmm", n_states=3, n_symbols=2, length=2, stickiness=20.0).sample(B, gen(4))
    diag = lambda b: b.latent["transition"].diagonal(dim1=1, dim2=2).mean().item()
    on_grid = lambda mean: (1 + 17 * mean) / 20
    assert abs(diag(plain) - on_grid(1 / 3)) < 0.03
    assert abs(diag(sticky) - on_grid(21 / 23)) < 0.03


# ---------------------------------------------------------------------------------------------------
# Sampling agrees with the posterior


def test_fixed_hmm_prefix_consistency_and_frequencies():
    T = [[0.85, 0.15], [0.3, 0.7]]
    E = [[0.9, 0.1], [0.25, 0.75]]
    fam = streams.make("hmm", n_states=2, n_symbols=2, length=6, header=False, transition=T, emission=E)
    batch = fam.sample(100_000, gen(5))
    check_posterior_shape_and_mass(batch)
    # Chi-square per prefix group, Bonferroni: the whole check false-alarms with probability <= 1e-3.
    result = check_prefix_consistency_and_frequencies(batch, alpha=1e-3)
    assert result.n_groups == 1 + 2 + 4 + 8 + 16 + 32
    assert result.n_tested == result.n_groups
    assert result.n_sequences_tested == 6 * 100_000


def z_scores(indicator: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Σ(1{x=k} - p_k) / sqrt(Σ p_k (1 - p_k)) per category: each term has mean 0 given the past, so
    each z is ~N(0, 1) for a correct sampler (|z| > 5.5: false alarm < 4e-8 per category)."""
    dims = tuple(range(indicator.dim() - 1))
    return (indicator - probs).sum(dims) / (probs * (1 - probs)).sum(dims).sqrt()


def test_header_hmm_samples_follow_latent_and_posterior():
    fam = streams.make("hmm", n_states=3, n_symbols=4, length=16)
    batch = fam.sample(4000, gen(6))
    H, L, K, S = fam.header_len, 16, 4, 3
    T, E, states = batch.latent["transition"], batch.latent["emission"], batch.latent["states"]
    obs = batch.tokens[:, H + 1 :] - 1
    rows = torch.arange(len(batch))[:, None]
    # States follow the rows of T, observations the rows of E, both as documented (T[s, s'] = P(s' | s)).
    z_t = z_scores(torch.nn.functional.one_hot(states[:, 1:], S).double(), T[rows, states[:, :-1]])
    z_e = z_scores(torch.nn.functional.one_hot(obs, K).double(), E[rows, states])
    # The first state is uniform.
    z_0 = z_scores(torch.nn.functional.one_hot(states[:, 0], S).double(), torch.full((len(batch), S), 1 / S))
    # And each next observation follows the posterior given the header and the observations so far.
    post = batch.posterior[:, H : H + L, 1 : 1 + K]
    z_p = z_scores(torch.nn.functional.one_hot(obs, K).double(), post)
    for z in (z_t, z_e, z_0, z_p):
        assert z.abs().max() < 5.5, z


def numpy_filter(obs: np.ndarray, T: np.ndarray, E: np.ndarray) -> np.ndarray:
    """The textbook forward filter, normalized at every step: [L, K] next-observation predictives."""
    b = np.full(T.shape[0], 1.0 / T.shape[0])
    rows = []
    for o in obs:
        rows.append(b @ E)
        f = b * E[:, o]
        b = (f / f.sum()) @ T
    return np.array(rows)


@pytest.mark.parametrize("header", [True, False])
def test_long_sequences_do_not_underflow(header):
    # 1500 observations: the unnormalized mass would fall below 1e-308 many times over (each step can
    # multiply it by as little as the grid step, 0.05), so the family's sparse renormalization is used
    # ~10 times; it must agree with the textbook filter to float64 precision.
    params = {"n_states": 3, "n_symbols": 3, "length": 1500, "header": header}
    if not header:
        params.update(transition=FIXED_T, emission=FIXED_E)
    fam = streams.make("hmm", **params)
    batch = fam.sample(3, gen(11))
    H = fam.header_len
    for b in range(3):
        T, E = batch.latent["transition"][b].numpy(), batch.latent["emission"][b].numpy()
        obs = (batch.tokens[b, H + 1 :] - 1).numpy()
        got = batch.posterior[b, H : H + 1500, 1:4].numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, numpy_filter(obs, T, E), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Determinism, parameters, validation


def test_determinism():
    fam = streams.make("hmm", n_states=3, n_symbols=3, length=8)
    a, b, c = fam.sample(16, gen(7)), fam.sample(16, gen(7)), fam.sample(16, gen(8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.posterior, b.posterior)
    assert all(torch.equal(a.latent[k], b.latent[k]) for k in a.latent)
    assert not torch.equal(a.tokens, c.tokens)


def test_registry_shapes_and_length():
    fam = streams.make("hmm")
    assert isinstance(fam, HMM) and fam.length_param == "length"
    assert fam.vocab_size == 1 + 5 + 21 and fam.seq_len == 25 + 25 + 1 + 32
    longer = fam.with_length(64)
    batch = longer.sample(3, gen(9))
    assert batch.tokens.shape == (3, longer.seq_len) and batch.vocab_size == longer.vocab_size
    fixed = streams.make("hmm", n_states=1, n_symbols=2, header=False,
                         transition=[[1.0]], emission=[[0.3, 0.7]])
    batch = fixed.sample(5, gen(10))
    assert fixed.vocab_size == 3 and batch.tokens.shape == (5, 33)
    assert torch.allclose(batch.posterior[:, :32, 1:], torch.tensor([0.3, 0.7], dtype=torch.float64))


GOOD_T = [[0.5, 0.5], [0.2, 0.8]]
GOOD_E = [[0.5, 0.5], [0.1, 0.9]]


@pytest.mark.parametrize(
    "params, param",
    [
        (dict(grid=0.3), "grid"),
        (dict(grid=0.0), "grid"),
        (dict(grid=1.0), "grid"),
        (dict(grid=0.25), "grid"),  # 4 units cannot give each of 5 entries one unit
        (dict(n_states=0), "n_states"),
        (dict(n_symbols=1), "n_symbols"),
        (dict(length=0), "length"),
        (dict(concentration=0.0), "concentration"),
        (dict(stickiness=-1.0), "stickiness"),
        (dict(header="yes"), "header"),
        (dict(transition=GOOD_T, n_states=2, n_symbols=2), "transition"),  # only with header=False
        (dict(header=False, n_states=2, n_symbols=2, emission=GOOD_E), "transition"),
        (dict(header=False, n_states=2, n_symbols=2, transition=GOOD_T), "emission"),
        (dict(header=False, n_states=2, n_symbols=2, transition=[[1.0, 0.0, 0.0]] * 2, emission=GOOD_E),
         "transition"),
        (dict(header=False, n_states=2, n_symbols=3, transition=GOOD_T, emission=GOOD_E), "emission"),
        (dict(header=False, n_states=2, n_symbols=2, transition=[[0.5, 0.6], [0.2, 0.8]], emission=GOOD_E),
         "transition"),
        (dict(header=False, n_states=2, n_symbols=2, transition=GOOD_T, emission=[[1.5, -0.5], [0.1, 0.9]]),
         "emission"),
        (dict(header=False, n_states=2, n_symbols=2, transition=[[0.5], [0.2, 0.8]], emission=GOOD_E),
         "transition"),
    ],
)
def test_bad_parameters_name_the_parameter(params, param):
    with pytest.raises(ValueError, match=rf"hmm\.{param}"):
        streams.make("hmm", **params)


def test_fine_grid_is_accepted():
    fam = streams.make("hmm", grid=0.01, n_states=2, n_symbols=3, length=4)
    batch = fam.sample(8, gen(11))
    assert fam.vocab_size == 1 + 3 + 101
    assert (batch.tokens[:, : fam.header_len] - 4).reshape(8, -1)[:, :4].sum(-1).eq(200).all()


def test_the_shipped_fixed_hmm_needs_the_filter():
    """configs/stream/hmm_fixed.yaml (the primitives table's filtering row) says a predictor given only the last
    symbol is 0.18 bits from the posterior and one given none 0.31: both computed here by hand (the exact
    predictive from the state marginal at each position), against the family's filter."""
    fam = load_stream(Path(__file__).resolve().parents[2] / "configs/stream/hmm_fixed.yaml").tasks[0].family
    batch = fam.sample(8000, gen(0))
    post = batch.posterior[:, : fam.length, 1 : 1 + fam.n_symbols]  # SEP, o_1 .. o_{L-1} predict o_1 .. o_L
    obs = (batch.tokens[:, 1:] - 1).numpy()
    T, E = np.array(fam.transition, dtype=float), np.array(fam.emission, dtype=float)
    marginals = [np.full(fam.n_states, 1 / fam.n_states)]  # the state's marginal at each position
    for _ in range(fam.length):
        marginals.append(marginals[-1] @ T)
    none = [np.broadcast_to(marginals[t] @ E, (len(obs), fam.n_symbols)) for t in range(fam.length)]
    last = [none[0]]
    for t in range(1, fam.length):  # P(s_{t-1} | o_{t-1}) from the marginal at t - 1, moved one step, emitted
        belief = marginals[t - 1][None, :] * E[:, obs[:, t - 1]].T
        last.append((belief / belief.sum(1, keepdims=True)) @ T @ E)
    p = post.numpy()

    def kl_bits(q):
        return float((p * (np.log(p) - np.log(np.stack(q, 1)))).sum(-1).mean() / math.log(2))

    assert abs(kl_bits(last) - 0.18) < 0.01
    assert abs(kl_bits(none) - 0.31) < 0.015
