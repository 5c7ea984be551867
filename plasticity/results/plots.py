"""Figures of one run from its run directory (metrics.jsonl, summary.json), written as PNGs to <run>/plots/.

Everything here reads only the run directory, so a plot can be redrawn for any finished or crashed run:
`make_plots(run_dir)`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from plasticity.results.figures import (
    DPI,
    EARLIER,
    FRESH,
    KL_FLOOR,
    MANY_PHASES,
    PRETRAIN,
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
from plasticity.results.phase_plots import phase_figure
from plasticity.results.runs import load
from plasticity.results.step_plots import kl_every_step_figure, unit_records
from streams.checks import is_number

PROBES = (  # key, panel title, y label
    ("dormant_frac", "dormant units", "fraction of units"),
    ("effective_rank", "effective rank of features", "rank"),
    ("weight_norm", "weight norm", "L2 norm"),
    ("distance", "distance from reference weights", "L2 distance"),
    ("grad_norm", "gradient norm", "L2 norm"),
)


def kl_figure(rows: list[dict], summary: dict | None = None, title: str | None = None) -> Figure:
    """(a) KL to the exact posterior over the stream, one panel per eval phase, one line per arm; a long
    stream in two panels instead (stream_kl_figure)."""
    names = phase_names(rows, summary)
    if len(names) > MANY_PHASES:
        return stream_kl_figure(rows, summary, title)
    ends = phase_ends(rows)
    curves = kl_curves(rows)
    arms = [a for a in arm_order(rows, summary) if a in curves]
    colors = arm_colors(arms)
    n = len(names)
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(n, sharey=True)
        handles: dict[str, object] = {}
        for j, ax in enumerate(axes[:n]):
            shade_phase(ax, j, ends)
            for arm in arms:
                pts = [(s, max(k, KL_FLOOR)) for s, k in curves[arm].get(j, [])]
                if not pts:
                    continue
                s, k = zip(*pts)
                (line,) = ax.plot(s, k, color=colors[arm], lw=1.8 if arm == PRETRAIN else 1.3,
                                  ls="--" if arm == FRESH else "-", marker="o", ms=2.0, label=arm_label(arm),
                                  zorder=3 if arm == PRETRAIN else 2)
                handles.setdefault(arm_label(arm), line)
            ax.set_yscale("log")
            mark_phases(ax, ends, names)
            ax.set_title(f"evaluated on phase {j}: {names[j]}")
            ax.set_xlabel("stream step")
            ax.grid(True, which="major", alpha=0.25)
            ax.margins(y=0.18)
        for ax in axes[:n]:
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel("KL(posterior ‖ model) (bits/token)")
        fig.suptitle(title or f"{(summary or {}).get('name', 'run')}: KL to the exact posterior "
                     "(shaded: that phase is being trained)")
        fig_legend(fig, handles)
    return fig


def stream_kl_figure(rows: list[dict], summary: dict | None = None, title: str | None = None) -> Figure:
    """A long stream's KL over the steps: on the phase being trained, and on the earlier phases evaluated
    (their mean), one line per arm; a fresh learner's evaluations as points (each learner lives one phase)."""
    n = len(phase_names(rows, summary))
    curves = stream_curves(rows)
    arms = [a for a in arm_order(rows, summary) if a in curves]
    views = [v for v in (TRAINED, EARLIER) if any(v in curves[a] for a in arms)]
    colors = arm_colors(arms)
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(len(views), ncols_max=1, w=9.0, h=2.8, sharey=True)
        handles: dict[str, object] = {}
        for ax, view in zip(axes, views):
            for arm in arms:
                if view in curves[arm]:
                    s, k = zip(*curves[arm][view])
                    style = dict(ls="none", marker=".", ms=3) if arm == FRESH else dict(lw=1.0, marker=".", ms=2)
                    (line,) = ax.plot(s, np.maximum(k, KL_FLOOR), color=colors[arm], **style)
                    handles.setdefault(arm_label(arm), line)
            ax.set_yscale("log")
            ax.set_title(f"evaluated on {view}")
            ax.set_xlabel("stream step")
            ax.set_ylabel("KL (bits/token)")
            ax.grid(True, which="major", alpha=0.25)
        fig.suptitle(title or f"{(summary or {}).get('name', 'run')}: KL to the exact posterior over {n} phases")
        fig_legend(fig, handles)
    return fig


