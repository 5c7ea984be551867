"""`plasticity report DIR...`: one table across runs and sweeps, from run directories alone (offline).

Each DIR is a run directory, a sweep's --out folder or any folder of runs; run directories are found
recursively (a folder with summary.json, or config.yaml without one: incomplete). Rows are (experiment,
setting, arm), where the setting is the config minus the seed and what does not change the experiment
(paths, logging, hardware: `runs.config_setting`, as for the sweep figures), labelled by the keys where a
setting differs from its peers' baseline among the runs of that experiment and arm, and by every key of
a grid (`runs.setting_labels`). Columns are mean ± 95% confidence interval over the runs (seeds) of a row
(Student t, n − 1 degrees of freedom; blank for n = 1; the seeds of `plasticity run ... seeds=...` are
such runs); report.csv also has the sample standard deviation:

    final_kl_bits    mean KL over all phases at the end of the stream (summary's final_kl_bits)
    bwt_bits         backward transfer, mean over j < last of R[last][j] − R[j][j] (+ = worse)
    forgetting_bits  mean over j < last of R[last][j] − min_{i>=j} R[i][j]
    auc_kl_bits      mean over the phases after pretraining of the time-averaged KL while training on it
    plasticity_gap_bits  mean over phases of R[i][i] − fresh learner's R[i][i] (runs with fresh=true)
    regret_bits_per_token  the prequential KL over the phases after pretraining (every batch's prediction
                     before its update, per scored token; runs with eval.prequential=true)
    final_kl_general_bits  the final KL to the family's general posterior, over the phases with a task
                     pool (`tasks: N`): beside final_kl_bits, memorisation of the pool vs inference in context

Failed trials come from each sweep's sweep_index.json; runs without summary.json are listed as incomplete;
arms that diverged (NaN/Inf, `diverged` in the summary) are listed with their message and add no values.
The table is printed (Rich) and written as report.md and report.csv (`--out`, default the first DIR).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from plasticity.eval.rows import FRESH_ARM
from plasticity.files import atomic_write_text
from plasticity.results.runs import Run, config_setting, failed_trials, find, flatten, load, setting_labels
from plasticity.results.stats import mean_ci
from streams.checks import is_number

METRICS = ("final_kl_bits", "bwt_bits", "forgetting_bits", "auc_kl_bits", "plasticity_gap_bits",
           "regret_bits_per_token", "final_kl_general_bits")
ALWAYS = METRICS[:4]  # the gap, the regret and the general yardstick only when some run has them
SKIP_ARMS = (FRESH_ARM,)  # the fresh-learner yardstick has no R matrix of its own


@dataclass
class Row:
    experiment: str
    arm: str
    setting: dict[str, str]
    label: str = ""
    values: dict[str, list[float]] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)

    def stat(self, metric: str) -> dict:
        """{mean, ci95, std, n, values} over the runs (plasticity.results.stats.mean_ci)."""
        return mean_ci(self.values.get(metric, []))


# ---------------------------------------------------------------------------------------------------
# Metrics and rows


def _mean(values: list) -> float | None:
    vals = [v for v in values if is_number(v)]
    return statistics.fmean(vals) if vals else None


def arm_metrics(res: dict) -> dict[str, float | None]:
    R = res.get("R_kl_bits") or []
    last = len(R) - 1
    forgetting = res.get("forgetting_bits") or []
    auc = res.get("auc_kl") or []
    return {
        "final_kl_bits": res.get("final_kl_bits") if is_number(res.get("final_kl_bits")) else None,
        "bwt_bits": res.get("bwt_bits") if is_number(res.get("bwt_bits")) and last > 0 else None,
        "forgetting_bits": _mean(forgetting[:last]) if last > 0 else None,
        "auc_kl_bits": _mean(auc[1:] if len(auc) > 1 else auc),
        "plasticity_gap_bits": _mean(res.get("plasticity_gap_bits") or []),
        "regret_bits_per_token": res.get("regret_bits_per_token_online"),
        "final_kl_general_bits": res.get("final_kl_general_bits"),
    }


def setting(config: dict, arm: str) -> dict[str, str]:
    """The config that defines a row: the setting, with only this arm's entry of the arms."""
    keep = config_setting(config, drop=("arms",))
    arms = config.get("arms")
    if isinstance(arms, dict) and isinstance(arms.get(arm), dict):
        keep.update(flatten({"arm": arms[arm]}))
    return keep


def build_rows(runs: list[Run]) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for run in runs:
        if run.summary is None:
            continue
        for arm, res in (run.summary.get("arms") or {}).items():
            if arm in SKIP_ARMS or not isinstance(res, dict) or "R_kl_bits" not in res:
                continue
            s = setting(run.config, arm)
            key = (run.experiment, arm, json.dumps(s, sort_keys=True))
            row = rows.setdefault(key, Row(run.experiment, arm, s))
            row.runs.append(str(run.path))
            for metric, value in arm_metrics(res).items():
                if value is not None:
                    row.values.setdefault(metric, []).append(float(value))
    out = list(rows.values())
    for key in dict.fromkeys((r.experiment, r.arm) for r in out):  # labelled among the same experiment and arm
        peers = [r for r in out if (r.experiment, r.arm) == key]
        for row, label in zip(peers, setting_labels([r.setting for r in peers])):
            row.label = label
    out.sort(key=lambda r: (r.experiment, natural_key(r.label)))
    return out


