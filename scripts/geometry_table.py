"""The geometry probes of a run (eval.geometry_every) at the end of every phase, per arm, next to the KL on
the phase being trained, and the first evaluation of each online phase (does a probe move before the KL?).

    python scripts/geometry_table.py RUN_DIR [--arms frozen,naive,replay,l2_init]
    python scripts/geometry_table.py RUN_DIR --lead      # which moves first after a shift, the KL or a probe?

RUN_DIR is one run or the parent of a `seeds=` run (seed_*/): then every cell is the mean over seeds with its
95% Student-t interval. Columns are plots/geometry.png's panels (plasticity.results.plots.GEOMETRY).

`--lead` (for a run with a fine cadence, e.g. eval.every=10 eval.geometry_every=10): for every online arm and
every phase after the first, the step by which each quantity — the KL on the phase being trained and each
probe — has first made half of its change over the phase, from its value at the phase's first evaluation to
its value at the phase's end (steps after that first evaluation; "-" where it changes by less than 1% of
its range over the arm's evaluations). A probe whose half-change comes before the KL's moved first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plasticity.results.plots import GEOMETRY
from plasticity.results.runs import load
from plasticity.results.stats import mean_ci, mean_ci_text


def shown_rows(run_dir: Path) -> tuple[dict[tuple[str, int], dict], list[str]]:
    """(arm, step) -> the current phase's row at each phase's first evaluation and at its end."""
    run = load(run_dir)
    rows = [r for r in run.rows() if "key_orthogonality" in r and r["eval_phase"] == r["phase"]]
    shown: dict[tuple[str, int, str], dict] = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        shown.setdefault((r["arm"], r["phase"], "first"), r)
        shown[(r["arm"], r["phase"], "last")] = r
    return {(r["arm"], r["step"]): r for r in shown.values()}, (run.summary or {}).get("phases") or []


def cell(values: list, digits: int) -> str:
    return mean_ci_text(mean_ci(values), digits)


def half_change_step(points: list[tuple[int, float]], floor: float) -> int | None:
    """The first step at which the value has made half its change from the first point to the last."""
    (_, v0), (_, v1) = points[0], points[-1]
    if abs(v1 - v0) <= floor:
        return None
    return next(step for step, v in points if (v - v0) / (v1 - v0) >= 0.5)


def lead_table(run_dir: Path) -> None:
    run = load(run_dir)
    rows = [r for r in run.rows() if "key_orthogonality" in r and r["eval_phase"] == r["phase"]]
    phases = (run.summary or {}).get("phases") or []
    quantities = [("KL (bits)", lambda r: r["kl_bits"]), *((t.replace("\n", " "), read) for t, read in GEOMETRY)]

    def spread(arm: str, read) -> float:  # a quantity's range over the arm's evaluations
        vals = [read(r) for r in rows if r["arm"] == arm and read(r) is not None]
        return (max(vals) - min(vals)) if vals else 0.0
    print("| arm | phase | first evaluation | " + " | ".join(t for t, _ in quantities) + " |")
    print("|---|---|---:|" + "---:|" * len(quantities))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        if arm in ("pretrain", "frozen"):
            continue
        for phase in sorted({r["phase"] for r in rows if r["arm"] == arm}):
            mine = sorted((r for r in rows if r["arm"] == arm and r["phase"] == phase), key=lambda r: r["step"])
            start = mine[0]["step"]
            cells = []
            for _, read in quantities:
                points = [(r["step"] - start, read(r)) for r in mine if read(r) is not None]
                step = half_change_step(points, 0.01 * spread(arm, read)) if len(points) > 1 else None
                cells.append("-" if step is None else str(step))
            name = phases[phase] if phase < len(phases) else phase
            print(f"| {arm} | {name} | step {start} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--arms", help="comma-separated (default: every arm with geometry)")
    ap.add_argument("--lead", action="store_true", help="which moves first after a shift (see above)")
    args = ap.parse_args()
    if args.lead:
        return lead_table(args.run_dir)
    runs = sorted(p for p in args.run_dir.glob("seed_*") if (p / "metrics.jsonl").exists()) or [args.run_dir]
    tables = [shown_rows(r) for r in runs]
    if not any(t for t, _ in tables):
        raise SystemExit(f"{args.run_dir}: no geometry probes in metrics.jsonl (run with eval.geometry_every=N)")
    phases = tables[0][1]
    keys = sorted({k for t, _ in tables for k in t}, key=lambda k: k[1])
    arms = args.arms.split(",") if args.arms else list(dict.fromkeys(a for a, _ in keys))
    titles = [t.replace("\n", " ") for t, _ in GEOMETRY]
    print(f"{len(runs)} run(s){' (mean ± 95% CI over seeds)' if len(runs) > 1 else ''}\n")
    print(f"| arm | step | phase | KL (bits) | {' | '.join(titles)} |")
    print("|---|---:|---|---:|" + "---:|" * len(titles))
    for arm in arms:
        for key in (k for k in keys if k[0] == arm):
            rows = [t[key] for t, _ in tables if key in t]
            phase = rows[0]["phase"]
            name = phases[phase] if phase < len(phases) else phase
            cells = " | ".join(cell([read(r) for r in rows], 3) for _, read in GEOMETRY)
            print(f"| {arm} | {key[1]} | {name} | {cell([r['kl_bits'] for r in rows], 4)} | {cells} |")


if __name__ == "__main__":
    main()