def _as_matrix(R) -> tuple[np.ndarray, list[int]]:
    """R as a list of rows or a {phase index: row} dict (rows recorded so far) -> (matrix, row indices)."""
    if isinstance(R, dict):
        idx = sorted(int(i) for i in R)
        rows = [R[i] if i in R else R[str(i)] for i in idx]
    else:
        rows, idx = list(R), list(range(len(R)))
    width = max((len(r) for r in rows), default=0)
    M = np.full((len(rows), width), np.nan)
    for a, r in enumerate(rows):
        M[a, : len(r)] = [v if is_number(v) else np.nan for v in r]
    return M, idx


def _r_norm(values: np.ndarray):
    v = values[np.isfinite(values)]
    if v.size and v.min() > 0 and v.max() / v.min() > 20:
        return mcolors.LogNorm(vmin=v.min(), vmax=v.max())
    return mcolors.Normalize(vmin=0.0, vmax=float(v.max()) if v.size and v.max() > 0 else 1.0)


def _draw_r(ax, R, phases: list[str], norm, cmap: str = "magma_r"):
    """The heatmap; a long stream's without the values and with phase indices rather than names."""
    M, idx = _as_matrix(R)
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if M.shape[1] > MANY_PHASES:
        ax.set_xlabel("evaluated on phase (index)")
        ax.set_ylabel("end of phase (index)")
        rows = np.array(idx)  # the recorded rows may skip phases: label them by their phase index
        ax.yaxis.set_major_formatter(FuncFormatter(
            lambda v, _: str(rows[int(round(v))]) if 0 <= round(v) < len(rows) else ""))
        return im
    cm = im.get_cmap()
    for a in range(M.shape[0]):
        for b in range(M.shape[1]):
            if np.isfinite(M[a, b]):
                r, g, bl, _ = cm(norm(M[a, b]))
                dark = 0.299 * r + 0.587 * g + 0.114 * bl < 0.5
                ax.text(b, a, f"{M[a, b]:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    name = lambda i: phases[i] if i < len(phases) else str(i)  # noqa: E731
    ax.set_xticks(range(M.shape[1]), [name(j) for j in range(M.shape[1])], rotation=30, ha="right")
    ax.set_yticks(range(M.shape[0]), [f"end of {name(i)}" for i in idx])
    ax.set_xlabel("evaluated on phase")
    return im


def _r_side(n_phases: int) -> float:
    """Inches per side of one heatmap: a cell per phase while the values are written in, then fixed."""
    return 0.75 * max(n_phases, 2) if n_phases <= MANY_PHASES else 5.0


def _plain_ticks(cbar) -> None:
    """0.3 rather than 3×10⁻¹ on a log colorbar."""
    fmt = FuncFormatter(lambda v, _: f"{v:.2g}")
    cbar.ax.yaxis.set_major_formatter(fmt)
    cbar.ax.yaxis.set_minor_formatter(fmt)


def r_matrix_figure(R, phases: list[str], title: str = "R matrix") -> Figure:
    """Heatmap of R[i][j] = KL (bits) on phase j's eval bank at the end of phase i, values annotated (up to
    MANY_PHASES phases).
    R: list of rows, or the {phase index: row} dict of rows recorded so far."""
    M, _ = _as_matrix(R)
    with matplotlib.rc_context(STYLE):
        many = M.shape[1] > MANY_PHASES
        size = (6.5, 5.0) if many else (1.0 + 1.0 * max(M.shape[1], 2), 1.2 + 0.55 * max(M.shape[0], 2))
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        ax = fig.subplots()
        im = _draw_r(ax, R, phases, _r_norm(M))
        _plain_ticks(fig.colorbar(im, ax=ax, label="KL (bits)"))
        ax.set_title(title)
    return fig


def r_matrices_figure(summary: dict, rows: list[dict]) -> Figure | None:
    """(b) One R heatmap per arm on a shared color scale."""
    names = phase_names(rows, summary)
    mats = {arm: res["R_kl_bits"] for arm, res in summary.get("arms", {}).items()
            if isinstance(res, dict) and res.get("R_kl_bits")} or r_from_rows(rows)
    if not mats:
        return None
    allv = np.concatenate([_as_matrix(R)[0].ravel() for R in mats.values()])
    norm = _r_norm(allv)
    n = len(mats)
    side = _r_side(len(names))
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(n, ncols_max=3, w=side + 1.4, h=side * 0.8 + 0.9, extra_h=0.4)
        im = None
        for ax, (arm, R) in zip(axes, mats.items()):
            im = _draw_r(ax, R, names, norm)
            diverged = (summary.get("arms", {}).get(arm) or {}).get("diverged")
            ax.set_title(f"{arm} (diverged)" if diverged else arm)  # its rows after the divergence stay blank
        _plain_ticks(fig.colorbar(im, ax=axes[:n], label="KL (bits)", shrink=0.9))
        fig.suptitle("R matrix: KL on phase j (columns) at the end of phase i (rows)")
    return fig


def r_from_rows(rows: list[dict]) -> dict[str, dict[int, list[float]]]:
    """R rows from the phase-end evaluations, for a run without summary.json; arms inherit row 0 from
    pretraining."""
    ends = phase_ends(rows)
    end_steps = {s: i for i, s in ends.items()}
    out: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: (r["arm"], r["step"], r["eval_phase"])):
        i = end_steps.get(r["step"])
        if i is not None and r["phase"] == i and r["arm"] != FRESH:
            out[r["arm"]].setdefault(i, []).append(r["kl_bits"] if is_number(r["kl_bits"]) else float("nan"))
    pre = out.get(PRETRAIN, {})
    for arm, R in out.items():
        if arm != PRETRAIN and 0 in pre:
            R.setdefault(0, pre[0])
    if len(out) > 1:
        out.pop(PRETRAIN, None)
    return {a: dict(sorted(R.items())) for a, R in out.items()}


