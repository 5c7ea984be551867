"""Finite task pools (`tasks: N`): the pool posterior of every family against a brute-force computation
(each task's probability of the prefix, token by token, from the generative description), against sampled
next-token frequencies grouped by prefix, and at its limits (one task: that task's own predictive; a
growing pool: closer and closer to the family's own posterior). Streams carry both yardsticks."""

from __future__ import annotations

import math

import pytest
import torch

from streams import Stream, make
from streams.pool import POOL_CHUNK, TaskPool
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force(family, tasks: dict, tokens: torch.Tensor, token_prob) -> torch.Tensor:
    """P(next | prefix) = Σ_k P(k | prefix) P_k(next | prefix), by loops: `token_prob(task, prefix, v)` is
    task k's probability of token v after `prefix` (1 for tokens that do not depend on the task)."""
    B, T = tokens.shape
    V = family.vocab_size
    n = len(next(iter(tasks.values())))
    out = torch.zeros(B, T, V, dtype=torch.float64)
    for b in range(B):
        seq = tokens[b].tolist()
        for t in range(T - 1):
            weights = []
            for k in range(n):
                task = {key: value[k] for key, value in tasks.items()}
                w = 1.0
                for s in range(1, t + 1):
                    w *= token_prob(task, seq[:s], seq[s])
                weights.append(w)
            total = sum(weights)
            for v in range(V):
                out[b, t, v] = sum(w * token_prob({key: value[k] for key, value in tasks.items()}, seq[: t + 1], v)
                                   for k, w in enumerate(weights)) / total
    return out


def dirichlet_prob(task, prefix, v):
    return float(task["theta"][v - 1]) if v >= 1 else 0.0


def bijection_prob(K):
    def prob(task, prefix, v):
        if len(prefix) % 2 == 1:  # after a key: its value under the task
            return 1.0 if v == K + int(task["perm"][prefix[-1]]) else 0.0
        return 1.0  # the next key: the same for every task
    return prob


def recall_prob(family):
    K, P = family.n_keys, family.n_pairs
    keys_at = set(range(0, 2 * P, 2)) | set(range(2 * P + 1, family.seq_len, 2))

    def prob(task, prefix, v):
        if len(prefix) - 1 in keys_at:
            return 1.0 if v == 1 + K + int(task["table"][prefix[-1] - 1]) else 0.0
        return 1.0
    return prob


def changepoint_prob(task, prefix, v):
    t = len(prefix) - 1  # position t predicts x_{t+1}, drawn with θ[t]
    return float(task["theta"][t][v - 1]) if v >= 1 else 0.0


