"""Shared checks of the Batch contract for family tests.

- `check_posterior_shape_and_mass(batch)`: float64, non-negative, rows summing to 1 where scored and all
  zeros elsewhere, `scored[:, -1]` False.
- `check_prefix_consistency_and_frequencies(batch, ...)`: sequences sharing a prefix `tokens[:t+1]` at a
  scored position have the same posterior there (to 1e-12), and the next tokens observed after that
  prefix are distributed as that posterior (Pearson chi-square per prefix group, Bonferroni over groups,
  so the whole check has a false-alarm rate of at most `alpha`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streams.base import Batch


@dataclass(frozen=True)
class PrefixCheck:
    """What `check_prefix_consistency_and_frequencies` looked at, so tests can assert it tested enough."""

    n_groups: int  # distinct (position, prefix) groups at scored positions
    n_tested: int  # groups with at least `min_count` sequences, tested by chi-square
    n_sequences_tested: int  # sum of the tested groups' sizes
    min_pvalue: float  # smallest chi-square p-value over tested groups (1.0 if none)
    threshold: float  # alpha / n_tested: the Bonferroni per-group level


def check_posterior_shape_and_mass(batch: Batch, atol: float = 1e-12) -> None:
    tokens, post, scored = batch.tokens, batch.posterior, batch.scored
    assert tokens.dtype == torch.long, tokens.dtype
    assert post.dtype == torch.float64, post.dtype
    assert scored.dtype == torch.bool, scored.dtype
    assert post.shape[:2] == tokens.shape == scored.shape
    assert not scored[:, -1].any(), "scored[:, -1] must be False"
    assert (post >= 0).all(), "negative posterior mass"
    assert int(tokens.min()) >= 0 and int(tokens.max()) < post.shape[-1], "token id outside the vocabulary"
    mass = post.sum(-1)
    torch.testing.assert_close(mass[scored], torch.ones_like(mass[scored]), rtol=0, atol=atol)
    assert (post[~scored] == 0).all(), "posterior must be all zeros at unscored positions"


def chi2_sf(stat: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """Survival function of the chi-square distribution (float64), via the regularized gamma."""
    return torch.special.gammaincc(df.to(torch.float64) / 2, stat.to(torch.float64) / 2)


def _pooled_chi2(observed: torch.Tensor, expected: torch.Tensor, min_expected: float) -> tuple[float, int]:
    """Pearson statistic and degrees of freedom after pooling the rarest cells until every cell expects
    at least `min_expected` counts (the usual validity condition of the chi-square approximation)."""
    order = torch.argsort(expected)
    obs, exp = observed[order].tolist(), expected[order].tolist()
    cells: list[tuple[float, float]] = []
    acc_o = acc_e = 0.0
    for o, e in zip(obs, exp):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= min_expected:
            cells.append((acc_o, acc_e))
            acc_o = acc_e = 0.0
    if acc_e > 0 or acc_o > 0:  # leftovers join the last (largest) cell
        if cells:
            o, e = cells.pop()
            cells.append((o + acc_o, e + acc_e))
        else:
            cells.append((acc_o, acc_e))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    return stat, len(cells) - 1


def check_prefix_consistency_and_frequencies(
    batch: Batch,
    max_prefix_len: int | None = None,
    alpha: float = 1e-3,
    min_count: int = 100,
    min_expected: float = 5.0,
    atol: float = 1e-12,
) -> PrefixCheck:
    """Group sequences by `(t, tokens[:t+1])` at scored positions t < `max_prefix_len` (all if None).

    Asserts, per group: (1) every sequence in it is scored at t (scoredness is a function of the
    prefix) and has the same posterior row (max abs difference <= `atol`); (2) no next token has zero
    posterior mass; (3) for groups with >= `min_count` sequences, the next-token counts pass a Pearson
    chi-square goodness-of-fit test against the group's posterior at level `alpha / n_tested`
    (Bonferroni), so a correct family fails the whole check with probability <= `alpha`. Point-mass
    groups need no test: (2) already demands every next token equal the mass.
    """
    tokens, post, scored = batch.tokens, batch.posterior, batch.scored
    B, T = tokens.shape
    V = post.shape[-1]
    last = T - 1 if max_prefix_len is None else min(T - 1, max_prefix_len)
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (counts [G, V], representative posterior [G, V])
    n_groups = 0
    for t in range(last):
        prefixes, inverse = torch.unique(tokens[:, : t + 1], dim=0, return_inverse=True)
        G = prefixes.shape[0]
        # Scoredness must be a function of the prefix.
        n_in = torch.zeros(G, dtype=torch.long).index_add_(0, inverse, torch.ones(B, dtype=torch.long))
        n_scored = torch.zeros(G, dtype=torch.long).index_add_(0, inverse, scored[:, t].long())
        mixed = (n_scored > 0) & (n_scored < n_in)
        assert not mixed.any(), f"position {t}: sequences sharing a prefix disagree on whether t is scored"
        rows = scored[:, t].nonzero().squeeze(-1)
        if rows.numel() == 0:
            continue
        gid = inverse[rows]
        first = torch.full((G,), B, dtype=torch.long).scatter_reduce_(0, gid, rows, reduce="amin")
        rep = post[first[gid], t]
        diff = (post[rows, t] - rep).abs().amax(-1)
        worst = int(diff.argmax())
        assert float(diff[worst]) <= atol, (
            f"position {t}: posterior differs by {float(diff[worst]):.3g} between sequences "
            f"{int(rows[worst])} and {int(first[gid[worst]])} with the same prefix "
            f"{tokens[rows[worst], : t + 1].tolist()}"
        )
        nxt = tokens[rows, t + 1]
        p_next = post[rows, t].gather(1, nxt[:, None]).squeeze(1)
        bad = (p_next <= 0).nonzero()
        assert bad.numel() == 0, (
            f"position {t}: next token {int(nxt[bad[0, 0]])} has zero posterior mass after prefix "
            f"{tokens[rows[bad[0, 0]], : t + 1].tolist()}"
        )
        counts = torch.zeros(G, V, dtype=torch.float64)
        counts.index_put_((gid, nxt), torch.ones_like(nxt, dtype=torch.float64), accumulate=True)
        used = first < B
        n_groups += int(used.sum())
        groups.append((counts[used], post[first[used], t]))

    if not groups:
        return PrefixCheck(n_groups, 0, 0, 1.0, alpha)
    counts = torch.cat([c for c, _ in groups])
    probs = torch.cat([p for _, p in groups])
    n = counts.sum(-1)
    testable = (n >= min_count) & ((probs > 0).sum(-1) > 1)
    n_tested = int(testable.sum())
    threshold = alpha / max(n_tested, 1)
    min_p = 1.0
    for i in testable.nonzero().squeeze(-1).tolist():
        support = probs[i] > 0
        stat, df = _pooled_chi2(counts[i, support], n[i] * probs[i, support], min_expected)
        if df < 1:
            continue
        pvalue = float(chi2_sf(torch.tensor(stat), torch.tensor(float(df))))
        min_p = min(min_p, pvalue)
        assert pvalue >= threshold, (
            f"next-token frequencies disagree with the posterior: chi2={stat:.2f}, df={df}, p={pvalue:.3g} "
            f"< {threshold:.3g} (group of {int(n[i])}; observed {counts[i, support].tolist()}, "
            f"posterior {probs[i, support].tolist()})"
        )
    return PrefixCheck(n_groups, n_tested, int(n[testable].sum()), min_p, threshold)
