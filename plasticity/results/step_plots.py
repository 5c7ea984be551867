"""The hero figure: every arm's KL at every step of the stream (its prediction of each training batch before
the update, from steps/<unit>.csv), on one log axis, smoothed, with the raw values faint and the phase
boundaries marked. Fresh learners (each trained on one phase alone) are dashed."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from plasticity.eval.rows import FRESH_ARM, PRETRAIN_ARM, unit_arm
from plasticity.results.figures import DPI, KL_FLOOR, STYLE, arm_colors, arm_label, fig_legend
from plasticity.run.steplog import read_steps


def unit_records(run_dir: Path) -> dict[str, list[dict]]:
    """unit -> its per-step records, from <run_dir>/steps/*.csv (retention files aside)."""
    folder = Path(run_dir) / "steps"
    return {p.stem: read_steps(p) for p in sorted(folder.glob("*.csv")) if not p.stem.endswith(".retention")}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average (shorter at the ends)."""
    if window <= 1 or len(values) < 3:
        return values
    kernel = np.ones(window)
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def kl_every_step_figure(units: dict[str, list[dict]], phase_starts: list[int], names: list[str],
                         title: str = "") -> Figure | None:
    units = {u: r for u, r in units.items() if r}
    if not units:
        return None
    arm_of = {u: unit_arm(u) for u in units}
    arms = list(dict.fromkeys(arm_of[u] for u in units))
    colors = arm_colors(arms)
    total = max(r[-1]["step"] for r in units.values()) + 1
    window = max(3, total // 200)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10, 4.2), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        handles: dict[str, object] = {}
        for unit, records in units.items():
            arm = arm_of[unit]
            steps = np.array([r["step"] for r in records])
            kl = np.maximum(np.array([r["kl_bits"] for r in records], dtype=float), KL_FLOOR)
            ax.plot(steps, kl, color=colors[arm], lw=0.4, alpha=0.18)
            (line,) = ax.plot(steps, np.maximum(smooth(kl, window), KL_FLOOR), color=colors[arm],
                              lw=1.6 if arm == PRETRAIN_ARM else 1.2, ls="--" if arm == FRESH_ARM else "-")
            handles.setdefault(arm_label(arm), line)
        ax.set_yscale("log")
        for start in phase_starts[1:]:
            ax.axvline(start, color="0.4", lw=0.6, ls=":", zorder=1)
        if len(names) <= 30:  # names along the top; hundreds of phases would be a blur
            ends = [*phase_starts[1:], total]
            for name, a, b in zip(names, phase_starts, ends):
                ax.text((a + b) / 2, 0.99, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                        fontsize=6, color="0.35", clip_on=True)
        ax.set_xlabel("stream step")
        ax.set_ylabel("KL(posterior ‖ model) of the step's batch, before the update (bits/token)")
        ax.set_title(title or f"calibration at every step (moving average over {window} steps; raw values faint)")
        ax.grid(True, which="major", alpha=0.25)
        fig_legend(fig, handles)
    return fig
