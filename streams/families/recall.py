"""Associative recall: key→value pairs, then queries whose answers must be recalled.

Token layout (V = 1 + n_keys + n_values, T = 2 * n_pairs + 1 + 2 * n_queries):
    id 0                                 QUERY marker
    ids 1 .. n_keys                      keys
    ids n_keys+1 .. n_keys+n_values      values
    sequence                             k1 v1 ... k_P v_P QUERY q1 a1 ... q_Q a_Q

Each sequence draws a random map keys→values (every key's value i.i.d. uniform: any function, not a
bijection). Pair keys and query keys are i.i.d. uniform over all keys, so a query may ask for a key
never shown. Every key position (pairs and queries) is scored, predicting the value that follows: a
point mass on the bound value if the key appeared earlier (in the pairs or in an earlier, answered
query), else uniform over all values, since the values of distinct keys are independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch, Family, register
from streams.checks import check_int
from streams.families.bijection import point_mass_pool, seen_before

QUERY = 0


@register
@dataclass
class Recall(Family):
    n_keys: int = 8
    n_values: int = 8
    n_pairs: int = 8
    n_queries: int = 4

    name = "recall"
    description = "associative recall of a random key->value map after a QUERY marker"
    length_param = "n_queries"

    def __post_init__(self) -> None:
        check_int(self.name, "n_keys", self.n_keys, 2)
        check_int(self.name, "n_values", self.n_values, 2)
        check_int(self.name, "n_pairs", self.n_pairs, 1)
        check_int(self.name, "n_queries", self.n_queries, 0)

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values

    @property
    def seq_len(self) -> int:
        return 2 * self.n_pairs + 1 + 2 * self.n_queries

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.sample_tasks(self.draw_tasks(batch_size, generator), generator)

    # --- finite task pools (streams.pool): a task is the key -> value map
    def draw_tasks(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"table": torch.randint(0, self.n_values, (n, self.n_keys), generator=generator)}

    def _key_positions(self) -> torch.Tensor:
        P = self.n_pairs
        return torch.cat([torch.arange(0, 2 * P, 2), torch.arange(2 * P + 1, self.seq_len, 2)])

    def pool_posterior(self, tasks: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """The value of a key (in a pair or a query): its value under each task that agrees with every
        key and value shown before (answered queries included), weighted equally."""
        at = self._key_positions()
        keys, values = batch.tokens[:, at] - 1, batch.tokens[:, at + 1] - (1 + self.n_keys)
        return point_mass_pool(tasks["table"], keys, values, self.n_values, self.vocab_size,
                               value_offset=1 + self.n_keys, key_positions=at, seq_len=self.seq_len)

    def sample_tasks(self, tasks: dict[str, torch.Tensor], generator: torch.Generator) -> Batch:
        table = tasks["table"]  # table[b, k]: value index of key k
        B, K, NV, P, Q = len(table), self.n_keys, self.n_values, self.n_pairs, self.n_queries
        keys = torch.randint(0, K, (B, P + Q), generator=generator)  # pair keys, then query keys
        values = table.gather(1, keys)
        T, V = self.seq_len, self.vocab_size
        pairs = torch.stack([keys + 1, values + (1 + K)], dim=-1).reshape(B, 2 * (P + Q))
        tokens = torch.cat([pairs[:, : 2 * P], torch.full((B, 1), QUERY), pairs[:, 2 * P :]], dim=1)

        # Unseen key: uniform over values; seen key (in the pairs or an earlier answered query): its value.
        seen = seen_before(keys, K).to(torch.float64)[..., None]  # [B, P+Q, 1]
        value_post = ((1.0 - seen) / NV).repeat(1, 1, NV)
        value_post.scatter_add_(2, values[..., None], seen)
        # Key positions are 0, 2, .., 2P-2 (pairs) and 2P+1, 2P+3, .. (queries): two strided slices, so
        # the posterior is written through views (no index tensors).
        key_slices = ((slice(0, 2 * P, 2), slice(0, P)), (slice(2 * P + 1, T, 2), slice(P, P + Q)))
        posterior = torch.zeros(B, T, V, dtype=torch.float64)
        scored = torch.zeros(T, dtype=torch.bool)
        for at, part in key_slices:
            posterior[:, at, 1 + K :] = value_post[:, part]
            scored[at] = True
        return Batch(tokens, posterior, scored.expand(B, T).clone(), {"map": table, "keys": keys})
