"""Units of work in parallel: wall time with `trainer.workers` 1 and N, back to back, and bit-identity.

    python benchmarks/bench_parallel.py                                  # default + frozen_vs_online, 1 vs 2
    python benchmarks/bench_parallel.py --experiments default --workers 1 2 4
    python benchmarks/bench_parallel.py --sweep                          # also 4 smoke trials, 1 vs 2 workers
    python benchmarks/bench_parallel.py --eval-share                     # evaluation's share, wandb offline
    python benchmarks/bench_parallel.py --fused                          # AdamW fused=True vs the default path

Each experiment runs as `plasticity run EXPERIMENT trainer.workers=N` in a fresh process (so every timing
includes starting Python, the imports and the worker processes), once per worker count, one after the
other; wall time and the CPU time of the process and its children are printed, with the ratio to the
first worker count, and the summaries (minus timing) and the sorted metrics rows of every run are
compared with the first's: they must be identical. `--sweep` times `plasticity sweep` of four smoke
trials with `--workers 1` and `--workers 2`. `--eval-share` runs the default experiment sequentially
with wandb offline (what a new user without an API key gets) and disabled, and reports the evaluation's
seconds (the eval banks and probes) over the run's wall time, and apart from them the frozen arm's
per-step record (a forward pass of every stream batch: summary timing.record_seconds). `--fused` runs
the default experiment's naive arm with `optim.fused` false and true, one after the other, and compares
speed and results. Name the machine (nproc, CPU model) with every number
you quote; run nothing heavy beside.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "?"
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}; load {os.getloadavg()[0]:.2f}"


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def result(run_dir: Path) -> tuple[dict, list[str]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("timing")
    return summary, sorted((run_dir / "metrics.jsonl").read_text().splitlines())


def bench_experiments(names: list[str], workers: list[int], tmp: Path, env: dict, extra: list[str]) -> None:
    print("| experiment | workers | wall s | CPU s | wall / first | identical to the first |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        first = None
        for n in workers:
            run_dir = tmp / f"{name}-w{n}"
            wall, cpu = timed([sys.executable, "-m", "plasticity.cli", "run", name, f"trainer.workers={n}",
                               f"run.dir={run_dir}", "progress=false", "plots=false", *extra], env)
            got = result(run_dir)
            if first is None:
                first = (wall, got)
            same = "yes" if got == first[1] else "NO"
            print(f"| {name} | {n} | {wall:.1f} | {cpu:.1f} | {wall / first[0]:.3f} | {same} |", flush=True)


def bench_sweep(tmp: Path, env: dict) -> None:
    sweep = tmp / "four_smoke.yaml"
    sweep.write_text("experiment: smoke\nmethod: grid\nparameters:\n  seed: {values: [0, 1, 2, 3]}\n")
    print("| sweep of 4 smoke trials | --workers | wall s | CPU s | wall / 1 worker |")
    print("|---|---:|---:|---:|---:|")
    first = None
    for n in (1, 2):
        wall, cpu = timed([sys.executable, "-m", "plasticity.cli", "sweep", str(sweep), "--out", str(tmp / f"sw{n}"),
                           "--workers", str(n)], env)
        first = first or wall
        print(f"| smoke x 4 | {n} | {wall:.1f} | {cpu:.1f} | {wall / first:.3f} |", flush=True)


def bench_eval_share(tmp: Path, env: dict) -> None:
    print("| default experiment, workers 1 | wandb | wall s | eval s | eval / wall | frozen record s | "
          "record / wall | eval / units' time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("offline", "disabled"):
        run_dir = tmp / f"share-{mode}"
        wall, _ = timed([sys.executable, "-m", "plasticity.cli", "run", "default", "trainer.workers=1",
                         f"logger.wandb.mode={mode}", f"run.dir={run_dir}", "progress=false", "plots=false"], env)
        t = json.loads((run_dir / "summary.json").read_text())["timing"]
        record = t.get("record_seconds") or 0.0  # the frozen arm's per-step record (forward passes only)
        print(f"| default | {mode} | {wall:.1f} | {t['eval_seconds']:.1f} | {t['eval_seconds'] / wall:.3f} | "
              f"{record:.1f} | {record / wall:.3f} | {t['eval_fraction']:.3f} |", flush=True)


def bench_fused(tmp: Path, env: dict) -> None:
    print("| AdamW | wall s | CPU s | training tokens/s | identical to the default path |")
    print("|---|---:|---:|---:|---|")
    first = None
    for fused in ("false", "true"):
        run_dir = tmp / f"fused-{fused}"
        wall, cpu = timed([sys.executable, "-m", "plasticity.cli", "run", "default", "arms=[naive]",
                           "trainer.workers=1", f"optim.fused={fused}", f"run.dir={run_dir}", "progress=false",
                           "plots=false"], env)
        rate = json.loads((run_dir / "summary.json").read_text())["timing"]["train_tokens_per_second"]
        got = result(run_dir)
        first = first or got
        same = "yes" if got == first else "no"
        print(f"| fused={fused} | {wall:.1f} | {cpu:.1f} | {rate:,.0f} | {same} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="*", default=["default", "frozen_vs_online"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--sweep", action="store_true", help="also time a sweep of 4 smoke trials, 1 vs 2 workers")
    ap.add_argument("--eval-share", action="store_true", help="also measure evaluation's share (wandb offline)")
    ap.add_argument("--fused", action="store_true", help="also compare AdamW fused=True with the default path")
    ap.add_argument("--override", nargs="*", default=[], help="extra key=value for every experiment run")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": os.environ.get("WANDB_MODE") or "disabled"}
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.experiments:
            bench_experiments(args.experiments, args.workers, Path(tmp), env, args.override)
        if args.sweep:
            bench_sweep(Path(tmp), env)
        if args.eval_share:
            bench_eval_share(Path(tmp), {**env, "WANDB_MODE": ""})
        if args.fused:
            bench_fused(Path(tmp), env)
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
