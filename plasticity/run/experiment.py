"""The experiment driver: pretrain on phase 0 once, fork the arms from those weights, walk the stream.

`Experiment(build(cfg), run_dir, sinks).run()` runs the units of work (plasticity.run.work_units) and
writes the run directory: config.yaml first, metrics rows as they come, summary.json at the end. Phase 0
is shared by all arms and cached in the run directory (checkpoints/pretrained.pt); each arm then trains
(or not, for `frozen`) through the remaining phases under its strategy, evaluated on every phase's eval
bank. With `resume=True` finished units are kept, interrupted ones continue from their checkpoints, and
the metrics rows written after those checkpoints are dropped first.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from plasticity.eval.continual import add_fresh
from plasticity.eval.rows import FRESH_ARM, PRETRAIN_ARM
from plasticity.models import count_parameters
from plasticity.run import distributed
from plasticity.run.build import BuiltRun
from plasticity.run.config import to_container
from plasticity.run.progress import RunProgress
from plasticity.run.rundir import RunDir
from plasticity.run.sinks import RunSink, Sinks
from plasticity.run.work_units import PRETRAIN_UNIT, UnitEvents, UnitRunner, plan_units, unit_of_row, unit_steps
from plasticity.train.checkpointing import load_checkpoint
from plasticity.train.stopping import StopFlag

# Lightning's banner lines (GPU available, tips) would drown the run's own output.
for _name in ("pytorch_lightning", "lightning_fabric"):  # fabric: DDP's "Initializing distributed" lines
    logging.getLogger(_name).setLevel(logging.WARNING)


def default_run_dir(cfg) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.root) / name


class _Events(UnitEvents):
    """Units running in this process report to the sinks and the progress bar directly."""

    def __init__(self, sinks: Sinks, progress: RunProgress):
        self.sinks, self.progress = sinks, progress

    def rows(self, rows: list[dict]) -> None:
        self.sinks.call("on_rows", rows)

    def phase_end(self, arm: str, phase: int, R_rows: dict[int, list[float]]) -> None:
        self.sinks.call("on_phase_end", arm, phase, R_rows)

    def evaluated(self, unit: str, step: int, kl_bits: float) -> None:
        self.progress.on_eval(unit, step, kl_bits)

    def advanced(self, unit: str, steps: int) -> None:
        self.progress.advance(unit, steps)


class Experiment:
    """One run: the built config, the run directory, the sinks."""

    def __init__(self, built: BuiltRun, run_dir: Path | None = None, sinks: list[RunSink] | None = None,
                 resume: bool = False):
        self.built, self.cfg, self.stream = built, built.cfg, built.stream
        self.rank = distributed.rank(self.cfg)
        self.rundir = RunDir(run_dir or default_run_dir(self.cfg), read_only=self.rank > 0)  # rank 0 writes
        self.resume = resume
        self.progress = RunProgress(enabled=self.cfg.progress)
        self.sinks = Sinks(sinks)
        self.stop = StopFlag()

    def run(self) -> dict:
        try:
            with distributed.launch(self.cfg, self.rundir.path, self.resume):  # DDP: the other ranks
                return self._run()
        except BaseException:
            self.sinks.call("close")  # finish wandb runs even when the run dies; the run dir has the data
            raise

    def _run(self) -> dict:
        t_start = time.perf_counter()
        cfg = self.cfg
        if self.resume:
            if not self.rundir.read_only:
                self._drop_rows_after_checkpoints()
        else:
            self.rundir.create(to_container(cfg))
        self.sinks.call("on_start", to_container(cfg), str(self.rundir.path))
        if cfg.trainer.threads > 0:
            torch.set_num_threads(cfg.trainer.threads)
        units = plan_units(self.built)
        results: dict[str, dict] = {}
        self.stop.install()
        try:
            with self.progress.run({u.name: unit_steps(self.built, u) for u in units}):
                runner = UnitRunner(self.built, self.rundir, _Events(self.sinks, self.progress), self.stop,
                                    self.resume)
                for unit in units:
                    results[unit.name] = runner.run(unit)
                    self._warn_if_diverged(unit.name, results[unit.name])
        finally:
            self.stop.uninstall()
        summary = self._summary(results, time.perf_counter() - t_start)
        self.rundir.write_summary(summary)
        self.sinks.call("on_summary", summary)
        self.sinks.call("close")
        return summary

    def _warn_if_diverged(self, unit: str, result: dict) -> None:
        message = result.get("diverged") or (result.get("result") or {}).get("diverged")
        if message and self.rank == 0:
            if unit.startswith(f"{FRESH_ARM}@"):
                print(f"warning: the fresh learner of phase {unit.split('@')[1]} diverged: {message}", file=sys.stderr)
            else:
                print(f"warning: arm '{unit}' diverged: {message}; other arms continue", file=sys.stderr)

    def _summary(self, results: dict[str, dict], wall: float) -> dict:
        phases = self.stream.phases
        arms = {PRETRAIN_ARM: results[PRETRAIN_UNIT]["result"]} if len(phases) == 1 else {}
        arms.update({arm: results[arm]["result"] for arm in self.built.strategies if arm in results})
        fresh = {name: r for name, r in results.items() if name.startswith(f"{FRESH_ARM}@")}
        if fresh:
            kl = {int(name.split("@")[1]): r["kl_bits"] for name, r in fresh.items()}
            diverged = {name.split("@")[1]: r["diverged"] for name, r in fresh.items() if r.get("diverged")}
            add_fresh(arms, kl, len(phases), diverged)
        timing = {k: sum(r["timing"][k] for r in results.values()) for k in ("train_seconds", "eval_seconds",
                                                                            "train_tokens")}
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
                "train_tokens_per_second": timing["train_tokens"] / timing["train_seconds"]
                if timing["train_seconds"] else None,
                "eval_fraction": timing["eval_seconds"] / compute if compute else None,
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

