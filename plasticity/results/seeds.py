"""The seeds of one experiment, aggregated: mean and 95% confidence interval (Student t over seeds) of every
figure of their summaries, written as `aggregate.json` in the parent run directory, printed as a table.

The parent directory (`plasticity run EXPERIMENT seeds=[0,1,2]`) holds `seeds.yaml` (the config the seeds
share, with its `seeds`), one run directory per seed (`seed_<s>/`), `aggregate.json` and `plots/` (the KL
curves with bands over the seeds). `plasticity report PARENT` groups the seeds' runs as it groups any runs
that differ only by their seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plasticity.results.stats import mean_ci
from plasticity.results.summary_table import MAX_PHASE_COLUMNS
from streams.checks import is_number

SEEDS_FILE, AGGREGATE_FILE = "seeds.yaml", "aggregate.json"


def seed_dir(parent: Path, seed: int) -> Path:
    return Path(parent) / f"seed_{seed}"


def _tree(values: list[Any]) -> Any:
    """Numbers -> mean_ci; lists and dicts -> element by element (a seed lacking an element has no value)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, list) for v in present):
        width = max(len(v) for v in present)
        return [_tree([v[i] if isinstance(v, list) and i < len(v) else None for v in values]) for i in range(width)]
    if present and all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _tree([v.get(k) if isinstance(v, dict) else None for v in values]) for k in keys}
    if not present or all(is_number(v) for v in present):
        return mean_ci(values)
    return present[0] if len({repr(v) for v in present}) == 1 else None  # a label shared by the seeds


def aggregate(summaries: dict[int, dict]) -> dict:
    """{seeds, name, phases, arms: {arm: {figure: stats}}, timing}: every numeric figure of every arm's
    summary entry as {mean, ci95, std, n, values}, element by element for lists (R matrices, per-phase
    figures). An arm that diverged at a seed contributes nothing there; `diverged` maps those seeds to
    their messages."""
    seeds = sorted(summaries)
    arms = list(dict.fromkeys(a for s in seeds for a in summaries[s].get("arms", {})))
    out_arms = {}
    for arm in arms:
        entries = [summaries[s]["arms"].get(arm) for s in seeds]
        keys = [k for k in dict.fromkeys(k for e in entries if e for k in e) if k != "diverged"]
        out = {k: _tree([e.get(k) if e else None for e in entries]) for k in keys}
        diverged = {s: e["diverged"] for s, e in zip(seeds, entries) if e and e.get("diverged")}
        if diverged:
            out["diverged"] = diverged
        out_arms[arm] = out
    first = summaries[seeds[0]]
    timing = {k: sum(summaries[s]["timing"].get(k) or 0 for s in seeds)
              for k in ("train_seconds", "eval_seconds", "record_seconds")}
    return {"seeds": seeds, "name": first.get("name"), "phases": first.get("phases"), "arms": out_arms,
            "timing": timing}


def _cell(stats: dict | None, signed: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    fmt = "{:+.4f}" if signed else "{:.4f}"
    mean = fmt.format(stats["mean"])
    return mean if stats["ci95"] is None else f"{mean} ± {stats['ci95']:.4f}"


def print_aggregate(agg: dict, parent: Path) -> None:
    """The end-of-stream KL on every phase, the mean KL and BWT per arm: mean ± 95% CI over the seeds."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    phases = agg["phases"]
    wide = len(phases) <= MAX_PHASE_COLUMNS
    table = Table(title=f"KL to the exact posterior (bits) at the end of the stream — {agg['name']}, mean ± 95% "
                        f"CI over seeds {', '.join(map(str, agg['seeds']))}")
    for name in ("arm", *(phases if wide else []), "mean" if wide else f"mean over {len(phases)} phases",
                 "BWT (+ = worse)"):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for arm, res in agg["arms"].items():
        if "R_kl_bits" not in res or not res["R_kl_bits"]:
            continue
        last = res["R_kl_bits"][-1] if wide else []
        table.add_row(arm, *(_cell(c) for c in last), _cell(res.get("final_kl_bits")),
                      _cell(res.get("bwt_bits"), signed=True))
    console.print(table)
    for arm, res in agg["arms"].items():
        for seed, message in (res.get("diverged") or {}).items():
            console.print(f"arm {arm} diverged at seed {seed}: {message}", markup=False)
    console.print(f"parent run directory: {parent} (aggregate.json, seed_*/, plots/)")
