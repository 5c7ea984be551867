"""The geometry probes of a run (eval.geometry_every) at the end of every phase, per arm, next to the KL on
the phase being trained, and the first evaluation of each online phase (does a probe move before the KL?).

    python scripts/geometry_table.py RUN_DIR [--arms frozen,naive,replay,l2_init]

Columns are plots/geometry.png's panels (plasticity.results.plots.GEOMETRY).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plasticity.results.plots import GEOMETRY
from plasticity.results.runs import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--arms", help="comma-separated (default: every arm with geometry)")
    args = ap.parse_args()
    run = load(args.run_dir)
    rows = [r for r in run.rows() if "key_orthogonality" in r and r["eval_phase"] == r["phase"]]
    if not rows:
        raise SystemExit(f"{args.run_dir}: no geometry probes in metrics.jsonl (run with eval.geometry_every=N)")
    phases = (run.summary or {}).get("phases") or []
    arms = args.arms.split(",") if args.arms else list(dict.fromkeys(r["arm"] for r in rows))
    titles = [t.replace("\n", " ") for t, _ in GEOMETRY]
    print(f"| arm | step | phase | KL (bits) | {' | '.join(titles)} |")
    print("|---|---:|---|---:|" + "---:|" * len(titles))
    for arm in arms:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["step"])
        # the first evaluation of each phase and the last (its end)
        shown = {}
        for r in mine:
            shown.setdefault((r["phase"], "first"), r)
            shown[(r["phase"], "last")] = r
        for r in sorted({id(r): r for r in shown.values()}.values(), key=lambda r: r["step"]):
            name = phases[r["phase"]] if r["phase"] < len(phases) else r["phase"]
            cells = " | ".join(f"{read(r):.3f}" if read(r) is not None else "-" for _, read in GEOMETRY)
            print(f"| {arm} | {r['step']} | {name} | {r['kl_bits']:.4f} | {cells} |")


if __name__ == "__main__":
    main()
