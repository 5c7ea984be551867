"""Units of work: the shared pretraining, each arm, each fresh learner. A unit is the grain of
checkpointing, of resume and of parallelism.

Every unit is deterministic in (config, unit): it seeds every generator at its start, forks from the
pretrained weights on disk (`checkpoints/pretrained.pt`) when it needs them, evaluates on the stream's
fixed banks, appends its metrics rows to metrics.jsonl, checkpoints itself to `checkpoints/<unit>-last.pt`
while it runs and leaves `checkpoints/<unit>.pt` with its result when done. So units can run one after
another or in several processes with the same results, and a resumed run skips finished units and
continues the interrupted ones from their checkpoints.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from plasticity.eval.continual import arm_summary
from plasticity.eval.evaluator import Evaluator, eval_schedule, eval_selection
from plasticity.eval.prequential import Prequential, phase_figures, record_frozen
from plasticity.eval.rows import FRESH_ARM, PRETRAIN_ARM, PRETRAIN_UNIT
from plasticity.files import atomic_torch_save
from plasticity.run import distributed
from plasticity.run.build import BuiltRun
from plasticity.run.rundir import RunDir
from plasticity.run.steplog import Blocks, RetentionLog, StepLog, read_steps
from plasticity.strategies import ArmLoop, Strategy
from plasticity.train.checkpointing import Checkpointer, load_checkpoint
from plasticity.train.data import stream_loader
from plasticity.train.lightning_module import WindTunnelModule
from plasticity.train.stopping import DivergenceError, StopFlag
from plasticity.train.trainer import make_trainer

_LIGHTNING_NOISE = (".*does not have many workers.*", ".*IterableDataset.*__len__.*", ".*LeafSpec.*")


@dataclass(frozen=True)
class WorkUnit:
    """`name` names its checkpoints; `arm` labels its metrics rows; `phase` is a fresh learner's phase."""

    kind: str  # pretrain | arm | fresh
    name: str
    arm: str
    phase: int | None = None

    @property
    def needs_pretrained(self) -> bool:
        return self.kind == "arm"


def plan_units(built: BuiltRun) -> list[WorkUnit]:
    """Every unit of the run, pretraining first."""
    units = [WorkUnit("pretrain", PRETRAIN_UNIT, PRETRAIN_ARM)]
    phases = built.stream.phases
    if len(phases) > 1:
        units += [WorkUnit("arm", arm, arm) for arm in built.strategies]
        if built.cfg.fresh:  # on phases 1, 1 + fresh_every, 1 + 2 fresh_every, ...
            units += [WorkUnit("fresh", f"{FRESH_ARM}@{i}", FRESH_ARM, i)
                      for i in range(1, len(phases), built.cfg.fresh_every)]
    return units


def unit_of_row(row: dict) -> str:
    """The unit that wrote a metrics row."""
    if row["arm"] == FRESH_ARM:
        return f"{FRESH_ARM}@{row['eval_phase']}"
    return PRETRAIN_UNIT if row["arm"] == PRETRAIN_ARM else row["arm"]


def unit_steps(built: BuiltRun, unit: WorkUnit) -> int:
    """The training steps a unit runs (0 for a frozen arm)."""
    phases = built.stream.phases
    if unit.kind == "pretrain":
        return phases[0].steps
    if unit.kind == "fresh":
        return phases[unit.phase].steps
    return 0 if built.strategies[unit.name].frozen else built.stream.total_steps - phases[0].steps


class UnitEvents:
    """What a running unit reports besides the run directory: the sinks' hooks and the progress bar. The
    experiment implements it in its own process; a worker forwards it to the experiment's process."""

    def rows(self, rows: list[dict]) -> None:
        """Rows just appended to metrics.jsonl."""

    def phase_end(self, arm: str, phase: int, R_rows: dict[int, list[float]]) -> None:
        pass

    def steps(self, arm: str, records: list[dict]) -> None:
        """Per-step records just appended to the unit's steps CSV."""

    def evaluated(self, unit: str, step: int, kl_bits: float) -> None:
        pass

    def advanced(self, unit: str, steps: int) -> None:
        pass


class StepCounter(pl.Callback):
    """Reports every training step of a unit (the progress display)."""

    def __init__(self, events: UnitEvents, unit: str):
        self.events, self.unit = events, unit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.events.advanced(self.unit, 1)


