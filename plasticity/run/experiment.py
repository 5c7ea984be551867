"""The experiment driver: pretrain on phase 0 once, fork the arms from those weights, walk the stream.

`Experiment(build(cfg), run_dir, sinks).run()` runs the units of work (plasticity.run.work_units) and
writes the run directory: config.yaml first, metrics rows as they come, summary.json at the end. Phase 0
is shared by all arms and cached in the run directory (checkpoints/pretrained.pt); each arm then trains
(or not, for `frozen`) through the remaining phases under its strategy, evaluated on every phase's eval
bank. With `resume=True` finished units are kept, interrupted ones continue from their checkpoints, and
the metrics rows written after those checkpoints are dropped first.

`run_experiments(experiments)` runs several (the seeds of one experiment) together: with
`trainer.workers > 1` all their units share one pool of worker processes (plasticity.run.pool).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from plasticity.eval.continual import add_fresh
from plasticity.eval.rows import FRESH_ARM, PRETRAIN_ARM, PRETRAIN_UNIT
from plasticity.models import count_parameters
from plasticity.run import distributed
from plasticity.run.build import BuiltRun
from plasticity.run.config import to_container
from plasticity.run.pool import Job, Pool, RunJobs, UnitFailed
from plasticity.run.progress import RunProgress
from plasticity.run.rundir import RunDir
from plasticity.run.sinks import RunSink, Sinks
from plasticity.run.work_units import UnitEvents, UnitRunner, plan_units, unit_of_row, unit_steps
from plasticity.train.checkpointing import load_checkpoint
from plasticity.train.stopping import DivergenceError, Preempted, StopFlag

# Lightning's banner lines (GPU available, tips) would drown the run's own output.
for _name in ("pytorch_lightning", "lightning_fabric"):  # fabric: DDP's "Initializing distributed" lines
    logging.getLogger(_name).setLevel(logging.WARNING)

GPU_MEMORY_PER_WORKER = 2**30  # bytes of free GPU memory `trainer.workers=auto` sets aside per worker


def default_run_dir(cfg) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.root) / name


class _Events(UnitEvents):
    """A run's units report to its sinks and to the progress display (units labelled by the run's label)."""

    def __init__(self, sinks: Sinks, progress: RunProgress, label: str):
        self.sinks, self.progress, self.label = sinks, progress, label

    def rows(self, rows: list[dict]) -> None:
        self.sinks.call("on_rows", rows)

    def phase_end(self, arm: str, phase: int, R_rows: dict[int, list[float]]) -> None:
        self.sinks.call("on_phase_end", arm, phase, R_rows)

    def steps(self, arm: str, records: list[dict]) -> None:
        self.sinks.call("on_steps", arm, records)

    def evaluated(self, unit: str, step: int, kl_bits: float) -> None:
        self.progress.on_eval(self.label + unit, step, kl_bits)

    def advanced(self, unit: str, steps: int) -> None:
        self.progress.advance(self.label + unit, steps)


class Experiment:
    """One run: the built config, the run directory, the sinks. `label` prefixes its units on the progress
    display (a seed's run among several)."""

    def __init__(self, built: BuiltRun, run_dir: Path | None = None, sinks: list[RunSink] | None = None,
                 resume: bool = False, label: str = ""):
        self.built, self.cfg, self.stream = built, built.cfg, built.stream
        self.rank = distributed.rank(self.cfg)
        self.rundir = RunDir(run_dir or default_run_dir(self.cfg), read_only=self.rank > 0)  # rank 0 writes
        self.resume, self.label = resume, label
        self.sinks = Sinks(sinks)
        self.units = plan_units(built)
        self.workers = 1

    def run(self) -> dict:
        with distributed.launch(self.cfg, self.rundir.path, self.resume):  # DDP: the other ranks
            return run_experiments([self])[0]

    # ------------------------------------------------------------------ a run's start and end
    def start(self) -> None:
        if self.resume:
            if not self.rundir.read_only:
                self._drop_rows_after_checkpoints()
        else:
            self.rundir.create(to_container(self.cfg))
        self.sinks.call("on_start", to_container(self.cfg), str(self.rundir.path))

    def finished(self, unit: str) -> dict | None:
        return load_checkpoint(self.rundir.checkpoints / f"{unit}.pt", torch.device("cpu"))

    def finish(self, results: dict[str, dict], wall: float) -> dict:
        for name, result in results.items():
            self._warn_if_diverged(name, result)
        summary = self._summary(results, wall)
        self.rundir.write_summary(summary)
        self.sinks.call("on_summary", summary)
        self.sinks.call("close")
        return summary

    def _warn_if_diverged(self, unit: str, result: dict) -> None:
        message = result.get("diverged") or (result.get("result") or {}).get("diverged")
        if message and self.rank == 0:
            who = f"{self.label}the fresh learner of phase {unit.split('@')[1]}" if unit.startswith(f"{FRESH_ARM}@") \
                else f"{self.label}arm '{unit}'"
            tail = "" if unit.startswith(f"{FRESH_ARM}@") else "; other arms continue"
            print(f"warning: {who} diverged: {message}{tail}", file=sys.stderr)

    def _summary(self, results: dict[str, dict], wall: float) -> dict:
        phases = self.stream.phases
        arms = {PRETRAIN_ARM: results[PRETRAIN_UNIT]["result"]} if len(phases) == 1 else {}
        arms.update({arm: results[arm]["result"] for arm in self.built.strategies if arm in results})
        fresh = {name: r for name, r in results.items() if name.startswith(f"{FRESH_ARM}@")}
        if fresh:
            kl = {int(name.split("@")[1]): r["kl_bits"] for name, r in fresh.items()}
            diverged = {name.split("@")[1]: r["diverged"] for name, r in fresh.items() if r.get("diverged")}
            steps = {i: f for r in fresh.values() for i, f in (r.get("steps") or {}).items()}
            add_fresh(arms, kl, len(phases), diverged, steps)
        timing = {k: sum(r["timing"].get(k, 0) for r in results.values())  # (.get: units of an older run)
                  for k in ("train_seconds", "eval_seconds", "record_seconds", "train_tokens")}
        compute = timing["train_seconds"] + timing["eval_seconds"]
        with torch.device("meta"):
            model = self.built.model_class(self.built.model_config, self.stream.vocab_size, self.stream.max_seq_len)
        return {
            "name": self.cfg.name,
            "phases": [p.name for p in phases],
            "arms": arms,
            "model": {"name": self.cfg.model.name, "parameters": count_parameters(model)},
            "timing": {
                "wall_seconds": wall,
                "train_seconds": timing["train_seconds"],
                "eval_seconds": timing["eval_seconds"],
                "record_seconds": timing["record_seconds"],  # frozen arms' per-step record, forward only
                "train_tokens_per_second": timing["train_tokens"] / timing["train_seconds"]
                if timing["train_seconds"] else None,
                "eval_fraction": timing["eval_seconds"] / compute if compute else None,
                "workers": self.workers,
            },
        }

    def _drop_rows_after_checkpoints(self) -> None:
        """On resume, keep a metrics row only if its unit finished or the row precedes the unit's checkpoint."""
        keep_until: dict[str, float] = {}

        def limit(unit: str) -> float:
            if unit not in keep_until:
                if (self.rundir.checkpoints / f"{unit}.pt").exists():
                    keep_until[unit] = math.inf
                else:
                    ckpt = load_checkpoint(self.rundir.checkpoints / f"{unit}-last.pt", torch.device("cpu"))
                    keep_until[unit] = ckpt["stream_step"] if ckpt is not None else -1
            return keep_until[unit]

        rows = self.rundir.metrics()
        kept = [r for r in rows if r["step"] <= limit(unit_of_row(r))]
        if len(kept) != len(rows) or self.rundir.metrics_torn():
            self.rundir.rewrite_metrics(kept)


# ------------------------------------------------------------------------------------------- running them
def parallel_width(built: BuiltRun) -> int:
    """How many of a run's units can train at once: the trained arms, or pretraining, and the fresh learners
    (frozen arms only evaluate: they never need a worker of their own)."""
    trained = sum(not s.frozen for s in built.strategies.values()) if len(built.stream.phases) > 1 else 0
    fresh = len(built.stream.phases) - 1 if built.cfg.fresh and len(built.stream.phases) > 1 else 0
    return max(trained, 1) + fresh


def resolve_workers(cfg, width: int) -> int:
    """`trainer.workers`, with auto = the cores this process may use (its CPU affinity: taskset, cgroups,
    Slurm) divided by `trainer.threads`, or on CUDA as many as the free GPU memory holds; never more than
    `width` units can use, and 1 under DDP."""
    if distributed.enabled(cfg):
        return 1
    workers = cfg.trainer.workers
    if workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, cores // cfg.trainer.threads) if cfg.trainer.threads > 0 else 1
        if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available():
            workers = min(workers, max(1, torch.cuda.mem_get_info()[0] // GPU_MEMORY_PER_WORKER))
    return max(1, min(int(workers), width))


def run_experiments(experiments: list[Experiment]) -> list[dict]:
    """Run every unit of every experiment (one process, or a pool of workers) and write their summaries."""
    cfg = experiments[0].cfg
    t_start = time.perf_counter()
    workers = resolve_workers(cfg, sum(parallel_width(e.built) for e in experiments))
    progress = RunProgress(enabled=cfg.progress)
    stop = StopFlag()
    try:
        for e in experiments:
            e.workers = workers
            e.start()
        if cfg.trainer.threads > 0:
            torch.set_num_threads(cfg.trainer.threads)
        stop.install()
        try:
            with progress.run({e.label + u.name: unit_steps(e.built, u) for e in experiments for u in e.units}):
                if workers == 1:
                    results = [_in_process(e, progress, stop) for e in experiments]
                else:
                    results = _in_pool(experiments, workers, progress, stop)
        finally:
            stop.uninstall()
        wall = time.perf_counter() - t_start
        return [e.finish(r, wall) for e, r in zip(experiments, results)]
    except BaseException:
        for e in experiments:
            e.sinks.call("close")  # finish wandb runs even when the run dies; the run dir has the data
        raise


def _in_process(exp: Experiment, progress: RunProgress, stop: StopFlag) -> dict[str, dict]:
    runner = UnitRunner(exp.built, exp.rundir, _Events(exp.sinks, progress, exp.label), stop, exp.resume)
    return {unit.name: runner.run(unit) for unit in exp.units}


def _in_pool(experiments: list[Experiment], workers: int, progress: RunProgress, stop: StopFlag
             ) -> list[dict[str, dict]]:
    runs, jobs, done = [], [], set()
    for i, e in enumerate(experiments):
        events = _Events(e.sinks, progress, e.label)
        runs.append(RunJobs(to_container(e.cfg), str(e.rundir.path.resolve()), e.resume, events))
        for unit in e.units:
            if e.resume and (e.rundir.checkpoints / f"{unit.name}.pt").exists():
                events.advanced(unit.name, unit_steps(e.built, unit))
                done.add((i, unit.name))
            else:
                jobs.append(Job(i, unit, unit_steps(e.built, unit)))
    outcome = Pool(workers, experiments[0].cfg.trainer.threads).run(runs, jobs, stop, done)
    failed = {key: how for key, how in outcome.items() if how != "done"}
    if any(how == "preempted" for how in failed.values()):
        raise Preempted(f"stopped by {stop.signal or 'a stop signal'}; every unit that was running wrote its "
                        f"checkpoint")
    for (_, unit), how in failed.items():
        if unit == PRETRAIN_UNIT and how.startswith("DivergenceError: "):
            raise DivergenceError(how.removeprefix("DivergenceError: "))
    if failed:
        where = "; ".join(f"{experiments[i].label}{unit}: {how}" for (i, unit), how in sorted(failed.items()))
        raise UnitFailed(f"{len(failed)} units failed ({where}); the others finished; `plasticity run --resume` "
                         "runs the failed ones again")
    return [{u.name: e.finished(u.name) for u in e.units} for e in experiments]
