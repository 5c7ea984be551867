"""The recall family against brute-force enumeration of all key→value maps, and sampled frequencies."""

from __future__ import annotations

import itertools

import pytest
import torch

import streams
from streams.families.recall import Recall
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force_posterior(tokens: list[int], n_keys: int, n_values: int) -> tuple[torch.Tensor, list[bool]]:
    """Enumerate every map keys→values (n_values ** n_keys of them), keep those agreeing with every
    (key, value) pair shown before each key token, and count the current key's value.
    Token ids: 0 QUERY, keys 1..K, values K+1..K+NV. Returns the posterior and which positions hold keys."""
    K, NV, T = n_keys, n_values, len(tokens)
    maps = list(itertools.product(range(NV), repeat=K))
    is_key = [1 <= tok <= K for tok in tokens]
    post = torch.zeros(T, 1 + K + NV, dtype=torch.float64)
    for t in range(T - 1):
        if not is_key[t]:
            continue
        shown = [(tokens[s] - 1, tokens[s + 1] - 1 - K) for s in range(t) if is_key[s]]
        consistent = [m for m in maps if all(m[k] == v for k, v in shown)]
        assert consistent, "the sampled prefix has no consistent map"
        for m in consistent:
            post[t, 1 + K + m[tokens[t] - 1]] += 1
        post[t] /= len(consistent)
    return post, is_key[:-1] + [False]


@pytest.mark.parametrize(
    "n_keys, n_values, n_pairs, n_queries", [(3, 2, 2, 3), (2, 3, 3, 2), (3, 3, 1, 4), (2, 2, 4, 0)]
)
def test_matches_brute_force_enumeration(n_keys, n_values, n_pairs, n_queries):
    batch = Recall(n_keys, n_values, n_pairs, n_queries).sample(300, gen(n_keys * 10 + n_values))
    for b in range(len(batch)):
        expected, is_key = brute_force_posterior(batch.tokens[b].tolist(), n_keys, n_values)
        torch.testing.assert_close(batch.posterior[b], expected, rtol=0, atol=1e-10)
        assert batch.scored[b].tolist() == is_key


def test_layout_and_latent():
    K, NV, P, Q = 5, 3, 4, 3
    batch = Recall(K, NV, P, Q).sample(128, gen(0))
    tok = batch.tokens
    assert tok.shape == (128, 2 * P + 1 + 2 * Q) and batch.vocab_size == 1 + K + NV
    assert (tok[:, 2 * P] == 0).all(), "QUERY follows the pairs"
    assert ((tok == 0).sum(-1) == 1).all(), "exactly one QUERY"
    pairs = torch.cat([tok[:, : 2 * P], tok[:, 2 * P + 1 :]], dim=1)
    keys, values = pairs[:, 0::2], pairs[:, 1::2]
    assert ((keys >= 1) & (keys <= K)).all() and ((values > K) & (values <= K + NV)).all()
    assert torch.equal(batch.latent["keys"] + 1, keys)
    assert torch.equal(batch.latent["map"].gather(1, keys - 1) + 1 + K, values)


def test_unseen_query_is_uniform_and_seen_query_is_recalled():
    K, NV, P = 8, 4, 3
    batch = Recall(K, NV, P, 1).sample(2000, gen(4))
    q_pos = 2 * P + 1
    qkey = batch.tokens[:, q_pos]
    was_shown = (batch.tokens[:, 0 : 2 * P : 2] == qkey[:, None]).any(-1)
    assert was_shown.any() and (~was_shown).any()
    post = batch.posterior[:, q_pos, 1 + K :]
    assert (post[~was_shown] == 1.0 / NV).all()
    answer = torch.nn.functional.one_hot(batch.tokens[:, q_pos + 1] - 1 - K, NV).double()
    assert torch.equal(post[was_shown], answer[was_shown])


def test_prefix_consistency_and_frequencies():
    # False-alarm rate: 1e-3 overall (Bonferroni over the tested prefix groups).
    batch = Recall(n_keys=2, n_values=2, n_pairs=2, n_queries=2).sample(100_000, gen(202))
    check_posterior_shape_and_mass(batch)
    report = check_prefix_consistency_and_frequencies(batch, alpha=1e-3)
    assert report.n_tested >= 10, report
    assert report.n_sequences_tested >= 100_000, report


def test_determinism():
    fam = Recall()
    a, b, c = fam.sample(32, gen(1)), fam.sample(32, gen(1)), fam.sample(32, gen(2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.posterior, b.posterior)
    assert torch.equal(a.latent["map"], b.latent["map"])
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, param",
    [
        (dict(n_keys=1), "recall.n_keys"),
        (dict(n_values=1), "recall.n_values"),
        (dict(n_pairs=0), "recall.n_pairs"),
        (dict(n_queries=-1), "recall.n_queries"),
        (dict(n_queries=True), "recall.n_queries"),
    ],
)
def test_bad_parameters(params, param):
    with pytest.raises(ValueError, match=param):
        Recall(**params)


def test_registry_and_length():
    fam = streams.make("recall", n_keys=4, n_values=6, n_pairs=5, n_queries=2)
    assert fam.seq_len == 15 and fam.vocab_size == 11
    longer = fam.with_length(7)
    assert longer.seq_len == 25 and longer.sample(3, gen(0)).tokens.shape == (3, 25)


@pytest.mark.parametrize("params", [dict(), dict(n_keys=2, n_values=2, n_pairs=1, n_queries=0),
                                    dict(n_keys=32, n_values=3, n_pairs=20, n_queries=9)])
def test_posterior_mass(params):
    batch = Recall(**params).sample(50, gen(9))
    check_posterior_shape_and_mass(batch)
    K = batch.latent["map"].shape[1]
    assert (batch.posterior[..., : 1 + K] == 0).all(), "no mass on QUERY or key tokens"