class UnitRunner:
    """Runs units of one run in this process: `run(unit)` returns the unit's result (also left in
    `checkpoints/<unit>.pt`) and never raises for a divergence, which is part of the result."""

    def __init__(self, built: BuiltRun, rundir: RunDir, events: UnitEvents, stop: StopFlag, resume: bool):
        self.built, self.cfg, self.stream = built, built.cfg, built.stream
        self.rundir, self.events, self.stop, self.resume = rundir, events, stop, resume
        self.rank, self.world = distributed.rank(self.cfg), distributed.world_size(self.cfg)
        self.banks = self.stream.eval_banks()
        self._pretrained: dict | None = None  # when this process ran or loaded it (DDP ranks > 0 write nothing)

    def run(self, unit: WorkUnit) -> dict:
        done = self.finished(unit)
        if done is not None:
            self.events.advanced(unit.name, unit_steps(self.built, unit))
        else:
            # record_seconds: a frozen arm's prequential record (a forward pass of every stream batch)
            self.timing = {"train_seconds": 0.0, "eval_seconds": 0.0, "record_seconds": 0.0, "train_tokens": 0}
            done = {"pretrain": self._pretrain, "arm": self._arm, "fresh": self._fresh}[unit.kind](unit)
        if unit.kind == "pretrain":
            self._pretrained = done
        return done

    def finished(self, unit: WorkUnit) -> dict | None:
        """A finished unit's result on disk (when resuming), or None."""
        if not self.resume:
            return None
        return load_checkpoint(self.rundir.checkpoints / f"{unit.name}.pt", self.built.device)

    # ------------------------------------------------------------------ pieces
    def _evaluator(self, unit: WorkUnit, start: int, end: int, reference: dict | None,
                   reference_name: str = "pretrained") -> Evaluator:
        phase_ends = [p.end for p in self.stream.phases]
        return Evaluator(
            unit.arm, self.stream, self.banks, eval_schedule(self.cfg.eval.every, start, end, phase_ends),
            self.cfg.eval.batch_size, self.cfg.eval.probes, self.cfg.eval.tau, reference, reference_name,
            self._write_rows, lambda arm, step, kl: self.events.evaluated(unit.name, step, kl),
            self.events.phase_end, eval_selection(self.cfg.eval.phases, len(self.stream.phases)), end,
            self.cfg.eval.geometry_every, self.cfg.eval.geometry_size, self.rundir.write_manifold,
        )

    def _write_rows(self, rows: list[dict]) -> None:
        self.rundir.append_metrics(rows)  # the source of truth first
        self.events.rows(rows)

    def _ckpt(self, unit: str) -> Path:
        return self.rundir.checkpoints / f"{unit}-last.pt"

    def _logs(self, unit: WorkUnit) -> tuple[StepLog, RetentionLog]:
        """The unit's per-step records (written by rank 0 only; under DDP every rank computes them), reported
        to the sinks as means over blocks (at most logger.wandb.max_step_points over the stream)."""
        on = self.cfg.eval.prequential and not self.rundir.read_only
        self._blocks = Blocks(math.ceil(self.stream.total_steps / self.cfg.logger.wandb.max_step_points))
        steps = StepLog(self.rundir.steps / f"{unit.name}.csv", on,
                        lambda recs: self.events.steps(unit.arm, self._blocks.add(recs)))
        retention = RetentionLog(self.rundir.steps / f"{unit.name}.retention.csv",
                                 on and self.cfg.eval.retention_every > 0)
        return steps, retention

    def _close_logs(self, unit: WorkUnit, *logs) -> None:
        for log in logs:
            log.flush()
        if rest := self._blocks.rest():
            self.events.steps(unit.arm, rest)

    def _step_figures(self, unit: WorkUnit) -> dict[int, dict]:
        """Per phase, the regret, steady level, shift cost and adaptation time from the unit's records."""
        e = self.cfg.eval
        if not e.prequential or self.rundir.read_only:
            return {}
        return phase_figures(read_steps(self.rundir.steps / f"{unit.name}.csv"), self.stream.phases, e.adapt_window,
                             e.adapt_factor, e.adapt_tolerance_bits, e.steady_fraction, e.shift_steps)

    def _fit(self, unit: WorkUnit, model: nn.Module, start: int, end: int, evaluator: Evaluator, lr: float,
             schedule: str, warmup: int, strategy: Strategy | None = None, init_state: dict | None = None
             ) -> str | None:
        """Train `model` on stream steps [start, end); continue from the unit's checkpoint if there is one.
        Returns a divergence message, or None."""
        ckpt = self._ckpt(unit.name)
        state = load_checkpoint(ckpt, self.built.device) if self.resume else None
        module = WindTunnelModule(
            model, self.cfg.optim, self.cfg.loss, self.stream, start, end - start,
            lr=lr, schedule=schedule, warmup_steps=warmup, strategy=strategy, resume_state=state,
        )
        if strategy is not None:
            strategy.attach(module, self.stream, init_state)
        if state is not None:  # after attach, which records the weights the arm started from
            model.load_state_dict(state["model"])
            evaluator.load_state_dict(state["evaluator"])
            if strategy is not None:
                strategy.load_state_dict(state["strategy"])
            module.start_step = state["stream_step"]
        first = module.start_step
        self.events.advanced(unit.name, first - start)
        steps, retention = self._logs(unit)
        for log in (steps, retention):
            log.truncate(first)  # lines past the checkpoint are written again
        callbacks: list = [evaluator, StepCounter(self.events, unit.name)]
        if self.cfg.eval.prequential:
            e = self.cfg.eval
            callbacks.insert(0, Prequential(self.stream, lambda *r: steps.add(r), self.banks, e.retention_every,
                                            e.retention_size, lambda *r: retention.add(r)))
        if strategy is not None:
            callbacks.append(strategy)
        callbacks.append(Checkpointer(ckpt, self.cfg.run.checkpoint_every, end, evaluator, strategy, self.stop,
                                      write=not self.rundir.read_only, before_save=[steps.flush, retention.flush]))
        t0, eval0 = time.perf_counter(), evaluator.seconds
        diverged = None
        if first < end:
            trainer = make_trainer(self.built.device, end - first, callbacks, self.cfg.trainer.deterministic,
                                   self.world, distributed.trainer_strategy(self.cfg, self.built.device.type))
            with warnings.catch_warnings():
                for pattern in _LIGHTNING_NOISE:
                    warnings.filterwarnings("ignore", pattern)
                try:
                    trainer.fit(module, stream_loader(self.stream, first, end, self.rank, self.world))
                except DivergenceError as e:
                    diverged = str(e)
                finally:
                    self._close_logs(unit, steps, retention)
        self._count(time.perf_counter() - t0, evaluator.seconds - eval0, end - first)
        return diverged

    def _count(self, seconds: float, eval_seconds: float, steps: int) -> None:
        self.timing["train_seconds"] += seconds - eval_seconds
        self.timing["eval_seconds"] += eval_seconds
        self.timing["train_tokens"] += steps * self.stream.batch_size * self.stream.seq_len

    def _finish(self, unit: WorkUnit, payload: dict) -> dict:
        payload = {**payload, "timing": self.timing}
        if not self.rundir.read_only:
            atomic_torch_save(payload, self.rundir.checkpoints / f"{unit.name}.pt")
            self._ckpt(unit.name).unlink(missing_ok=True)
        return payload

    def _summary(self, strategy: str, evaluator: Evaluator, diverged: str | None = None,
                 steps: dict[int, dict] | None = None) -> dict:
        return arm_summary(strategy, evaluator.R, evaluator.curves, self.stream.phases,
                           self.cfg.eval.threshold_bits, diverged, steps, evaluator.R_general)

    # ------------------------------------------------------------------ the three kinds of unit
    def _pretrain(self, unit: WorkUnit) -> dict:
        cfg, p0 = self.cfg, self.stream.phases[0]
        pl.seed_everything(cfg.seed, verbose=False)
        model = self.built.new_model(cfg.seed).to(self.built.device)
        init_state = _state(model)
        evaluator = self._evaluator(unit, 0, p0.steps, init_state, "init")
        if not self._ckpt(unit.name).exists() or not self.resume:
            evaluator.evaluate(model, 0)
        diverged = self._fit(unit, model, 0, p0.steps, evaluator, cfg.optim.lr, cfg.optim.schedule,
                             cfg.optim.warmup_steps)
        if diverged:
            raise DivergenceError(f"pretraining diverged: {diverged}")
        figures = self._step_figures(unit)
        payload = {"model": model.state_dict(), "init": init_state, "evaluator": evaluator.state_dict(),
                   "steps": figures}
        if len(self.stream.phases) == 1:  # a single-phase run: the pretraining is the only arm
            payload["result"] = self._summary("pretrain", evaluator, steps=figures)
        return self._finish(unit, payload)

    def pretrained(self) -> dict:
        """The shared pretraining's result (weights, initialization, evaluation history): from this process
        if it ran it, else from disk."""
        done = self._pretrained or load_checkpoint(self.rundir.checkpoints / f"{PRETRAIN_UNIT}.pt", self.built.device)
        if done is None:
            raise RuntimeError("the arms fork from the pretrained weights, but checkpoints/pretrained.pt is missing")
        return done

    def _arm(self, unit: WorkUnit) -> dict:
        cfg, arm = self.cfg, unit.name
        strategy = self.built.strategies[arm]
        start, end = self.stream.phases[1].start, self.stream.total_steps
        pre = self.pretrained()
        model = self.built.new_model(cfg.seed).to(self.built.device)  # the architecture; the weights follow
        model.load_state_dict(pre["model"])
        pl.seed_everything(cfg.seed + zlib.crc32(arm.encode()) % 10_000, verbose=False)  # after new_model's
        evaluator = self._evaluator(unit, start, end, _state(model))
        evaluator.load_state_dict(pre["evaluator"])  # row 0 and the curves so far
        diverged = None
        if strategy.frozen:
            t0 = time.perf_counter()
            rows = evaluator.evaluate(model, start, record=False, every_bank=True)  # replay picks each step's
            for step in sorted(evaluator.eval_steps):
                evaluator.replay(rows, step)
            t1 = time.perf_counter()
            self.timing["eval_seconds"] += t1 - t0
            if self.cfg.eval.prequential:  # its predictions on the stream it does not train on
                steps, _ = self._logs(unit)
                steps.truncate(start)
                record_frozen(model, self.stream, start, end, lambda *r: steps.add(r), self.built.device)
                self._close_logs(unit, steps)
            self.timing["record_seconds"] += time.perf_counter() - t1
        elif strategy.external_loop:  # e.g. an Avalanche strategy: its own training loop, our evaluator
            diverged = self._external(unit, strategy, model, evaluator, start, end)
        else:
            diverged = self._fit(unit, model, start, end, evaluator, cfg.optim.online_lr, "constant", 0, strategy,
                                 pre["init"])
        figures = {**pre.get("steps", {}), **self._step_figures(unit)}  # phase 0: the shared pretraining's
        result = self._summary(strategy.name, evaluator, diverged, figures)
        return self._finish(unit, {"model": model.state_dict(), "result": result})

    def _external(self, unit: WorkUnit, strategy: Strategy, model: nn.Module, evaluator: Evaluator,
                  start: int, end: int) -> str | None:
        steps = [0]

        def on_step() -> None:
            steps[0] += 1
            self.events.advanced(unit.name, 1)

        loop = ArmLoop(unit.name, model, self.stream, start, end, evaluator, self.built.device, self.cfg.optim,
                       self.cfg.loss, self.cfg.eval.batch_size, on_step, lambda: self.stop.requested)
        t0, eval0 = time.perf_counter(), evaluator.seconds
        diverged = strategy.run_arm(loop)
        self._count(time.perf_counter() - t0, evaluator.seconds - eval0, steps[0])
        return diverged

    def _fresh(self, unit: WorkUnit) -> dict:
        """A freshly initialized learner trained on phase `unit.phase` alone, with the same budget."""
        cfg, i = self.cfg, unit.phase
        p = self.stream.phases[i]
        pl.seed_everything(cfg.seed + 1000 * i, verbose=False)
        model = self.built.new_model(cfg.seed + 1000 * i).to(self.built.device)
        evaluator = self._evaluator(unit, p.start, p.end, None, "init")
        evaluator.banks, evaluator.curves = {i: self.banks[i]}, {i: []}
        diverged = self._fit(unit, model, p.start, p.end, evaluator, cfg.optim.lr, cfg.optim.schedule,
                             cfg.optim.warmup_steps)
        kl = evaluator.R[i][i] if i in evaluator.R else float("nan")  # NaN (null in summary.json): it diverged
        return self._finish(unit, {"model": model.state_dict(), "kl_bits": kl, "diverged": diverged,
                                   "steps": self._step_figures(unit)})


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


