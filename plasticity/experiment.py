"""The experiment driver: pretrain on phase 0 once, fork the arms from those weights, walk the stream.

`run(cfg)` is callable from tests and scripts; the CLI is a thin layer over it. Phase 0 is shared by all
arms and cached in the run directory (checkpoints/pretrained.pt); each arm then trains (or not, for
`frozen`) through the remaining phases under its strategy, evaluated on every phase's eval bank.

Every fit (pretraining, an arm, a fresh learner) is a unit of work that checkpoints itself and, once
done, leaves `checkpoints/<unit>.pt` with its result: `resume(run_dir)` skips finished units, continues
the interrupted one from its checkpoint and drops the metrics rows written after that checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from plasticity import distributed
from plasticity.checkpointing import Checkpointer, load_checkpoint
from plasticity.config import ConfigError, ExperimentConfig, to_container, validate
from plasticity.evaluation import Evaluator, eval_schedule
from plasticity.models import ModelConfig, build_model, count_parameters
from plasticity.module import DivergenceError, WindTunnelModule, stream_loader
from plasticity.progress import RunProgress
from plasticity.rundir import RunDir, atomic_torch_save
from plasticity.sinks import RunSink, Sinks
from plasticity.stopping import StopFlag
from plasticity.strategies import Strategy, build_strategy
from plasticity.summary import add_fresh, arm_summary
from plasticity.wandb_sink import default_sinks
from streams.stream import Stream

PRETRAIN_ARM = "pretrain"
PRETRAIN_UNIT = "pretrained"  # checkpoints/pretrained.pt: the shared phase-0 weights

# Lightning's banner lines (GPU available, tips) would drown the run's own output.
for _name in ("pytorch_lightning", "lightning_fabric"):  # fabric: DDP's "Initializing distributed" lines
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass
class Parts:
    stream: Stream
    strategies: dict[str, Strategy]
    device: torch.device
    model_cfg: ModelConfig = field(default_factory=ModelConfig)

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.model_cfg, self.stream.vocab_size, self.stream.max_seq_len)


def build_parts(cfg: DictConfig) -> Parts:
    """Everything that can fail on bad input, built cheaply (no eval banks, no training)."""
    spec = to_container(cfg.stream)
    if cfg.eval.size is not None:
        spec["eval_size"] = cfg.eval.size
    try:
        stream = Stream.from_spec(spec, seed=cfg.seed)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("stream") else f"stream: {msg}") from None
    try:
        model_cfg = ModelConfig(**to_container(cfg.model))
        with torch.device("meta"):  # shapes only: as cheap for a huge model as for a tiny one
            build_model(model_cfg, stream.vocab_size, stream.max_seq_len)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("model") else f"model: {msg}") from None
    strategies = {arm: build_strategy(arm, dict(entry)) for arm, entry in to_container(cfg.arms).items()}
    for arm, strategy in strategies.items():
        if arm in (PRETRAIN_ARM, "fresh"):
            raise ConfigError(f"arms.{arm}: '{arm}' is reserved; give the arm another name")
        if strategy.losses is not None and cfg.loss not in strategy.losses:
            raise ConfigError(f"loss={cfg.loss}: arm '{arm}' (strategy '{strategy.name}') trains only with "
                              f"loss={' or '.join(strategy.losses)}")
    if len(stream.phases) > 1 and not strategies:
        raise ConfigError("arms: a stream with several phases needs at least one arm (e.g. arms=[frozen,naive])")
    problem = distributed.check(cfg, strategies)
    if problem:
        raise ConfigError(problem)
    accel = cfg.trainer.accelerator
    if accel == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=cuda: no CUDA device is available here; use auto or cpu")
    device = torch.device("cuda" if accel in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and distributed.enabled(cfg):
        if cfg.trainer.devices > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={cfg.trainer.devices}: only {torch.cuda.device_count()} GPUs here")
        device = torch.device("cuda", distributed.rank(cfg))
    return Parts(stream, strategies, device, model_cfg)


def default_run_dir(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.root) / name


def _trainer(parts: Parts, cfg: DictConfig, max_steps: int, callbacks: list) -> pl.Trainer:
    return distributed.without_lightning_sigterm(pl.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        accelerator="gpu" if parts.device.type == "cuda" else "cpu",
        devices=distributed.world_size(cfg),
        strategy=distributed.trainer_strategy(cfg, parts.device.type),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=cfg.trainer.deterministic and parts.device.type == "cpu",
        callbacks=callbacks,
    ), cfg)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Experiment:
    """One run: the stream, the pretrained weights, the arms, and the run directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path | None = None, sinks: list[RunSink] | None = None,
                 resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.parts = build_parts(cfg)
        self.stream = self.parts.stream
        self.rank, self.world = distributed.rank(cfg), distributed.world_size(cfg)
        self.rundir = RunDir(run_dir or default_run_dir(cfg), read_only=self.rank > 0)  # rank 0 writes
        self.resume = resume
        self.progress = RunProgress(enabled=cfg.progress)
        self.sinks = Sinks(sinks)
        self.stop = StopFlag()
        self.arm_results: dict[str, dict] = {}
        self.fresh_diverged: dict[str, str] = {}  # phase index -> divergence message of its fresh learner
        self.train_seconds = self.eval_seconds = 0.0
        self.train_tokens = 0

    # ------------------------------------------------------------------ pieces
    def _evaluator(self, arm: str, start: int, end: int, reference: dict | None,
                   reference_name: str = "pretrained") -> Evaluator:
        phase_ends = [p.start + p.steps for p in self.stream.phases]
        return Evaluator(
            arm, self.stream, self.banks, eval_schedule(self.cfg.eval.every, start, end, phase_ends),
            self.cfg.eval.batch_size, self.cfg.eval.probes, self.cfg.eval.tau, reference, reference_name,
            self._write_rows, self.progress.on_eval,
            lambda arm, phase, R: self.sinks.call("on_phase_end", arm, phase, R),
        )

    def _write_rows(self, rows: list[dict]) -> None:
        self.rundir.append_metrics(rows)  # the source of truth first
        self.sinks.call("on_rows", rows)

    def _ckpt(self, unit: str) -> Path:
        return self.rundir.checkpoints / f"{unit}-last.pt"

    def _fit(self, unit: str, model: nn.Module, start: int, end: int, evaluator: Evaluator, lr: float,
             schedule: str, warmup: int, strategy: Strategy | None = None) -> str | None:
        """Train `model` on stream steps [start, end); continue from the unit's checkpoint if there is one.
        Returns a divergence message, or None."""
        state = load_checkpoint(self._ckpt(unit), self.parts.device) if self.resume else None
        module = WindTunnelModule(
            model, self.cfg.optim, self.cfg.loss, self.stream, start, end - start,
            lr=lr, schedule=schedule, warmup_steps=warmup, strategy=strategy, resume_state=state,
        )
        if strategy is not None:
            strategy.attach(module, self.stream, self.init_state)
        if state is not None:  # after attach, which records the weights the arm started from
            model.load_state_dict(state["model"])
            evaluator.load_state_dict(state["evaluator"])
            if strategy is not None:
                strategy.load_state_dict(state["strategy"])
            module.start_step = state["stream_step"]
        first = module.start_step
        callbacks: list = [evaluator, self.progress.callback(unit, end - first)]
        if strategy is not None:
            callbacks.append(strategy)
        callbacks.append(Checkpointer(self._ckpt(unit), self.cfg.run.checkpoint_every, end, evaluator, strategy,
                                      self.stop, write=not self.rundir.read_only))
        t0, eval0 = time.perf_counter(), evaluator.seconds
        diverged = None
        if first < end:
            with warnings.catch_warnings():
                for pattern in (".*does not have many workers.*", ".*IterableDataset.*__len__.*", ".*LeafSpec.*"):
                    warnings.filterwarnings("ignore", pattern)
                try:
                    _trainer(self.parts, self.cfg, end - first, callbacks).fit(
                        module, stream_loader(self.stream, first, end, self.rank, self.world))
                except DivergenceError as e:
                    diverged = str(e)
        self.train_seconds += time.perf_counter() - t0 - (evaluator.seconds - eval0)
        self.eval_seconds += evaluator.seconds - eval0
        self.train_tokens += (end - first) * self.stream.batch_size * self.stream.seq_len
        return diverged

    def _finish_unit(self, unit: str, payload: dict) -> None:
        if self.rundir.read_only:
            return
        atomic_torch_save(payload, self.rundir.checkpoints / f"{unit}.pt")
        self._ckpt(unit).unlink(missing_ok=True)

    def _done(self, unit: str) -> dict | None:
        path = self.rundir.checkpoints / f"{unit}.pt"
        return load_checkpoint(path, self.parts.device) if self.resume else None

    # ------------------------------------------------------------------ the protocol
    def pretrain(self) -> nn.Module:
        cfg, p0 = self.cfg, self.stream.phases[0]
        model = self.parts.new_model(cfg.seed).to(self.parts.device)
        self.init_state = _state(model)
        self.pretrain_eval = self._evaluator(PRETRAIN_ARM, 0, p0.steps, self.init_state, "init")
        done = self._done(PRETRAIN_UNIT)
        if done is not None:
            model.load_state_dict(done["model"])
            self.init_state = done["init"]
            self.pretrain_eval.load_state_dict(done["evaluator"])
            self.progress.advance(p0.steps)
            return model
        if not self._ckpt(PRETRAIN_UNIT).exists() or not self.resume:
            self.pretrain_eval.evaluate(model, 0)
        diverged = self._fit(PRETRAIN_UNIT, model, 0, p0.steps, self.pretrain_eval, cfg.optim.lr,
                             cfg.optim.schedule, cfg.optim.warmup_steps)
        if diverged:
            raise DivergenceError(f"pretraining diverged: {diverged}")
        self._finish_unit(PRETRAIN_UNIT, {"model": model.state_dict(), "init": self.init_state,
                                         "evaluator": self.pretrain_eval.state_dict()})
        return model

    def run_arm(self, arm: str, strategy: Strategy, pretrained: nn.Module) -> None:
        done = self._done(arm)
        if done is not None:
            self.arm_results[arm] = done["result"]
            return
        cfg = self.cfg
        start, end = self.stream.phases[1].start, self.stream.total_steps
        pl.seed_everything(cfg.seed + zlib.crc32(arm.encode()) % 10_000, verbose=False)
        model = copy.deepcopy(pretrained)
        evaluator = self._evaluator(arm, start, end, _state(pretrained))
        evaluator.load_state_dict(self.pretrain_eval.state_dict())  # row 0 and the curves so far
        diverged = None
        if strategy.frozen:
            t0 = time.perf_counter()
            rows = evaluator.evaluate(model, start, record=False)
            for step in sorted(evaluator.eval_steps):
                evaluator.replay(rows, step)
            self.eval_seconds += time.perf_counter() - t0
        elif strategy.external_loop:  # e.g. an Avalanche strategy: its own training loop, our evaluator
            t0, eval0 = time.perf_counter(), evaluator.seconds
            diverged = strategy.run_arm(self, arm, model, evaluator, start, end)
            self.train_seconds += time.perf_counter() - t0 - (evaluator.seconds - eval0)
            self.eval_seconds += evaluator.seconds - eval0
        else:
            diverged = self._fit(arm, model, start, end, evaluator, cfg.optim.online_lr, "constant", 0, strategy)
        if diverged and self.rank == 0:
            print(f"warning: arm '{arm}' diverged: {diverged}; other arms continue", file=sys.stderr)
        result = self._summary(strategy.name, evaluator, diverged)
        self.arm_results[arm] = result
        self._finish_unit(arm, {"model": model.state_dict(), "result": result})

    def run_fresh(self) -> dict[int, float]:
        """A freshly initialized learner per phase, trained on that phase alone with the same budget."""
        cfg, diag = self.cfg, {}
        for i, p in enumerate(self.stream.phases[1:], start=1):
            unit = f"fresh@{i}"
            done = self._done(unit)
            if done is not None:
                diag[i] = done["kl_bits"]
                if done.get("diverged"):
                    self.fresh_diverged[str(i)] = done["diverged"]
                continue
            model = self.parts.new_model(cfg.seed + 1000 * i).to(self.parts.device)
            evaluator = self._evaluator("fresh", p.start, p.end, None, "init")
            evaluator.banks, evaluator.curves = {i: self.banks[i]}, {i: []}
            diverged = self._fit(unit, model, p.start, p.end, evaluator, cfg.optim.lr, cfg.optim.schedule,
                                 cfg.optim.warmup_steps)
            diag[i] = evaluator.R.get(i, [math.nan])[0]  # NaN (null in summary.json) when it diverged
            self._finish_unit(unit, {"model": model.state_dict(), "kl_bits": diag[i], "diverged": diverged})
            if diverged:
                if self.rank == 0:
                    print(f"warning: the fresh learner of phase {i} diverged: {diverged}", file=sys.stderr)
                self.fresh_diverged[str(i)] = diverged
        return diag

    def _drop_rows_after_checkpoints(self) -> None:
        """On resume, keep a metrics row only if its unit finished or the row precedes the unit's checkpoint."""
        keep_until: dict[str, float] = {}

        def limit(unit: str) -> float:
            if unit not in keep_until:
                if (self.rundir.checkpoints / f"{unit}.pt").exists():
                    keep_until[unit] = math.inf
                else:
                    ckpt = load_checkpoint(self._ckpt(unit), torch.device("cpu"))
                    keep_until[unit] = ckpt["stream_step"] if ckpt is not None else -1
            return keep_until[unit]

        def unit(row: dict) -> str:
            return {"fresh": f"fresh@{row['eval_phase']}", PRETRAIN_ARM: PRETRAIN_UNIT}.get(row["arm"], row["arm"])

        rows = self.rundir.metrics()
        kept = [r for r in rows if r["step"] <= limit(unit(r))]
        if len(kept) != len(rows) or self.rundir.metrics_torn():
            self.rundir.rewrite_metrics(kept)

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
        pl.seed_everything(cfg.seed, verbose=False)
        self.banks = self.stream.eval_banks()
        phases, trained = self.stream.phases, [s for s in self.parts.strategies.values() if not s.frozen]
        online = self.stream.total_steps - phases[0].steps
        total = phases[0].steps + online * (len(trained) + (1 if cfg.fresh else 0))
        self.stop.install()
        try:
            with self.progress.run(total):
                pretrained = self.pretrain()
                if len(phases) == 1:
                    self.arm_results[PRETRAIN_ARM] = self._summary("pretrain", self.pretrain_eval)
                for arm, strategy in self.parts.strategies.items():
                    if len(phases) > 1:
                        self.run_arm(arm, strategy, pretrained)
                if cfg.fresh and len(phases) > 1:
                    self._add_fresh(self.run_fresh())
        finally:
            self.stop.uninstall()
        wall = time.perf_counter() - t_start
        summary = {
            "name": cfg.name,
            "phases": [p.name for p in phases],
            "arms": self.arm_results,
            "model": {"name": cfg.model.name, "parameters": count_parameters(pretrained)},
            "timing": {
                "wall_seconds": wall,
                "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds,
                "train_tokens_per_second": self.train_tokens / self.train_seconds if self.train_seconds else None,
                "eval_fraction": self.eval_seconds / wall if wall else None,
            },
        }
        self.rundir.write_summary(summary)
        if cfg.plots:
            self._plot()
        self.sinks.call("on_summary", summary)
        self.sinks.call("close")
        return summary

    def _plot(self) -> None:
        try:
            from plasticity.plots import make_plots  # late: matplotlib only when plotting

            make_plots(self.rundir.path)
        except Exception as e:  # noqa: BLE001 - figures are a view; the run directory has the data
            print(f"warning: plots failed ({type(e).__name__}: {e}); redraw with "
                  "plasticity.plots.make_plots(run_dir)", file=sys.stderr)

    def _summary(self, strategy: str, evaluator: Evaluator, diverged: str | None = None) -> dict:
        return arm_summary(strategy, evaluator.R, evaluator.curves, self.stream.phases,
                           self.cfg.eval.threshold_bits, diverged)

    def _add_fresh(self, diag: dict[int, float]) -> None:
        add_fresh(self.arm_results, diag, len(self.stream.phases), self.fresh_diverged)


