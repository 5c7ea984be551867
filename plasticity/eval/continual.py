"""Continual-learning summaries of an R matrix, in bits, and an arm's entry in summary.json.

`R[i][j]` is the KL (bits per scored token) on phase j's eval bank at the end of phase i; the rows are the
phases trained so far (a row may also hold columns for phases not yet trained). Sign convention: every
quantity here is "positive = worse", since R holds a loss, not an accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from plasticity.eval.rows import FRESH_ARM


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
    """Per phase j <= last: R[last][j] − min_{i>=j} R[i][j] (the KL lost since its best; 0 for the last),
    over the cells that were evaluated (eval.phases may leave some out; R[j][j] and R[last][j] never are)."""
    rows = _rows(R)
    last = len(rows) - 1
    return [rows[last][j] - min(rows[i][j] for i in range(j, last + 1) if rows[i][j] is not None)
            for j in range(last + 1)]


def bwt_bits(R) -> float:
    """Backward transfer: mean over j < last of R[last][j] − R[j][j]; positive = worse (forgetting)."""
    rows = _rows(R)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    return sum(rows[last][j] - rows[j][j] for j in range(last)) / last


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


STEP_FIGURES = ("regret_bits", "regret_bits_per_token", "steady_kl_bits", "shift_cost_bits", "adaptation_steps")


def step_summary(figures: dict[int, dict], n_phases: int, first_online: int = 1) -> dict:
    """Per-phase lists of the prequential figures (plasticity.eval.prequential.phase_figures; None where the
    unit has no records), and the regret over the online phases (>= first_online): in bits and per token."""
    out = {key: [figures[i][key] if i in figures else None for i in range(n_phases)] for key in STEP_FIGURES}
    online = [figures[i] for i in figures if i >= first_online]
    if online:
        total = sum(f["regret_bits"] for f in online)
        tokens = sum(f["regret_bits"] / f["regret_bits_per_token"] for f in online if f["regret_bits_per_token"])
        out["regret_bits_online"] = total
        out["regret_bits_per_token_online"] = total / tokens if tokens else None
    return out


def arm_summary(strategy: str, R_rows: dict[int, list[float]], curves: dict[int, list[tuple[int, float]]],
                phases: Sequence, threshold_bits: float, diverged: str | None = None,
                step_figures: dict[int, dict] | None = None,
                R_general_rows: dict[int, list[float | None]] | None = None) -> dict:
    """R matrix, final KL (`final_kl_bits`: the mean over every phase of the last row; `final_current_kl_bits`:
    R[last][last]), forgetting, BWT, per phase the AUC of the KL curve and the steps to reach
    `threshold_bits`, and with `step_figures` (the per-phase prequential figures) their lists (`step_summary`).
    Where some phase has a finite task pool, `R_general_rows` (the KL to the family's general posterior) give
    `R_kl_general_bits` and `final_kl_general_bits`, the mean of its last row over the pool phases.
    A diverged arm has R rows only for the phases it finished: the rows it never reached are None, and so
    is everything read from the last row (final KL, forgetting, BWT), rather than numbers taken from an
    earlier phase that would pass for the end of the stream."""
    R = [R_rows[i] for i in sorted(R_rows)]
    n = len(phases)
    summary = {
        "strategy": strategy,
        "R_kl_bits": R,
        "final_kl_bits": sum(R[-1]) / len(R[-1]),
        "final_current_kl_bits": R[-1][len(R) - 1],
        "forgetting_bits": forgetting_bits(R),
        "bwt_bits": bwt_bits(R),
        "auc_kl": [],
        "steps_to_threshold": [],
    }
    for i, p in enumerate(phases[: len(R)]):
        curve = [(s, k) for s, k in curves.get(i, []) if p.start <= s <= p.start + p.steps]
        steps, kls = (list(x) for x in zip(*curve)) if curve else ([], [])
        summary["auc_kl"].append(auc_kl(steps, kls) if curve else None)
        summary["steps_to_threshold"].append(steps_to_threshold(steps, kls, threshold_bits, p.start) if curve else None)
    general = [R_general_rows[i] for i in sorted(R_general_rows or {})]
    if any(v is not None for row in general for v in row):
        last = [v for v in general[-1] if v is not None]
        summary["R_kl_general_bits"] = general
        summary["final_kl_general_bits"] = sum(last) / len(last) if last and not diverged else None
    if diverged:
        missing = n - len(R)
        summary.update(R_kl_bits=R + [[None] * n for _ in range(missing)], final_kl_bits=None,
                       final_current_kl_bits=None, forgetting_bits=None, bwt_bits=None,
                       auc_kl=summary["auc_kl"] + [None] * missing,
                       steps_to_threshold=summary["steps_to_threshold"] + [None] * missing,
                       diverged=diverged)
    if step_figures is not None:
        summary.update(step_summary(step_figures, n, first_online=1 if n > 1 else 0))
    return summary


def add_fresh(arm_results: dict[str, dict], fresh_kl: dict[int, float], n_phases: int,
              fresh_diverged: dict | None = None, fresh_steps: dict[int, dict] | None = None) -> None:
    """Add each arm's plasticity gap to the fresh learners (KL at the end of phase i, arm minus fresh) and
    the fresh learners' own entry; `fresh_kl[i]` is the KL of phase i's fresh learner at its end. With
    `fresh_steps` (their prequential figures by phase), each arm also gets the warm start's advantage or
    penalty per phase: `warm_start_regret_bits` (arm minus fresh regret, bits; + = the warm start cost
    bits) and `warm_start_adaptation_steps` (arm minus fresh adaptation steps)."""
    for res in arm_results.values():
        R = res["R_kl_bits"]
        # a diverged arm's rows stop early; a phase without a fresh learner (fresh_every) has no gap
        res["plasticity_gap_bits"] = [R[i][i] - fresh_kl[i] if i in fresh_kl and i < len(R) and R[i][i] is not None
                                      and fresh_kl[i] is not None and fresh_kl[i] == fresh_kl[i] else None
                                      for i in range(n_phases)]
        if fresh_steps and "regret_bits" in res:
            for key, out in (("regret_bits", "warm_start_regret_bits"), ("adaptation_steps",
                                                                          "warm_start_adaptation_steps")):
                res[out] = [None if i == 0 or i not in fresh_steps or res[key][i] is None
                            or fresh_steps[i][key] is None else res[key][i] - fresh_steps[i][key]
                            for i in range(n_phases)]
    arm_results[FRESH_ARM] = {"strategy": FRESH_ARM, "kl_bits_by_phase": {str(i): v for i, v in fresh_kl.items()}}
    if fresh_steps:
        arm_results[FRESH_ARM].update(step_summary(fresh_steps, n_phases))
    if fresh_diverged:
        arm_results[FRESH_ARM]["diverged"] = dict(fresh_diverged)
