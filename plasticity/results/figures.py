"""What every figure shares: the style, arm colors and labels, phase boundaries, the KL curves read from
metrics rows, panel grids and legends, and saving. Figures are built with `matplotlib.figure.Figure`
directly (rendered by the Agg canvas, no pyplot): no global figure state, no GUI backend, safe inside a
training process and in the wandb sink."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from plasticity.eval.rows import FRESH_ARM as FRESH
from plasticity.eval.rows import PRETRAIN_ARM as PRETRAIN
from streams.checks import is_number

DPI = 150
KL_FLOOR = 1e-6  # a log axis cannot show 0 bits
MANY_PHASES = 12  # beyond, panels per phase, annotated heatmaps and phase names give way to views by index
TRAINED, EARLIER = "the phase being trained", "earlier phases (mean over those evaluated)"
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 8,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "figure.titlesize": 10}


def phase_names(rows: list[dict], summary: dict | None = None) -> list[str]:
    if summary and summary.get("phases"):
        return list(summary["phases"])
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(r["eval_phase"], r.get("eval_phase_name", str(r["eval_phase"])))
        names.setdefault(r["phase"], str(r["phase"]))
    return [names.get(i, str(i)) for i in range(max(names) + 1)] if names else []


def phase_ends(rows: list[dict]) -> dict[int, int]:
    """Phase index -> last stream step of that phase (every phase end is an evaluation step)."""
    ends: dict[int, int] = {}
    for r in rows:
        ends[r["phase"]] = max(ends.get(r["phase"], 0), r["step"])
    return ends


def arm_order(rows: list[dict], summary: dict | None = None) -> list[str]:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for arm in (summary or {}).get("arms", {}):
        if arm not in arms:
            arms.append(arm)
    return arms


def arm_colors(arms: Iterable[str]) -> dict[str, tuple]:
    palette = [mcolors.to_rgba(c) for c in
               ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                "tab:olive", "tab:cyan")]
    out, k = {}, 0
    for arm in arms:
        if arm == PRETRAIN:
            out[arm] = mcolors.to_rgba("0.15")
        elif arm == FRESH:
            out[arm] = mcolors.to_rgba("0.55")
        else:
            out[arm] = palette[k % len(palette)]
            k += 1
    return out


def kl_curves(rows: list[dict]) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """arm -> eval phase -> [(step, kl_bits)], sorted; each arm forked from pretraining starts at the fork
    point (the last pretraining evaluation) so its curve is continuous."""
    curves: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if is_number(r.get("kl_bits")):
            curves[r["arm"]][r["eval_phase"]].append((r["step"], r["kl_bits"]))
    pre = curves.get(PRETRAIN, {})
    for arm, by_phase in curves.items():
        for j, pts in by_phase.items():
            pts.sort()
            if arm not in (PRETRAIN, FRESH) and pre.get(j):
                fork = max(s for s, _ in pre[j])
                if pts[0][0] > fork:
                    pts.insert(0, max(pre[j]))
    return {a: dict(v) for a, v in curves.items()}


def stream_curves(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """arm -> view -> [(step, kl_bits)] for a long stream: its KL on the phase it is training (TRAINED) and
    its mean KL over the earlier phases evaluated at that step (EARLIER), sorted by step."""
    trained: dict[str, dict[int, float]] = defaultdict(dict)
    earlier: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not is_number(r.get("kl_bits")):
            continue
        if r["eval_phase"] == r["phase"]:
            trained[r["arm"]][r["step"]] = r["kl_bits"]
        elif r["eval_phase"] < r["phase"]:
            earlier[r["arm"]][r["step"]].append(r["kl_bits"])
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for arm, by_step in trained.items():
        out[arm][TRAINED] = sorted(by_step.items())
    for arm, by_step in earlier.items():
        out[arm][EARLIER] = sorted((s, sum(v) / len(v)) for s, v in by_step.items())
    return dict(out)


def grid(n: int, ncols_max: int = 3, w: float = 3.0, h: float = 2.4, extra_h: float = 0.7,
          sharey: bool = False) -> tuple[Figure, list]:
    ncols = min(max(n, 1), ncols_max)
    nrows = math.ceil(max(n, 1) / ncols)
    fig = Figure(figsize=(w * ncols + 0.6, h * nrows + extra_h), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes


def mark_phases(ax, ends: dict[int, int], names: list[str], label: bool = True) -> None:
    """Dotted vertical lines at phase boundaries and the phase names along the top of the panel."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    start = 0
    for i in sorted(ends):
        end = ends[i]
        if i > 0:
            ax.axvline(start, color="0.4", lw=0.7, ls=":", zorder=1)
        if label and end > start:
            name = names[i] if i < len(names) else str(i)
            ax.text((start + end) / 2, 0.98, name, transform=trans, ha="center", va="top", fontsize=6,
                    color="0.35", clip_on=True)
        start = end


def shade_phase(ax, i: int, ends: dict[int, int]) -> None:
    """Shade the stream segment during which phase i is trained (its own data)."""
    if i in ends:
        start = ends.get(i - 1, 0) if i > 0 else 0
        ax.axvspan(start, ends[i], color="0.5", alpha=0.08, lw=0, zorder=0)


def fig_legend(fig: Figure, handles_labels: dict[str, object], ncol_max: int = 7) -> None:
    if handles_labels:
        fig.legend(list(handles_labels.values()), list(handles_labels.keys()), loc="outside lower center",
                   ncol=min(len(handles_labels), ncol_max), frameon=False)


def arm_label(arm: str) -> str:
    return {PRETRAIN: "pretraining (shared)", FRESH: "fresh learner per phase"}.get(arm, arm)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path