def final_rows(rows: list[dict]) -> dict[str, dict]:
    """arm -> its last evaluation on the phase it was training then (pretraining only when it is the
    sole arm, i.e. a single-phase run)."""
    last: dict[str, dict] = {}
    for r in rows:
        if r["eval_phase"] == r["phase"] and (r["arm"] not in last or r["step"] >= last[r["arm"]]["step"]):
            last[r["arm"]] = r
    if len(last) > 1:
        last.pop(PRETRAIN, None)
    return last


def calibration_figure(entries: dict[str, dict], phases: list[str] | None = None) -> Figure | None:
    """(c) The paper's calibration plot: model vs exact-posterior entropy (bits) by position, one panel per
    arm. Without the entropy fields (older runs) it falls back to the KL by position."""
    entries = {a: r for a, r in entries.items() if r.get("kl_bits_by_position") or
               r.get("model_entropy_bits_by_position")}
    if not entries:
        return None
    colors = arm_colors(entries)
    has_h = all(r.get("model_entropy_bits_by_position") and r.get("posterior_entropy_bits_by_position")
                for r in entries.values())
    nan = lambda xs: np.array([x if is_number(x) else np.nan for x in xs], dtype=float)  # noqa: E731
    with matplotlib.rc_context(STYLE):
        same_phase = len({r["eval_phase"] for r in entries.values()}) == 1
        fig, axes = grid(len(entries), ncols_max=4, w=2.6, h=2.3, extra_h=0.6, sharey=same_phase)
        handles: dict[str, object] = {}
        for ax, (arm, r) in zip(axes, entries.items()):
            name = (phases[r["eval_phase"]] if phases and r["eval_phase"] < len(phases)
                    else r.get("eval_phase_name", r["eval_phase"]))
            if has_h:
                hq, hp = nan(r["model_entropy_bits_by_position"]), nan(r["posterior_entropy_bits_by_position"])
                pos = np.arange(len(hq))
                (lp,) = ax.plot(pos, hp, color="black", ls="--", lw=1.4, label="exact posterior H(p*)")
                (lq,) = ax.plot(pos, hq, color=colors[arm], lw=1.4, marker="o", ms=2.0)
                handles.setdefault("exact posterior H(p*)", lp)
                handles[f"model H(q): {arm}"] = lq
                if ax.get_subplotspec().is_first_col() or not same_phase:
                    ax.set_ylabel("predictive entropy (bits)")
            else:
                kl = nan(r["kl_bits_by_position"])
                (lq,) = ax.plot(np.arange(len(kl)), np.maximum(kl, KL_FLOOR), color=colors[arm], lw=1.4,
                                marker="o", ms=2.0)
                ax.set_yscale("log")
                handles[f"KL(p* ‖ q) by position: {arm}"] = lq
                ax.set_ylabel("KL (bits)")
            ax.set_xlabel("position in sequence")
            ax.set_title(f"{arm} on {name}\nstep {r['step']}, KL {r.get('kl_bits', float('nan')):.3g} bits")
            ax.grid(True, alpha=0.25)
        fig.suptitle("calibration at the end of the stream: entropy by position" if has_h else
                     "KL to the posterior by position (entropies not recorded in this run)")
        fig_legend(fig, handles)
    return fig


