"""Plasticity over the stream, by phase index: each arm's end-of-phase KL on the phase it was training, its
prequential regret per token, its adaptation time and its gap to a fresh learner, one point per phase after
pretraining. Legible at hundreds of phases: raw values faint, their means over bins of phases drawn on top;
across seeds (`seeds_phase_figure`) the binned means with a 95% confidence band.

Every figure reads summary.json only, so it can be drawn for any finished run.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from plasticity.results.figures import FRESH, PRETRAIN, STYLE, arm_colors, arm_label, fig_legend, grid
from plasticity.results.stats import mean_ci
from streams.checks import is_number

MAX_BINS = 40  # bins of phases drawn as a line; more phases than this are averaged in bins


def _diagonal(R: list[list]) -> list:
    return [row[i] if i < len(row) else None for i, row in enumerate(R)]


def _fresh_kl(res: dict, n: int) -> list:
    by_phase = res.get("kl_bits_by_phase") or {}
    return [by_phase.get(str(i), by_phase.get(i)) for i in range(n)]


# name -> (panel title, y label, log scale, how to read the per-phase list from an arm's summary entry)
FIGURES = {
    "end_kl": ("KL on the phase being trained, at its end", "bits/token", True,
               lambda res, n: _diagonal(res["R_kl_bits"]) if "R_kl_bits" in res else _fresh_kl(res, n)),
    "regret": ("regret per token (every step, before the update)", "bits/token", True,
               lambda res, n: res.get("regret_bits_per_token") or []),
    "adaptation": ("adaptation time", "steps", False, lambda res, n: res.get("adaptation_steps") or []),
    "gap": ("gap to a fresh learner at the phase's end (+ = worse)", "bits/token", False,
            lambda res, n: res.get("plasticity_gap_bits") or []),
}


def per_phase(summary: dict) -> dict[str, dict[str, np.ndarray]]:
    """figure -> arm -> values by phase index (NaN where the arm has none; phase 0 is pretraining's)."""
    n = len(summary.get("phases") or [])
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, (*_, read) in FIGURES.items():
        for arm, res in (summary.get("arms") or {}).items():
            if not isinstance(res, dict) or res.get("diverged"):
                continue
            values = np.full(n, np.nan)
            for i, v in enumerate(read(res, n)[:n]):
                if i > 0 and is_number(v):
                    values[i] = v
            if np.isfinite(values).any():
                out.setdefault(key, {})[arm] = values
    return out


def bin_width(n_phases: int) -> int:
    return max(1, math.ceil((n_phases - 1) / MAX_BINS))


def binned(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in phase index, mean of each bin's finite values) over phases 1.. in bins of `width`."""
    centres, means = [], []
    for start in range(1, len(values), width):
        chunk = values[start:start + width]
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            centres.append(start + (len(chunk) - 1) / 2)
            means.append(float(finite.mean()))
    return np.array(centres), np.array(means)


def _panels(keys: list[str]):
    fig, axes = grid(len(keys), ncols_max=2, w=4.6, h=2.6)
    for ax, key in zip(axes, keys):
        title, ylabel, log, _ = FIGURES[key]
        ax.set_title(title)
        ax.set_xlabel("phase index")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        if key == "gap":
            ax.axhline(0.0, color="0.3", lw=0.8)
        ax.grid(True, alpha=0.25)
    return fig, axes


def phase_figure(summary: dict, title: str | None = None) -> Figure | None:
    """One run: per figure a panel, per arm its values by phase (faint) and their binned means."""
    series = per_phase(summary)
    n = len(summary.get("phases") or [])
    if n < 3 or not series:
        return None
    keys = [k for k in FIGURES if k in series]
    arms = [a for a in summary["arms"] if any(a in series[k] for k in keys) and a != PRETRAIN]
    colors, width = arm_colors(arms), bin_width(n)
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(keys)
        handles: dict[str, object] = {}
        for ax, key in zip(axes, keys):
            for arm, values in series[key].items():
                idx = np.flatnonzero(np.isfinite(values))
                ls = "--" if arm == FRESH else "-"
                ax.plot(idx, values[idx], ".", color=colors[arm], ms=2.5, alpha=0.35 if width > 1 else 0.9)
                x, m = binned(values, width) if width > 1 else (idx, values[idx])
                (line,) = ax.plot(x, m, color=colors[arm], lw=1.4, ls=ls)
                handles.setdefault(arm_label(arm), line)
        binning = f"; lines: means over bins of {width} phases" if width > 1 else ""
        fig.suptitle(title or f"{summary.get('name', 'run')}: plasticity over the stream, by phase{binning}")
        fig_legend(fig, handles)
    return fig


def seeds_phase_figure(summaries: list[dict], title: str) -> Figure | None:
    """Seeds of one setting: per figure and arm the binned means, mean ± 95% CI over the seeds (Student t)."""
    summaries = [s for s in summaries if s.get("phases")]
    if not summaries:
        return None
    n = min(len(s["phases"]) for s in summaries)
    if n < 3:
        return None
    width = bin_width(n)
    per_seed = [per_phase(s) for s in summaries]
    keys = [k for k in FIGURES if any(k in p for p in per_seed)]
    arms = list(dict.fromkeys(a for p in per_seed for k in keys for a in p.get(k, {}) if a != PRETRAIN))
    if not keys or not arms:
        return None
    colors = arm_colors(arms)
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(keys)
        handles: dict[str, object] = {}
        for ax, key in zip(axes, keys):
            lowest = np.inf
            for arm in arms:
                curves = [binned(p[key][arm][:n], width) for p in per_seed if arm in p.get(key, {})]
                if not curves:
                    continue
                centres = sorted({float(c) for x, _ in curves for c in x})
                stats = [mean_ci([m[np.isclose(x, c)][0] for x, m in curves if np.isclose(x, c).any()])
                         for c in centres]
                mean = np.array([s["mean"] for s in stats])
                ci = np.array([s["ci95"] or 0.0 for s in stats])
                (line,) = ax.plot(centres, mean, color=colors[arm], lw=1.4, ls="--" if arm == FRESH else "-")
                ax.fill_between(centres, mean - ci, mean + ci, color=colors[arm], alpha=0.2, lw=0)
                lowest = min(lowest, float(np.nanmin(mean)) / 4)
                handles.setdefault(f"{arm_label(arm)} (n={len(curves)})", line)
            if FIGURES[key][2] and 0 < lowest < np.inf:  # a band reaching 0 runs off a log axis's bottom
                ax.set_ylim(bottom=lowest)
        binning = f", means over bins of {width} phases" if width > 1 else ""
        fig.suptitle(f"{title}: plasticity over the stream by phase{binning}, mean ± 95% CI over seeds")
        fig_legend(fig, handles)
    return fig
