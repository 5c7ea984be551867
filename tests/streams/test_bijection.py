"""The bijection family against brute-force enumeration of all bijections, and sampled frequencies.

Also tests the shared prefix/frequency helper itself: it must catch a wrong posterior.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import streams
from streams.families.bijection import Bijection
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force_posterior(tokens: list[int], n_keys: int) -> torch.Tensor:
    """Enumerate every bijection keys→values, keep those agreeing with the pairs shown before each key
    position, and count where the current key goes. Token ids: keys 0..K-1, values K..2K-1."""
    K, T = n_keys, len(tokens)
    perms = list(itertools.permutations(range(K)))
    post = torch.zeros(T, 2 * K, dtype=torch.float64)
    for t in range(0, T, 2):
        shown = [(tokens[s], tokens[s + 1] - K) for s in range(0, t, 2)]
        consistent = [p for p in perms if all(p[k] == v for k, v in shown)]
        assert consistent, "the sampled prefix has no consistent bijection"
        for p in consistent:
            post[t, K + p[tokens[t]]] += 1
        post[t] /= len(consistent)
    return post


@pytest.mark.parametrize(
    "n_pairs, with_replacement", [(4, False), (3, False), (1, False), (5, True), (2, True)]
)
def test_matches_brute_force_enumeration(n_pairs, with_replacement):
    fam = Bijection(n_keys=4, n_pairs=n_pairs, with_replacement=with_replacement)
    batch = fam.sample(300, gen(11 + n_pairs))
    for b in range(len(batch)):
        expected = brute_force_posterior(batch.tokens[b].tolist(), 4)
        torch.testing.assert_close(batch.posterior[b], expected, rtol=0, atol=1e-10)
    assert batch.scored[:, 0::2].all() and not batch.scored[:, 1::2].any()


def test_with_replacement_repeats_keys_and_sees_point_masses():
    batch = Bijection(n_keys=4, n_pairs=5, with_replacement=True).sample(200, gen(3))
    keys = batch.tokens[:, 0::2]
    # Five keys from four always repeat one: some key position must be a point mass on the shown value.
    assert (batch.posterior[:, 0::2].amax(-1) == 1.0).any(-1).all()
    assert ((keys[:, :, None] == keys[:, None, :]).sum((-1, -2)) > 5).all()


def test_layout_and_latent():
    K, P = 5, 4
    batch = Bijection(n_keys=K, n_pairs=P).sample(64, gen(0))
    keys, values = batch.tokens[:, 0::2], batch.tokens[:, 1::2]
    assert batch.tokens.shape == (64, 2 * P) and batch.vocab_size == 2 * K
    assert ((keys >= 0) & (keys < K)).all() and ((values >= K) & (values < 2 * K)).all()
    assert torch.equal(batch.latent["keys"], keys)
    perm = batch.latent["perm"]
    assert torch.equal(perm.sort(-1).values, torch.arange(K).expand(64, K))
    assert torch.equal(perm.gather(1, keys) + K, values)
    assert (keys.sort(-1).values.diff(dim=-1) > 0).all(), "keys must be distinct without replacement"


def test_full_sequence_last_key_is_forced():
    # With n_pairs == n_keys the last key has exactly one unused value left.
    batch = Bijection(n_keys=6).sample(128, gen(5))
    last = batch.posterior[:, -2]
    assert torch.equal(last, torch.nn.functional.one_hot(batch.tokens[:, -1], 12).double())


def test_key_order_is_uniform():
    # The first key is uniform over the keys (3000 draws per key expected; 5 sigma ~ 270).
    counts = torch.bincount(Bijection(n_keys=4).sample(12000, gen(8)).tokens[:, 0], minlength=4)
    assert (counts - 3000).abs().max() < 270, counts


@pytest.mark.parametrize(
    "params, seed", [(dict(n_keys=3), 101), (dict(n_keys=3, n_pairs=4, with_replacement=True), 102)]
)
def test_prefix_consistency_and_frequencies(params, seed):
    # False-alarm rate of each check: 1e-3 overall (Bonferroni over the tested prefix groups).
    batch = Bijection(**params).sample(100_000, gen(seed))
    check_posterior_shape_and_mass(batch)
    report = check_prefix_consistency_and_frequencies(batch, alpha=1e-3)
    assert report.n_tested >= 10, report
    assert report.n_sequences_tested >= 100_000, report


def test_determinism():
    fam = Bijection(n_keys=8)
    a, b, c = fam.sample(32, gen(1)), fam.sample(32, gen(1)), fam.sample(32, gen(2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.posterior, b.posterior)
    assert torch.equal(a.latent["perm"], b.latent["perm"])
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize(
    "params, param",
    [
        (dict(n_keys=1), "bijection.n_keys"),
        (dict(n_keys=2.5), "bijection.n_keys"),
        (dict(n_keys=4, n_pairs=5), "bijection.n_pairs"),
        (dict(n_keys=4, n_pairs=0, with_replacement=True), "bijection.n_pairs"),
        (dict(with_replacement="yes"), "bijection.with_replacement"),
    ],
)
def test_bad_parameters(params, param):
    with pytest.raises(ValueError, match=param):
        Bijection(**params)


def test_registry_and_length():
    with pytest.raises(ValueError, match="Did you mean 'bijection'"):
        streams.make("bijecton")
    fam = streams.make("bijection", n_keys=6)
    assert fam.seq_len == 12 and fam.vocab_size == 12
    assert Bijection(n_keys=4, n_pairs=9, with_replacement=True).seq_len == 18
    longer = Bijection(n_keys=6, with_replacement=True).with_length(10)
    assert longer.seq_len == 20 and longer.sample(4, gen(0)).tokens.shape == (4, 20)
    with pytest.raises(ValueError, match="bijection.n_pairs"):
        Bijection(n_keys=6).with_length(7)


@pytest.mark.parametrize(
    "n_keys, n_pairs, repl", [(2, 1, False), (2, 7, True), (9, 9, False), (16, None, False)]
)
def test_posterior_mass(n_keys, n_pairs, repl):
    batch = Bijection(n_keys=n_keys, n_pairs=n_pairs, with_replacement=repl).sample(50, gen(n_keys))
    check_posterior_shape_and_mass(batch)
    assert (batch.posterior[..., :n_keys] == 0).all(), "no mass on key tokens"


# --- the shared helper must catch wrong posteriors -----------------------------------------------------


@pytest.fixture(scope="module")
def small_batch():
    return Bijection(n_keys=3).sample(30_000, gen(7))


def test_helper_catches_wrong_frequencies(small_batch):
    post = small_batch.posterior.clone()
    post[:, 0, 3:] = torch.tensor([0.36, 0.32, 0.32], dtype=torch.float64)  # consistent, but wrong
    wrong = streams.Batch(small_batch.tokens, post, small_batch.scored)
    with pytest.raises(AssertionError, match="frequencies disagree"):
        check_prefix_consistency_and_frequencies(wrong)


def test_helper_catches_inconsistent_posteriors(small_batch):
    post = small_batch.posterior.clone()
    post[17, 2, 3:] += torch.tensor([1e-9, -1e-9, 0.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="same prefix"):
        check_prefix_consistency_and_frequencies(streams.Batch(small_batch.tokens, post, small_batch.scored))


def test_helper_catches_impossible_tokens(small_batch):
    post = small_batch.posterior.clone()
    post[:, 4] = post[:, 4].roll(1, dims=-1)  # the forced last value moves to the wrong token
    with pytest.raises(AssertionError, match="zero posterior mass"):
        check_prefix_consistency_and_frequencies(streams.Batch(small_batch.tokens, post, small_batch.scored))


def test_helper_catches_unscored_mass_and_bad_sums(small_batch):
    post = small_batch.posterior.clone()
    post[0, 1, 3] = 0.5
    with pytest.raises(AssertionError):
        check_posterior_shape_and_mass(streams.Batch(small_batch.tokens, post, small_batch.scored))
    post = small_batch.posterior.clone()
    post[0, 0] *= 0.9
    with pytest.raises(AssertionError):
        check_posterior_shape_and_mass(streams.Batch(small_batch.tokens, post, small_batch.scored))