CASES = {
    "dirichlet": (dict(n_symbols=3, alpha=0.7, length=5), lambda f: dirichlet_prob),
    "bijection": (dict(n_keys=3), lambda f: bijection_prob(3)),
    "bijection_replacement": (dict(n_keys=3, n_pairs=4, with_replacement=True), lambda f: bijection_prob(3)),
    "recall": (dict(n_keys=3, n_values=2, n_pairs=2, n_queries=2), recall_prob),
    "changepoint": (dict(n_symbols=2, alpha=1.0, hazard=0.3, length=5), lambda f: changepoint_prob),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_the_pool_posterior_is_bayes_over_the_tasks(case, n_tasks):
    params, prob = CASES[case]
    name = "bijection" if case.startswith("bijection") else case
    family = make(name, **params)
    pool = TaskPool.draw(family, n_tasks, gen(1))
    batch = pool.sample(12, gen(2))
    check_posterior_shape_and_mass(batch)
    expected = brute_force(family, pool.tasks, batch.tokens, prob(family))
    scored = batch.scored
    torch.testing.assert_close(batch.posterior[scored], expected[scored], atol=1e-12, rtol=0)
    assert batch.general is not None and batch.general.shape == batch.posterior.shape
    g = gen(2)  # the same draws: the task of each sequence, then the sequences from those tasks
    index = torch.randint(0, n_tasks, (12,), generator=g)
    assert torch.equal(index, batch.latent["task"])
    same = family.sample_tasks({k: v[index] for k, v in pool.tasks.items()}, g)
    assert torch.equal(same.tokens, batch.tokens) and torch.equal(same.posterior, batch.general)


@pytest.mark.parametrize("case", ["dirichlet", "bijection", "recall", "changepoint"])
def test_sampled_frequencies_follow_the_pool_posterior(case):
    params, _ = CASES[case]
    family = make(case, **params)
    pool = TaskPool.draw(family, 4, gen(3))
    check = check_prefix_consistency_and_frequencies(pool.sample(100_000, gen(4)), max_prefix_len=4)
    assert check.n_tested >= 5


def test_one_task_is_that_tasks_own_predictive():
    family = make("dirichlet", n_symbols=4, length=8)
    pool = TaskPool.draw(family, 1, gen(5))
    batch = pool.sample(50, gen(6))
    theta = pool.tasks["theta"][0]
    assert torch.equal(batch.posterior[:, :8, 1:], theta.expand(50, 8, 4))  # θ itself, from the first symbol
    bij = TaskPool.draw(make("bijection", n_keys=5), 1, gen(7))
    b = bij.sample(20, gen(8))
    keys = b.tokens[:, 0::2]
    assert torch.equal(b.posterior[:, 0::2].argmax(-1), 5 + bij.tasks["perm"][0][keys])  # known before any pair
    assert torch.all(b.posterior[:, 0::2].amax(-1) == 1.0)


def test_a_growing_pool_approaches_the_familys_posterior():
    """Mean KL(general ‖ pool) over positions: it falls as the pool grows (measured, printed)."""
    family = make("dirichlet", n_symbols=4, alpha=1.0, length=16)
    gaps = []
    for n in (1, 10, 100, 1000, 10_000):
        batch = TaskPool.draw(family, n, gen(9)).sample(256, gen(10))
        g, p = batch.general[batch.scored], batch.posterior[batch.scored]
        kl = (torch.xlogy(g, g) - torch.xlogy(g, p)).sum(-1).mean().item() / math.log(2)
        gaps.append(kl)
    print("KL(general || pool) bits by pool size 1, 10, 100, 1e3, 1e4:", [f"{k:.4f}" for k in gaps])
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.05 * gaps[0]


def test_a_pool_larger_than_a_slice_gives_the_same_posterior():
    family = make("dirichlet", n_symbols=3, length=6)
    pool = TaskPool.draw(family, POOL_CHUNK + 7, gen(11))
    batch = pool.sample(8, gen(12))
    theta = pool.tasks["theta"]
    x = batch.tokens[:, 1:] - 1
    loglik = torch.zeros(8, len(theta), 7, dtype=torch.float64)
    loglik[:, :, 1:] = torch.log(theta)[:, x].permute(1, 0, 2)
    w = torch.softmax(loglik.cumsum(-1), dim=1)
    torch.testing.assert_close(batch.posterior[:, :6, 1:], torch.einsum("bnt,nk->btk", w[:, :, :6], theta))


def test_streams_carry_both_yardsticks_through_relabels_and_offsets():
    spec = {"batch_size": 16, "eval_size": 32, "phases": [
        {"name": "prior", "family": "dirichlet", "params": {"n_symbols": 4}, "steps": 5},
        {"name": "pool", "family": "bijection", "params": {"n_keys": 4}, "steps": 5, "tasks": 3, "relabel": True,
         "offset": 5, "repeat": 2}]}
    stream = Stream.from_spec(spec, seed=0)
    assert "pool of 3 tasks" in stream.describe()
    assert stream.batch(0).general is None and stream.eval_bank(0).general is None
    for phase in (1, 2):
        bank, batch = stream.eval_bank(phase), stream.batch(stream.phases[phase].start)
        for b in (bank, batch):
            check_posterior_shape_and_mass(b)
            assert b.general is not None and torch.all(b.general[b.scored].sum(-1).sub(1).abs() < 1e-12)
            assert not torch.allclose(b.general, b.posterior)  # the pool knows more than the prior
        # the two pools of the repeat are drawn apart
    assert not torch.equal(stream.tasks[1].pool.tasks["perm"], stream.tasks[2].pool.tasks["perm"])
    with pytest.raises(ValueError, match=r"phases\[0\]\.tasks=0: must be an integer >= 1"):
        Stream.from_spec({"phases": [{"family": "dirichlet", "steps": 1, "tasks": 0}]})
    with pytest.raises(ValueError, match=r"phases\[0\]\.eval_length: changepoint"):
        Stream.from_spec({"eval_length": 9, "phases": [{"family": "changepoint", "steps": 1, "tasks": 2}]})


def test_gradual_mixing_of_a_pool_phase_keeps_the_general_posterior_row_by_row():
    spec = {"batch_size": 32, "transition": "gradual", "window": 4, "phases": [
        {"name": "a", "family": "dirichlet", "params": {"n_symbols": 3}, "steps": 6},
        {"name": "b", "family": "dirichlet", "params": {"n_symbols": 3}, "steps": 6, "tasks": 2}]}
    stream = Stream.from_spec(spec, seed=0)
    batch = stream.batch(5)  # inside the window: both phases
    owners = batch.latent["phase"]
    assert set(owners.tolist()) == {0, 1}
    torch.testing.assert_close(batch.general[owners == 0], batch.posterior[owners == 0])  # no pool: the same