def probe_series(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """arm -> probe -> [(step, value)]; probes are per evaluation, so one value per (arm, step)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for r in sorted(rows, key=lambda r: (r["step"], r["eval_phase"])):
        if (r["arm"], r["step"]) in seen:
            continue
        seen.add((r["arm"], r["step"]))
        for key, *_ in PROBES:
            value = r.get(key)
            if key == "distance":
                value = next((v for k, v in r.items() if k.startswith("distance_from_")), None)
            if is_number(value):
                out[r["arm"]][key].append((r["step"], value))
    pre = out.get(PRETRAIN, {})
    for arm, by_key in out.items():  # arms fork from the last pretraining evaluation: draw from there
        if arm in (PRETRAIN, FRESH):
            continue
        for key, pts in by_key.items():
            if not pre.get(key) or pts[0][0] <= pre[key][-1][0]:
                continue
            if key in ("dormant_frac", "effective_rank", "weight_norm"):
                pts.insert(0, pre[key][-1])
            elif key == "distance":
                pts.insert(0, (pre[key][-1][0], 0.0))  # the distance from the pretrained weights starts at 0
    return {a: dict(v) for a, v in out.items()}


def _arm_panel(ax, lines: dict[str, list[tuple[int, float]] | None], colors: dict, handles: dict,
               ends: dict[int, int], names: list[str], title: str) -> None:
    """One panel of a quantity over the stream: a line per arm (fresh learners dashed), phase boundaries."""
    for arm, pts in lines.items():
        if pts:
            (line,) = ax.plot(*zip(*pts), color=colors[arm], lw=1.3, marker="o", ms=1.8,
                              ls="--" if arm == FRESH else "-")
            handles.setdefault(arm_label(arm), line)
    mark_phases(ax, ends, names)
    ax.set_title(title)
    ax.set_xlabel("stream step")
    ax.grid(True, alpha=0.25)
    ax.margins(y=0.15)


def probes_figure(rows: list[dict], summary: dict | None = None) -> Figure | None:
    """(d) Probes over the stream, one panel per probe, one line per arm."""
    series = probe_series(rows)
    keys = [p for p in PROBES if any(p[0] in s for s in series.values())]
    if not keys:
        return None
    names, ends = phase_names(rows, summary), phase_ends(rows)
    arms = [a for a in arm_order(rows, summary) if a in series]
    colors = arm_colors(arms)
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(len(keys), ncols_max=3, w=2.9, h=2.2)
        handles: dict[str, object] = {}
        for ax, (key, title, ylabel) in zip(axes, keys):
            _arm_panel(ax, {arm: series[arm].get(key) for arm in arms}, colors, handles, ends, names,
                       title if key != "distance" else "distance from reference\n"
                       "(init for pretraining, pretrained weights for arms)")
            ax.set_ylabel(ylabel)
            if key == "dormant_frac":
                ax.set_ylim(-0.02, max(0.1, ax.get_ylim()[1]))
        fig.suptitle("probes over the stream")
        fig_legend(fig, handles)
    return fig


GEOMETRY = (  # (title, how to read it from a row with the geometry probes: plasticity.eval.geometry)
    ("key orthogonality, layer 0\n(mean |off-diag. cos|)", lambda r: r.get("key_orthogonality")),
    ("query-key alignment\n(mean over layers, heads)", lambda r: _mean_of(r, "qk_alignment/")),
    ("attention entropy, bits\n(mean over layers, heads)", lambda r: _mean_of(r, "attention_entropy_bits/")),
    ("PC1 variance fraction\n(last layer)", lambda r: r.get("pc1_fraction")),
    ("|Spearman(PC1, posterior entropy)|\n(last layer)", lambda r: r.get("pc1_entropy_spearman")),
    ("logit-lens KL, layer 0, bits", lambda r: r.get("logit_lens_kl_bits/layer0")),
)


def _mean_of(row: dict, prefix: str) -> float | None:
    vals = [v for k, v in row.items() if k.startswith(prefix) and is_number(v)]
    return sum(vals) / len(vals) if vals else None


def geometry_series(rows: list[dict]) -> dict[str, list[tuple[int, dict[str, float | None]]]]:
    """arm -> [(step, {panel title: value})] from the rows that carry the geometry probes."""
    out: dict[str, list] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["step"]):
        if "key_orthogonality" in r:
            out[r["arm"]].append((r["step"], {title: read(r) for title, read in GEOMETRY}))
    return dict(out)


def geometry_figure(rows: list[dict], summary: dict | None = None) -> Figure | None:
    """The geometry probes over the stream (eval.geometry_every), one panel each, one line per arm."""
    series = geometry_series(rows)
    if not series:
        return None
    names, ends = phase_names(rows, summary), phase_ends(rows)
    arms = [a for a in arm_order(rows, summary) if a in series]
    colors = arm_colors(arms)
    with matplotlib.rc_context(STYLE):
        fig, axes = grid(len(GEOMETRY), ncols_max=3, w=2.9, h=2.2)
        handles: dict[str, object] = {}
        for ax, (title, _) in zip(axes, GEOMETRY):
            lines = {arm: [(step, v[title]) for step, v in series[arm] if is_number(v[title])] for arm in arms}
            _arm_panel(ax, lines, colors, handles, ends, names, title)
        fig.suptitle("geometry of the Bayesian inference over the stream")
        fig_legend(fig, handles)
    return fig


MANIFOLD_ARMS = ("frozen", "naive")  # the figure's columns, when the run has them (else its first two arms)


def read_manifolds(run_dir: Path) -> dict[tuple[str, int], dict]:
    """(arm, phase) -> the manifold data written at that phase's end (RunDir.write_manifold); phase 0's is
    the shared pretraining's, shown for every arm."""
    out = {}
    for path in sorted((run_dir / "geometry").glob("*@*.json")):
        arm, _, phase = path.stem.rpartition("@")
        try:
            out[(arm, int(phase))] = json.loads(path.read_text())
        except (ValueError, json.JSONDecodeError):
            continue  # a half-written file cannot exist (atomic writes), but a stray one is skipped
    return out


def manifold_figure(manifolds: dict[tuple[str, int], dict], names: list[str]) -> Figure | None:
    """The paper's manifold figure at each phase end: the last layer's representation on its first two
    principal components, one point per scored position, coloured by the exact posterior's entropy; one row
    per phase, one column per arm (frozen and naive)."""
    arms = [a for a in dict.fromkeys(a for a, _ in manifolds) if a != PRETRAIN]
    arms = [a for a in MANIFOLD_ARMS if a in arms] or arms[:2]
    phases = sorted({p for _, p in manifolds})
    if not arms or not phases:
        return None
    if len(phases) > MANY_PHASES:  # long streams: evenly spaced phase ends, the last included
        phases = [phases[round(i * (len(phases) - 1) / (MANY_PHASES - 1))] for i in range(MANY_PHASES)]
    values = [h for m in manifolds.values() for h in m["entropy_bits"]] or [0.0, 1.0]
    norm = mcolors.Normalize(min(values), max(max(values), min(values) + 1e-6))  # one scale for every panel
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.0 * len(arms) + 0.8, 2.5 * len(phases)), dpi=DPI, layout="constrained")
        axes = np.asarray(fig.subplots(len(phases), len(arms), squeeze=False))
        points = None
        for i, phase in enumerate(phases):
            for c, arm in enumerate(arms):
                ax = axes[i, c]
                m = manifolds.get((arm, phase)) or manifolds.get((PRETRAIN, phase))
                if m is None:
                    ax.set_axis_off()
                    continue
                points = ax.scatter(m["pc1"], m["pc2"], c=m["entropy_bits"], s=4, cmap="viridis", norm=norm,
                                    linewidths=0)
                name = names[phase] if phase < len(names) else phase
                ax.set_title(f"{arm_label(arm)} · end of {name}\n"
                             f"PC1 {100 * m['pc1_fraction']:.0f}%, PC1+2 {100 * m['pc12_fraction']:.0f}%, "
                             f"|ρ(PC1, H)| {m['pc1_entropy_spearman']:.2f}", fontsize=8)
                ax.set_xlabel("PC1", fontsize=8)
                ax.set_ylabel("PC2", fontsize=8)
        if points is not None:
            fig.colorbar(points, ax=axes, shrink=0.6, label="posterior entropy, bits")
        fig.suptitle("the representation's manifold at each phase end (last layer, PCA)")
    return fig


def make_plots(run_dir: Path | str) -> list[Path]:
    """All run-level figures as PNGs under <run_dir>/plots/; returns the paths written."""
    run_dir = Path(run_dir)
    run = load(run_dir)
    rows, summary = run.rows(), run.summary or {}
    if not rows:
        return []
    out, names = run_dir / "plots", phase_names(rows, summary)
    ends = phase_ends(rows)
    starts = [0, *(ends[i] for i in sorted(ends)[:-1])]
    figures = {
        "kl_curves.png": kl_figure(rows, summary),
        "kl_every_step.png": kl_every_step_figure(unit_records(run_dir), starts, names),
        "r_matrix.png": r_matrices_figure(summary, rows),
        "calibration.png": calibration_figure(final_rows(rows), names),
        "probes.png": probes_figure(rows, summary),
        "geometry.png": geometry_figure(rows, summary),
        "manifold.png": manifold_figure(read_manifolds(run_dir), names),
        "phases.png": phase_figure(summary) if summary else None,
    }
    return [save(fig, out / name) for name, fig in figures.items() if fig is not None]
