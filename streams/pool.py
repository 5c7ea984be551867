"""Finite task pools: a phase that draws `tasks: N` tasks once from its family's prior, each sequence one of
them, uniformly. `tasks: 1` is one fixed task (pure in-weights learning), a small N is memorization, a
large N approaches the family's own prior (Raventós et al. 2023).

The exact posterior under the pool prior is a forward filter over the task index: the mixture of the N
tasks' predictives, each weighted by its likelihood of the prefix. A pool's batches carry it as
`posterior`, and the family's own posterior — what an in-context learner that ignores the pool predicts —
as `general`: the KL to each is a yardstick, and their difference tells memorization from in-context
inference at every position.

A family takes part through three methods: `draw_tasks(n, generator)` (n tasks from its prior, a dict of
tensors with a leading task axis), `sample_tasks(tasks, generator)` (one sequence per task row, with the
family's own posterior) and `pool_posterior(tasks, batch)` (the posterior under the pool of `tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch, Family

POOL_CHUNK = 4096  # tasks per slice of the mixture (bounds the [B, tasks, T] weights in memory)


def mixture(n: int, loglik, predictive) -> torch.Tensor:
    """The pool posterior from per-task terms, over the n tasks in slices of POOL_CHUNK.

    `loglik(tasks)` (a slice of task indices) returns `[B, n_slice, T]`: log P_k(token t | tokens < t) up to
    a term that does not depend on k (0 where a token says nothing of the task, -inf where task k cannot
    produce it); `predictive(w, tasks)` contracts weights `w [B, n_slice, T]` with those tasks' predictives
    of the next token into a posterior `[B, T, ...]`. The weight of task k at position t is its posterior
    after tokens 0..t, softmax over k of Σ_{s<=t} loglik[:, k, s]: two passes, the normalizer first."""
    slices = [slice(a, min(a + POOL_CHUNK, n)) for a in range(0, n, POOL_CHUNK)]
    norm = None
    for sl in slices:
        part = torch.logsumexp(loglik(sl).cumsum(-1), dim=1)
        norm = part if norm is None else torch.logaddexp(norm, part)
    out = None
    for sl in slices:
        contribution = predictive(torch.exp(loglik(sl).cumsum(-1) - norm[:, None, :]), sl)
        out = contribution if out is None else out + contribution
    return out


@dataclass(eq=False)
class TaskPool:
    """A family restricted to a finite pool of its tasks (drawn once): samples like a family."""

    family: Family
    tasks: dict[str, torch.Tensor]

    @classmethod
    def draw(cls, family: Family, n: int, generator: torch.Generator) -> TaskPool:
        if not hasattr(family, "draw_tasks"):
            raise ValueError(f"family '{family.name}' has no finite task pools (tasks: N)")
        return cls(family, family.draw_tasks(n, generator))

    @property
    def n_tasks(self) -> int:
        return len(next(iter(self.tasks.values())))

    @property
    def vocab_size(self) -> int:
        return self.family.vocab_size

    @property
    def seq_len(self) -> int:
        return self.family.seq_len

    @property
    def name(self) -> str:
        return self.family.name

    def with_length(self, length: int) -> TaskPool:
        """The same tasks in sequences of another length (eval banks for length generalization)."""
        return TaskPool(self.family.with_length(length), self.tasks)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        index = torch.randint(0, self.n_tasks, (batch_size,), generator=generator)
        batch = self.family.sample_tasks({k: v[index] for k, v in self.tasks.items()}, generator)
        pooled = self.family.pool_posterior(self.tasks, batch)
        return Batch(batch.tokens, pooled, batch.scored, {**batch.latent, "task": index}, batch.posterior)

    def __str__(self) -> str:
        return f"{self.family} pool of {self.n_tasks} tasks"
