"""Bijection elimination (the paper's task A): recall a random key→value bijection pair by pair.

Token layout (V = 2 * n_keys, T = 2 * n_pairs):
    ids 0 .. n_keys-1            keys
    ids n_keys .. 2*n_keys-1     values
    sequence                     k1 v1 k2 v2 ... k_P v_P

Each sequence draws a uniform bijection (permutation) from keys to values. Without replacement the P
keys are distinct and in uniformly random order (P <= n_keys); with replacement they are i.i.d. uniform.
Scored positions are the key positions, predicting the value that follows. Given the prefix, the
bijections still possible are exactly those agreeing with the pairs shown, so the posterior of the
value is a point mass on the bound value if the key appeared before, and otherwise uniform over the
values not yet used by earlier keys (each unseen key is equally likely to map to each unused value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch, Family, random_permutations, register
from streams.checks import check_int
from streams.pool import mixture


@register
@dataclass
class Bijection(Family):
    n_keys: int = 8
    n_pairs: int | None = None  # None: n_keys
    with_replacement: bool = False

    name = "bijection"
    description = "recall a random key->value bijection; posterior eliminates used values"
    length_param = "n_pairs"

    def __post_init__(self) -> None:
        check_int(self.name, "n_keys", self.n_keys, 2)
        if not isinstance(self.with_replacement, bool):
            raise ValueError(f"{self.name}.with_replacement={self.with_replacement!r}: must be true or false")
        if self.n_pairs is not None:
            high = float("inf") if self.with_replacement else self.n_keys
            check_int(self.name, "n_pairs", self.n_pairs, 1, high)

    @property
    def pairs(self) -> int:
        return self.n_keys if self.n_pairs is None else int(self.n_pairs)

    @property
    def vocab_size(self) -> int:
        return 2 * self.n_keys

    @property
    def seq_len(self) -> int:
        return 2 * self.pairs

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample_tasks(self.draw_tasks(batch_size, generator), generator)

    # --- finite task pools (streams.pool): a task is the bijection
    def draw_tasks(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"perm": random_permutations(n, self.n_keys, generator)}  # perm[k, key]: its value index

    def pool_posterior(self, tasks: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The value of a key: its value under each task that agrees with every pair shown, equally weighted
        (the keys' order says nothing of the task)."""
        K = self.n_keys
        return point_mass_pool(tasks["perm"], batch.tokens[:, 0::2], batch.tokens[:, 1::2] - K, K, 2 * K,
                               value_offset=K, key_positions=slice(0, None, 2))

    def sample_tasks(self, tasks: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        perm = tasks["perm"]  # perm[b, k]: value index bound to key k
        (B, K), P = perm.shape, self.pairs
        if self.with_replacement:
            keys = torch.randint(0, K, (B, P), generator=generator)
        else:
            keys = random_permutations(B, K, generator)[:, :P]
        values = perm.gather(1, keys)  # [B, P], value indices 0..K-1
        tokens = torch.stack([keys, values + K], dim=-1).reshape(B, 2 * P)

        # free[b, i, v]: value v was not shown before pair i (repeated keys show the same value again).
        onehot = torch.nn.functional.one_hot(values, K).to(torch.float64)  # [B, P, K]
        free = (onehot.cumsum(1) - onehot) == 0
        posterior = torch.zeros(B, 2 * P, 2 * K, dtype=torch.float64)
        if self.with_replacement:
            free = free.to(torch.float64)
            uniform = free / free.sum(-1, keepdim=True).clamp(min=1)  # all used only if key seen
            posterior[:, 0::2, K:] = torch.where(seen_before(keys, K)[..., None], onehot, uniform)
        else:  # distinct keys: no key is seen twice, and before pair i exactly K - i values are free
            torch.div(free, torch.arange(K, K - P, -1, dtype=torch.float64)[:, None], out=posterior[:, 0::2, K:])
        scored = torch.zeros(B, 2 * P, dtype=torch.bool)
        scored[:, 0::2] = True
        return Batch(tokens, posterior, scored, {"perm": perm, "keys": keys})


def point_mass_pool(table: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, n_values: int, vocab: int,
                    value_offset: int, key_positions: slice | torch.Tensor, seq_len: int | None = None
                    ) -> torch.Tensor:
    """The pool posterior of a family whose task is a table key -> value (bijection, recall) and whose
    sequences show (key, value) pairs: at key position i, the value under each task that agrees with the
    pairs before i, weighted equally. `table [N, n_keys]`, `keys`/`values [B, P]` (value indices); the
    posterior `[B, T, vocab]` has the value distribution at the key positions `key_positions` of T."""
    B, P = keys.shape
    N = table.shape[0]

    def loglik(sl):  # at the value after key i: 0 if the task binds that key to it, else -inf
        agree = table[sl][:, keys] == values  # [n, B, P]
        out = torch.zeros(B, sl.stop - sl.start, P, dtype=torch.float64)
        out[~agree.permute(1, 0, 2)] = -torch.inf
        return torch.cat([torch.zeros_like(out[:, :, :1]), out[:, :, :-1]], dim=2)  # known after the pair

    def predictive(w, sl):  # w [B, n, P]: scatter each task's weight onto its value of key i
        mass = torch.zeros(B, P, n_values, dtype=torch.float64)
        mass.scatter_add_(2, table[sl][:, keys].permute(1, 2, 0), w.permute(0, 2, 1))
        return mass

    posterior = torch.zeros(B, seq_len or 2 * P, vocab, dtype=torch.float64)
    posterior[:, key_positions, value_offset : value_offset + n_values] = mixture(N, loglik, predictive)
    return posterior


def seen_before(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """`seen[b, i]`: keys[b, i] already appeared among keys[b, :i], i.e. its first occurrence is earlier.
    First occurrences by a scatter-min over positions: O(B·(N+K)) memory and work, no [B, N, K] one-hots."""
    B, N = keys.shape
    pos = torch.arange(N).expand(B, N)
    first = torch.full((B, n_keys), N).scatter_reduce_(1, keys, pos, "amin")
    return first.gather(1, keys) < pos