def run(cfg: DictConfig, run_dir: Path | str | None = None, sinks: list[RunSink] | None = None) -> dict:
    """Run an experiment end to end; returns the summary (also written to the run directory)."""
    exp = Experiment(cfg, Path(run_dir) if run_dir else None, [*(sinks or []), *default_sinks(cfg)])
    summary = exp.run()
    summary["run_dir"] = str(exp.rundir.path)
    return summary


def load_run_config(run_dir: Path | str) -> DictConfig:
    """The resolved config a run directory was started with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("git_commit", None)
    try:
        return OmegaConf.merge(OmegaConf.structured(ExperimentConfig), raw)
    except Exception as e:  # noqa: BLE001 - a hand-edited or foreign config.yaml
        raise ConfigError(f"--resume {run_dir}: config.yaml does not match the schema: {e}".splitlines()[0]) from None


def resume(run_dir: Path | str, sinks: list[RunSink] | None = None) -> dict:
    """Continue an interrupted run; finished units are kept, the interrupted one continues from its checkpoint."""
    cfg = load_run_config(run_dir)
    exp = Experiment(cfg, Path(run_dir), [*(sinks or []), *default_sinks(cfg)], resume=True)
    summary = exp.run()
    summary["run_dir"] = str(exp.rundir.path)
    return summary
