"""Continual-learning summaries of an R matrix, in bits.

`R[i][j]` is the KL (bits per scored token) on phase j's eval bank at the end of phase i; the rows are the
phases trained so far (a row may also hold columns for phases not yet trained). Sign convention: every
quantity here is "positive = worse", since R holds a loss, not an accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _rows(R) -> list[list[float | None]]:
    # Cells may be None (not evaluated); only the cells a summary reads must be numbers.
    rows = R.tolist() if isinstance(R, torch.Tensor) else [list(r) for r in R]
    if not rows:
        raise ValueError("the R matrix has no rows")
    for i, row in enumerate(rows):
        if len(row) <= i:
            raise ValueError(f"R row {i} has {len(row)} entries; it needs at least {i + 1} (phases 0..{i})")
    return [[None if v is None else float(v) for v in row] for row in rows]


def forgetting_bits(R) -> list[float]:
    """Per phase j <= last: R[last][j] − min_{i>=j} R[i][j] (the KL lost since its best; 0 for the last)."""
    rows = _rows(R)
    last = len(rows) - 1
    return [rows[last][j] - min(rows[i][j] for i in range(j, last + 1)) for j in range(last + 1)]


def bwt_bits(R) -> float:
    """Backward transfer: mean over j < last of R[last][j] − R[j][j]; positive = worse (forgetting)."""
    rows = _rows(R)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    return sum(rows[last][j] - rows[j][j] for j in range(last)) / last


def final_kl_bits(R) -> float:
    """KL on the last trained phase at the end of training: R[last][last]."""
    rows = _rows(R)
    return rows[-1][len(rows) - 1]


def final_mean_kl_bits(R) -> float:
    """Mean KL over the phases trained so far, at the end of training: mean_{j<=last} R[last][j]."""
    rows = _rows(R)
    last = len(rows) - 1
    return sum(rows[last][: last + 1]) / (last + 1)


def auc_kl(steps: Sequence[float], kls: Sequence[float], length: float | None = None) -> float:
    """Trapezoid area under a phase's KL curve divided by its length (default: the span of `steps`) — the
    time-averaged KL in bits. A single evaluation returns its value."""
    if len(steps) != len(kls) or not steps:
        raise ValueError(f"auc_kl needs equally long, non-empty steps and kls ({len(steps)} vs {len(kls)})")
    if len(steps) == 1:
        return float(kls[0])
    area = sum((steps[i + 1] - steps[i]) * (kls[i + 1] + kls[i]) / 2 for i in range(len(steps) - 1))
    span = steps[-1] - steps[0] if length is None else length
    if span <= 0:
        raise ValueError(f"auc_kl needs a positive length, got {span}")
    return float(area / span)


def steps_to_threshold(steps: Sequence[int], kls: Sequence[float], threshold: float,
                       start: int = 0) -> int | None:
    """Steps from `start` to the first evaluation with KL <= threshold; None if it never gets there."""
    for step, kl in zip(steps, kls):
        if kl <= threshold:
            return step - start
    return None


def plasticity_gap_bits(R_arm, R_fresh) -> list[float]:
    """Per phase i: R_arm[i][i] − R_fresh[i][i], the excess KL of the continual learner over a freshly
    initialized one trained on that phase alone (positive = lost plasticity), over their common phases."""
    a, f = _rows(R_arm), _rows(R_fresh)
    return [a[i][i] - f[i][i] for i in range(min(len(a), len(f)))]
