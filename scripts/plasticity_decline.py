"""Does an arm's plasticity decline over a long stream? Per setting (runs that differ only by their seed):
the arm's end-of-phase KL (R[i][i]), its prequential regret per token and its adaptation time, over the
first and the last fifth of the phases after pretraining, and their difference (last − first; + = worse),
mean and 95% confidence interval over the seeds (Student t). Where fresh learners ran, the gap to them too.

    python scripts/plasticity_decline.py RUN_OR_SWEEP_DIR... [--arm naive] [--fraction 0.2] [--figures A,B] [--json OUT]

A decline is measured when the interval of (last − first) excludes 0. The figures come from summary.json
(`R_kl_bits`, `regret_bits_per_token`, `adaptation_steps`, `plasticity_gap_bits`), so any run qualifies; the
probes (weight norm, effective rank, dormant units: the mechanisms the literature names) from the arm's
evaluation at each phase end in metrics.jsonl, where the run recorded them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from plasticity.results.runs import config_setting, find, load, setting_labels
from plasticity.results.stats import mean_ci
from streams.checks import is_number


def _at(ends: dict[int, dict[int, dict]], i: int, j: int | None, key: str):
    """The arm's `key` at the end of phase i, evaluated on phase j (None: on phase i itself)."""
    return ends.get(i, {}).get(i if j is None else j, {}).get(key)


def _late(row: dict | None, fraction: float = 0.25) -> float | None:
    """Mean KL over the last quarter of the scored positions: where in-context inference shows."""
    kl = [v for v in (row or {}).get("kl_bits_by_position") or [] if is_number(v)]
    return statistics.fmean(kl[-max(1, round(fraction * len(kl))):]) if kl else None


FIGURES = {  # name -> how to read it per phase i from the arm's summary entry and its rows at phase ends
    "end-of-phase KL": lambda res, ends, i: res["R_kl_bits"][i][i] if i < len(res["R_kl_bits"]) else None,
    "regret/token": lambda res, ends, i: (res.get("regret_bits_per_token") or [None] * (i + 1))[i],
    "adaptation steps": lambda res, ends, i: (res.get("adaptation_steps") or [None] * (i + 1))[i],
    "gap to fresh": lambda res, ends, i: (res.get("plasticity_gap_bits") or [None] * (i + 1))[i],
    "weight norm": lambda res, ends, i: _at(ends, i, None, "weight_norm"),
    "effective rank": lambda res, ends, i: _at(ends, i, None, "effective_rank"),
    "dormant": lambda res, ends, i: _at(ends, i, None, "dormant_frac"),
    # the two yardsticks of a pool phase, and in-context inference on phase 0's bank (unseen tasks when
    # phase 0 is the family's whole prior; the run must evaluate it: eval.phases every:K)
    "KL to general posterior": lambda res, ends, i: _at(ends, i, None, "kl_bits_general"),
    "KL on phase 0": lambda res, ends, i: _at(ends, i, 0, "kl_bits"),
    "late-position KL on phase 0": lambda res, ends, i: _late(ends.get(i, {}).get(0)),
}


def phase_end_rows(run, arm: str) -> dict[int, dict[int, dict]]:
    """phase -> eval phase -> the arm's row at that phase's last evaluation (every phase end is one)."""
    last: dict[int, int] = {}
    out: dict[int, dict[int, dict]] = {}
    for r in run.rows():
        if r["arm"] != arm:
            continue
        if r["step"] > last.get(r["phase"], -1):
            last[r["phase"]], out[r["phase"]] = r["step"], {}
        if r["step"] == last[r["phase"]]:
            out[r["phase"]][r["eval_phase"]] = r
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if is_number(v)]
    return statistics.fmean(vals) if vals else None


def decline(res: dict, ends: dict[int, dict[int, dict]], n_phases: int, fraction: float
            ) -> dict[str, tuple[float | None, float | None]]:
    """figure -> (mean over the first fraction of phases 1.., mean over the last fraction)."""
    online = list(range(1, n_phases))
    k = max(1, round(fraction * len(online)))
    first, last = online[:k], online[-k:]
    return {name: (_mean(read(res, ends, i) for i in first), _mean(read(res, ends, i) for i in last))
            for name, read in FIGURES.items()}


def _cell(stats: dict, signed: bool = False) -> str:
    if stats["mean"] is None:
        return "-"
    fmt = "{:+.4g}" if signed else "{:.4g}"
    text = fmt.format(stats["mean"])
    return text if stats["ci95"] is None else f"{text} ± {stats['ci95']:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--arm", default="naive")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--json", help="also write the table's numbers here")
    ap.add_argument("--figures", default=",".join(list(FIGURES)[:7]), help=f"comma-separated, of: {', '.join(FIGURES)}")
    args = ap.parse_args()
    if not 0 < args.fraction <= 0.5:
        ap.error(f"--fraction={args.fraction}: must be in (0, 0.5] (the first and the last fifth: 0.2)")
    runs = [load(p) for p in find(args.dirs)[0]]
    groups: dict[str, list] = {}
    for run in runs:
        if run.summary and args.arm in run.summary.get("arms", {}):
            groups.setdefault(json.dumps(config_setting(run.config), sort_keys=True), []).append(run)
    labels = setting_labels([config_setting(g[0].config) for g in groups.values()])
    shown = [f.strip() for f in args.figures.split(",")]
    if unknown := [f for f in shown if f not in FIGURES]:
        ap.error(f"--figures: unknown {', '.join(unknown)}; allowed: {', '.join(FIGURES)}")
    print(f"| setting | seeds | {' | '.join(f'{f}: first → last (Δ)' for f in shown)} |")
    print("|---|---:|" + "---|" * len(shown))
    out = []
    for members, label in zip(groups.values(), labels):
        per_seed = [decline(r.summary["arms"][args.arm], phase_end_rows(r, args.arm), len(r.summary["phases"]),
                            args.fraction) for r in members]
        cells, numbers = [], {}
        for name in shown:
            first = mean_ci([d[name][0] for d in per_seed])
            last = mean_ci([d[name][1] for d in per_seed])
            delta = mean_ci([d[name][1] - d[name][0] for d in per_seed
                             if d[name][0] is not None and d[name][1] is not None])
            cells.append(f"{_cell(first)} → {_cell(last)} ({_cell(delta, signed=True)})")
            numbers[name] = {"first": first, "last": last, "delta": delta}
        seeds = sorted(str(r.config.get("seed")) for r in members)
        print(f"| {label} | {','.join(seeds)} | {' | '.join(cells)} |")
        out.append({"setting": label, "seeds": seeds, "figures": numbers, "runs": [str(r.path) for r in members]})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
