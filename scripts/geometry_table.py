"""The geometry probes of a run (eval.geometry_every) at the end of every phase, per arm, next to the KL on
the phase being trained, and the first evaluation of each online phase (does a probe move before the KL?).

    python scripts/geometry_table.py RUN_DIR [--arms frozen,naive,replay,l2_init]

RUN_DIR is one run or the parent of a `seeds=` run (seed_*/): then every cell is the mean over seeds with its
95% Student-t interval. Columns are plots/geometry.png's panels (plasticity.results.plots.GEOMETRY).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plasticity.results.plots import GEOMETRY
from plasticity.results.runs import load
from plasticity.results.stats import mean_ci


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
    s = mean_ci(values)
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['ci95']:.{digits}f}" if s["ci95"] is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--arms", help="comma-separated (default: every arm with geometry)")
    args = ap.parse_args()
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