def natural_key(label: str) -> list[tuple]:
    """Numbers in a label compare as numbers: tasks=16 before tasks=1024, lr=3e-4 before lr=0.001."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", label)
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p]


# ---------------------------------------------------------------------------------------------------
# Output


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.4f} ± {stats['ci95']:.4f}" if stats["ci95"] is not None else f"{stats['mean']:.4f}"


def columns(rows: list[Row]) -> list[str]:
    return [m for m in METRICS if m in ALWAYS or any(m in r.values for r in rows)]


def markdown(rows: list[Row], metrics: list[str], failed: list[dict], incomplete: list[Run], plots: list[str],
             diverged: list[tuple[str, str, str]] = ()) -> str:
    lines = ["# plasticity report", "",
             "Mean ± 95% confidence interval (Student t) over the runs (seeds) of each row; n = runs. KL in bits "
             "per scored token; "
             "+ = worse for BWT, forgetting and the plasticity gap.", ""]
    lines.append("| experiment | setting | arm | n | " + " | ".join(metrics) + " |")
    lines.append("|---|---|---|---:|" + "---:|" * len(metrics))
    for r in rows:
        cells = [_cell(r.stat(m)) for m in metrics]
        lines.append(f"| {r.experiment} | {r.label} | {r.arm} | {len(r.runs)} | " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed trials", ""]
        for t in failed:
            err = t.get("error") or {}
            lines.append(f"- `{t.get('name')}` ({_overrides(t)}): {err.get('type')}: {err.get('message')} "
                         f"— log `{t.get('log')}`")
    if diverged:
        lines += ["", "## Diverged arms", ""]
        lines += [f"- `{path}` arm `{arm}`: {message}" for path, arm, message in diverged]
    if incomplete:
        lines += ["", "## Incomplete runs", ""]
        lines += [f"- `{run.path}`: {run.problem}" for run in incomplete]
    if plots:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _overrides(trial: dict) -> str:
    o = trial.get("overrides") or {}
    return " ".join(f"{k}={v}" for k, v in o.items()) if isinstance(o, dict) else str(o)


def csv_text(rows: list[Row], metrics: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    kinds = ("mean", "ci95", "std")
    writer.writerow(["experiment", "setting", "arm", "n", *(f"{m}_{k}" for m in metrics for k in kinds), "runs"])
    for r in rows:
        stats = []
        for m in metrics:
            st = r.stat(m)
            stats += ["" if st[k] is None else repr(st[k]) for k in kinds]
        writer.writerow([r.experiment, r.label, r.arm, len(r.runs), *stats, ";".join(r.runs)])
    return buf.getvalue()


def print_table(rows: list[Row], metrics: list[str], failed: list[dict], incomplete: list[Run],
                diverged: list[tuple[str, str, str]] = ()) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 250)
    table = Table(title="KL to the exact posterior (bits), mean ± 95% CI over seeds")
    for name, justify in (("experiment", "left"), ("setting", "left"), ("arm", "left"), ("n", "right")):
        table.add_column(name, justify=justify)
    for m in metrics:
        table.add_column(m, justify="right")
    for r in rows:
        cells = [r.experiment, r.label, r.arm, str(len(r.runs)), *(_cell(r.stat(m)) for m in metrics)]
        table.add_row(*map(escape, cells))
    console.print(table)
    for t in failed:
        err = t.get("error") or {}
        console.print(f"failed trial {t.get('name')} ({_overrides(t)}): {err.get('type')}: {err.get('message')}",
                      markup=False)
    for path, arm, message in diverged:
        console.print(f"diverged arm {arm} in {path}: {message}", markup=False)
    for run in incomplete:
        console.print(f"incomplete run {run.path}: {run.problem}", markup=False)


def _plots(complete: list[Run], out: Path, notes: list[str]) -> list[str]:
    try:
        from plasticity.results.plots import make_plots  # late: matplotlib only when drawing
        from plasticity.results.sweep_plots import plot_sweep
    except ImportError as e:
        notes.append(f"plots skipped: plotting is not available ({e})")
        return []
    paths: list[str] = []
    try:
        for run in complete:
            if not (run.path / "plots").is_dir():  # runs made with plots=false
                make_plots(run.path)
        paths = [str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p)
                 for p in plot_sweep([r.path for r in complete], out / "plots")]
    except Exception as e:  # noqa: BLE001 - a figure must not cost the table
        notes.append(f"plots skipped: {type(e).__name__}: {e}")
    return paths


def report(dirs: list[str | Path], out: str | Path | None = None, plots: bool = True, echo=print) -> int:
    """Print the table and write report.md and report.csv; returns the exit status (1: no runs found)."""
    run_paths, indexes = find(dirs)
    runs = [load(p) for p in run_paths]
    failed = failed_trials(indexes)
    failed_dirs = {str(Path(t["run_dir"]).resolve()) for t in failed if t.get("run_dir")}
    complete = [r for r in runs if r.summary is not None]
    incomplete = [r for r in runs if r.summary is None and str(r.path) not in failed_dirs]
    if not runs and not failed:
        echo(f"report: no run directories under {', '.join(map(str, dirs))}")
        return 1
    rows = build_rows(complete)
    metrics = columns(rows)
    out = Path(out) if out else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figures = _plots(complete, out.resolve(), notes) if plots and complete else []
    diverged = [(str(run.path), arm, message) for run in complete for arm, message in run.diverged_arms().items()]
    print_table(rows, metrics, failed, incomplete, diverged)
    atomic_write_text(out / "report.md", markdown(rows, metrics, failed, incomplete, figures, diverged))
    atomic_write_text(out / "report.csv", csv_text(rows, metrics))
    for note in notes:
        echo(note)
    echo(f"{len(complete)} runs, {len(rows)} rows, {len(failed)} failed trials, {len(diverged)} diverged arms, "
         f"{len(incomplete)} incomplete; "
         f"wrote {out / 'report.md'} and {out / 'report.csv'}")
    return 0
