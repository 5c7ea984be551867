"""An arm's entry in summary.json, from its R rows and KL curves (pure computation, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from plasticity.continual_metrics import auc_kl, bwt_bits, forgetting_bits, plasticity_gap_bits, steps_to_threshold


def arm_summary(strategy: str, R_rows: dict[int, list[float]], curves: dict[int, list[tuple[int, float]]],
                phases: Sequence, threshold_bits: float, diverged: str | None = None) -> dict:
    """R matrix, final KL, forgetting, BWT, and per phase the AUC of the KL curve and the steps to reach
    `threshold_bits`. A diverged arm has R rows only for the phases it finished: the rows it never
    reached are None, and so is everything read from the last row (final KL, forgetting, BWT), rather
    than numbers taken from an earlier phase that would pass for the end of the stream."""
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
    if diverged:
        missing = n - len(R)
        summary.update(R_kl_bits=R + [[None] * n for _ in range(missing)], final_kl_bits=None,
                       final_current_kl_bits=None, forgetting_bits=None, bwt_bits=None,
                       auc_kl=summary["auc_kl"] + [None] * missing,
                       steps_to_threshold=summary["steps_to_threshold"] + [None] * missing,
                       diverged=diverged)
    return summary


def add_fresh(arm_results: dict[str, dict], diag: dict[int, float], n_phases: int,
              fresh_diverged: dict | None = None) -> None:
    """Add each arm's plasticity gap to the fresh learners (KL at the end of phase i, arm minus fresh) and
    the fresh learners' own entry."""
    fresh_R = [[0.0] * n_phases for _ in range(n_phases)]
    for i, v in diag.items():
        fresh_R[i][i] = v
    for res in arm_results.values():
        reached = [row for row in res["R_kl_bits"] if None not in row]  # a diverged arm's rows stop early
        gap = [None] + list(plasticity_gap_bits(reached, fresh_R)[1:])
        res["plasticity_gap_bits"] = gap + [None] * (n_phases - len(gap))
    arm_results["fresh"] = {"strategy": "fresh", "kl_bits_by_phase": {str(i): v for i, v in diag.items()}}
    if fresh_diverged:
        arm_results["fresh"]["diverged"] = dict(fresh_diverged)
