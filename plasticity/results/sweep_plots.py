"""Figures across runs (a sweep, the seeds of one experiment): seeds of one setting pooled into mean ± 95%
confidence interval (Student t over the seeds; no band for a single seed), as PNGs.

A setting is the config minus the seed, paths, logging and hardware (`runs.config_setting`), so these
figures group runs exactly as the report's table does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from plasticity.results.figures import (
    DPI,
    EARLIER,
    FRESH,
    KL_FLOOR,
    MANY_PHASES,
    STYLE,
    TRAINED,
    arm_colors,
    arm_label,
    arm_order,
    fig_legend,
    grid,
    kl_curves,
    mark_phases,
    phase_ends,
    phase_names,
    save,
    shade_phase,
    stream_curves,
)
from plasticity.results.phase_plots import seeds_phase_figure
from plasticity.results.runs import config_setting, load, setting_labels
from plasticity.results.stats import mean_ci
from streams.checks import is_number


def _mean_ci_curves(runs: list[dict]) -> dict[str, dict]:
    """arm -> panel -> (steps, mean, 95% CI half-width (0 for one seed), n seeds) over the seeds' KL curves
    (each run's arm -> panel -> [(step, kl)], as kl_curves or stream_curves give them), step by step."""
    per: dict[str, dict[int, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    nseeds: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for curves in runs:
        for arm, by_phase in curves.items():
            for j, pts in by_phase.items():
                nseeds[arm][j] += 1
                for s, k in pts:
                    per[arm][j][s].append(k)
    out: dict[str, dict[int, tuple]] = {}
    for arm, by_phase in per.items():
        out[arm] = {}
        for j, by_step in by_phase.items():
            steps = np.array(sorted(by_step))
            vals = [np.array(by_step[s]) for s in steps]
            stats = [mean_ci(v) for v in vals]
            out[arm][j] = (steps, np.array([st["mean"] for st in stats]),
                           np.array([st["ci95"] or 0.0 for st in stats]), nseeds[arm][j])
    return out


def sweep_kl_figure(runs: list[tuple[list[dict], dict]], title: str) -> Figure:
    """KL curves, mean ± 95% CI across the seeds of one setting: one panel per eval phase, one band per arm;
    a long stream's two views instead (figures.stream_curves)."""
    rows0, summary0 = runs[0]
    names, ends = phase_names(rows0, summary0), phase_ends(rows0)
    long = len(names) > MANY_PHASES
    stats = _mean_ci_curves([stream_curves(rows) if long else kl_curves(rows) for rows, _ in runs])
    arms = [a for a in arm_order(rows0, summary0) if a in stats]
    panels = [v for v in (TRAINED, EARLIER) if any(v in stats[a] for a in arms)] if long else list(range(len(names)))
    colors = arm_colors(arms)
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(len(panels), ncols_max=1, w=9.0, h=2.8) if long else grid(len(panels))
        handles: dict[str, object] = {}
        for ax, j in zip(axes, panels):
            if not long:
                shade_phase(ax, j, ends)
            lowest = np.inf
            for arm in arms:
                if j not in stats[arm]:
                    continue
                steps, mean, ci, n = stats[arm][j]
                lowest = min(lowest, float(np.maximum(mean, KL_FLOOR).min()))
                (line,) = ax.plot(steps, np.maximum(mean, KL_FLOOR), color=colors[arm], lw=1.0 if long else 1.4,
                                  ls="--" if arm == FRESH else "-", marker="." if long else None, ms=2)
                ax.fill_between(steps, np.maximum(mean - ci, KL_FLOOR), np.maximum(mean + ci, KL_FLOOR),
                                color=colors[arm], alpha=0.2, lw=0)
                handles.setdefault(f"{arm_label(arm)} (n={n})", line)
            ax.set_yscale("log")
            ax.margins(y=0.18)
            if np.isfinite(lowest):  # an interval reaching 0 runs off the bottom rather than to 1e-6
                ax.set_ylim(bottom=max(KL_FLOOR, lowest / 4))
            if long:
                ax.set_title(f"evaluated on {j}")
            else:
                mark_phases(ax, ends, names)
                ax.set_title(f"evaluated on phase {j}: {names[j]}")
            ax.set_xlabel("stream step")
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel("KL (bits/token), mean ± 95% CI")
            ax.grid(True, alpha=0.25)
        fig.suptitle(title)
        fig_legend(fig, handles)
    return fig


def sweep_final_figure(groups: list[tuple[str, list[dict]]]) -> Figure:
    """Final mean KL over all phases (summary final_kl_bits) per arm and setting, mean ± 95% CI over seeds."""
    arms = list(dict.fromkeys(a for _, sums in groups for s in sums for a, r in s.get("arms", {}).items()
                              if isinstance(r, dict) and is_number(r.get("final_kl_bits"))))
    colors = arm_colors(arms)
    width = 0.8 / max(len(arms), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(4.0, 1.2 + 1.1 * len(groups) * max(len(arms), 1) * 0.5), 3.2), dpi=DPI,
                     layout="constrained")
        ax = fig.subplots()
        for a, arm in enumerate(arms):
            for g, (_, sums) in enumerate(groups):
                v = np.array([s["arms"][arm]["final_kl_bits"] for s in sums
                              if is_number(s.get("arms", {}).get(arm, {}).get("final_kl_bits"))])
                if v.size:
                    x = g + (a - (len(arms) - 1) / 2) * width
                    ax.bar(x, v.mean(), width, yerr=mean_ci(v.tolist())["ci95"], color=colors[arm],
                           label=arm if g == 0 else None, capsize=2)
                    ax.plot(np.full(v.size, x), v, "k.", ms=2.5)
        ax.set_xticks(range(len(groups)), [label for label, _ in groups], rotation=15, ha="right")
        ax.set_ylabel("final KL, mean over phases (bits)")
        ax.set_title("end of stream: KL to the posterior, mean ± 95% CI over seeds (dots: seeds)")
        ax.legend(frameon=False)
        ax.grid(True, axis="y", alpha=0.25)
    return fig


def plot_sweep(runs: list[Path | str], out_dir: Path | str) -> list[Path]:
    """Seeds of one setting (the config minus seed, paths and logging) are pooled: KL curves mean ± 95% CI per
    setting (sweep_kl_<k>.png), the per-phase figures binned by phase (sweep_phases_<k>.png, from three
    phases on) and the final KL per arm and setting (sweep_final_kl.png)."""
    out_dir = Path(out_dir)
    groups: dict[str, list[tuple[list[dict], dict, dict]]] = {}
    for run in runs:
        loaded = load(Path(run))
        rows, summary, config = loaded.rows(), loaded.summary or {}, loaded.config
        if rows:
            groups.setdefault(json.dumps(config_setting(config), sort_keys=True), []).append((rows, summary, config))
    if not groups:
        return []
    labels = setting_labels([config_setting(members[0][2]) for members in groups.values()])
    paths = []
    labelled = []
    for k, (members, label) in enumerate(zip(groups.values(), labels)):
        config = members[0][2]
        label = str(config.get("name", "run")) if label == "-" else label
        label = label if len(label) <= 70 else label[:67] + "..."
        seeds = sorted({m[2].get("seed") for m in members}, key=str)
        name = str(config.get("name", "sweep"))
        heading = name if label == name else f"{name} [{label}]"
        fig = sweep_kl_figure([(rows, summary) for rows, summary, _ in members],
                              f"{heading}: KL to the posterior, "
                              f"mean ± 95% CI over {len(members)} runs (seeds {', '.join(map(str, seeds))})")
        paths.append(save(fig, out_dir / f"sweep_kl_{k}.png"))
        fig = seeds_phase_figure([summary for _, summary, _ in members], heading)
        if fig is not None:
            paths.append(save(fig, out_dir / f"sweep_phases_{k}.png"))
        labelled.append((label, [summary for _, summary, _ in members]))
    if any(s for _, sums in labelled for s in sums):
        paths.append(save(sweep_final_figure(labelled), out_dir / "sweep_final_kl.png"))
    return paths
