"""Where an architecture's HMM error sits: at the SEP position, before any observation, or in the filtering after it.

    python scripts/hmm_filtering.py [runs/sweeps/primitives ...] [--out DIR]

Reads every finished run whose stream is one `hmm` phase (configs/sweep/primitives.yaml has two: `hmm`, a random
HMM per sequence shown in a header, and `hmm_fixed`, one fixed HMM and no header) and takes its last evaluation's
KL by position. The SEP position predicts the first observation before any is seen: with a header, from the
header alone (the emission matrix's column means), so its KL measures how well the model read the sequence's
HMM; with one fixed HMM, from the weights. Every later position predicts the next observation from those seen,
which is the forward filter's work. Per (stream, model): the KL at SEP and the mean KL over the positions
after it, mean ± 95% Student-t interval over seeds (and each seed's, in seed order). Writes hmm_filtering.md /
.csv into --out (default: the first folder). Runs of one (stream, model) that differ in another key are
refused (exit 2), not pooled as seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from plasticity.files import atomic_write_csv, atomic_write_text
from plasticity.results.runs import differing_keys, find, load
from plasticity.results.stats import mean_ci, mean_ci_text
from plasticity.run.config import ConfigError
from streams.stream import Stream


def collect(folders: list[Path]) -> dict:
    """{(stream, model): [(seed, KL at SEP, mean KL after it), ...]} in seed order, for the finished runs on
    a stream of one `hmm` phase."""
    found: dict = defaultdict(list)
    configs: dict = defaultdict(list)
    for run in map(load, find(folders)[0]):
        cfg = run.config
        phases = cfg.get("stream", {}).get("phases", []) if isinstance(cfg.get("stream"), dict) else []
        if run.summary is None or len(phases) != 1 or phases[0].get("family") != "hmm":
            continue
        family = Stream.from_spec(cfg["stream"], seed=cfg["seed"]).tasks[0].family
        curve = run.final_kl_by_position()
        if curve is None:
            continue
        sep = family.header_len
        after = [v for v in curve[sep + 1:] if v is not None]
        key = (phases[0]["name"], cfg["model"]["name"])
        found[key].append((cfg["seed"], curve[sep], statistics.fmean(after) if after else None))
        configs[key].append(cfg)
    for key in found:
        if differ := differing_keys(configs[key]):
            raise ConfigError(f"the runs of stream {key[0]}, model {key[1]} differ in {', '.join(differ)}: "
                              "pass folders in which they are seeds of one setting")
        found[key].sort(key=lambda row: row[0])
    return dict(found)


def summarise(found: dict) -> list[dict]:
    rows = []
    for (stream, model), seeded in sorted(found.items()):
        sep, after = mean_ci([s for _, s, _ in seeded]), mean_ci([a for _, _, a in seeded])
        rows.append({"stream": stream, "model": model, "seeds": len(seeded),
                     "kl_sep": sep["mean"], "kl_sep_ci95": sep["ci95"],
                     "kl_after": after["mean"], "kl_after_ci95": after["ci95"],
                     "per_seed_sep": [round(v, 4) for v in sep["values"]],
                     "per_seed_after": [round(v, 4) for v in after["values"]]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| stream | model | seeds | KL at SEP (no observation yet; bits) | KL over the observations after it "
             "| SEP, after per seed |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        sep = mean_ci_text({"mean": r["kl_sep"], "ci95": r["kl_sep_ci95"]})
        after = mean_ci_text({"mean": r["kl_after"], "ci95": r["kl_after_ci95"]})
        lines.append(f"| {r['stream']} | {r['model']} | {r['seeds']} | {sep} | {after} | "
                     f"{r['per_seed_sep']}, {r['per_seed_after']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[Path("runs/sweeps/primitives")])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        found = collect(args.folders)
    except ConfigError as e:  # a folder that is not there; runs of one stream and model that are not seeds
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not found:
        print(f"error: no finished run on an hmm stream under {', '.join(map(str, args.folders))}", file=sys.stderr)
        raise SystemExit(2)
    rows = summarise(found)
    table = markdown(rows)
    print(table, end="")
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "hmm_filtering.md", table)
    atomic_write_csv(out / "hmm_filtering.csv", rows)
    print(f"wrote {out / 'hmm_filtering.md'} and .csv")


if __name__ == "__main__":
    main()
