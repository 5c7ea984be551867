"""The experiment driver: pretrain on phase 0 once, fork the arms from those weights, walk the stream.

`run(cfg)` is callable from tests and scripts; the CLI is a thin layer over it. Phase 0 is shared by all
arms and cached in the run directory (checkpoints/pretrained.pt); each arm then trains (or not, for
`frozen`) through the remaining phases under its strategy, evaluated on every phase's eval bank.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

from plasticity.config import ConfigError, to_container, validate
from plasticity.continual_metrics import auc_kl, bwt_bits, forgetting_bits, plasticity_gap_bits, steps_to_threshold
from plasticity.evaluation import Evaluator, eval_schedule
from plasticity.models import ModelConfig, build_model, count_parameters
from plasticity.module import WindTunnelModule, stream_loader
from plasticity.progress import RunProgress
from plasticity.rundir import RunDir, atomic_torch_save
from plasticity.strategies import Strategy, build_strategy
from streams.stream import Stream

PRETRAIN_ARM = "pretrain"

# Lightning's banner lines (GPU available, tips) would drown the run's own output.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


@dataclass
class Parts:
    stream: Stream
    strategies: dict[str, Strategy]
    device: torch.device
    model_cfg: ModelConfig = field(default_factory=ModelConfig)

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.model_cfg, self.stream.vocab_size, self.stream.max_seq_len)


def _model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**to_container(cfg.model))


def build_parts(cfg: DictConfig) -> Parts:
    """Everything that can fail on bad input, built cheaply (no eval banks, no training)."""
    from streams.stream import StreamSpec  # noqa: F401  (the schema type of cfg.stream)

    spec = to_container(cfg.stream)
    if cfg.eval.size is not None:
        spec["eval_size"] = cfg.eval.size
    try:
        stream = Stream.from_spec(spec, seed=cfg.seed)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("stream") else f"stream: {msg}") from None
    try:
        model_cfg = _model_config(cfg)
        build_model(model_cfg, stream.vocab_size, stream.max_seq_len)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("model") else f"model: {msg}") from None
    strategies = {arm: build_strategy(arm, dict(entry)) for arm, entry in to_container(cfg.arms).items()}
    if len(stream.phases) > 1 and not strategies:
        raise ConfigError("arms: a stream with several phases needs at least one arm (e.g. arms=[frozen,naive])")
    accel = cfg.trainer.accelerator
    if accel == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=cuda: no CUDA device is available here; use auto or cpu")
    device = torch.device("cuda" if accel in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    return Parts(stream, strategies, device, model_cfg)


def default_run_dir(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.run.root) / name


def _trainer(parts: Parts, cfg: DictConfig, max_steps: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        accelerator="gpu" if parts.device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cfg.optim.grad_clip,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=cfg.trainer.deterministic and parts.device.type == "cpu",
        callbacks=callbacks,
    )


class Experiment:
    """One run: the stream, the pretrained weights, the arms, and the run directory."""

    def __init__(self, cfg: DictConfig, run_dir: Path | None = None):
        validate(cfg)
        self.cfg = cfg
        self.parts = build_parts(cfg)
        self.stream = self.parts.stream
        self.rundir = RunDir(run_dir or default_run_dir(cfg))
        self.progress = RunProgress(enabled=cfg.progress)
        self.arm_results: dict[str, dict] = {}
        self.train_seconds = 0.0
        self.train_tokens = 0
        self.eval_seconds = 0.0

    # ------------------------------------------------------------------ pieces
    def _evaluator(self, arm: str, start: int, end: int, reference: dict | None,
                   reference_name: str = "pretrained") -> Evaluator:
        phase_ends = [p.start + p.steps for p in self.stream.phases]
        return Evaluator(
            arm, self.stream, self.banks, eval_schedule(self.cfg.eval.every, start, end, phase_ends),
            self.cfg.eval.batch_size, self.cfg.eval.probes, self.cfg.eval.tau, reference, reference_name,
            self.rundir.append_metrics, self.progress.on_eval,
        )

    def _fit(self, arm: str, model: nn.Module, start: int, end: int, evaluator: Evaluator, lr: float,
             schedule: str, warmup: int, strategy: Strategy | None = None) -> None:
        module = WindTunnelModule(
            model, self.cfg.optim, self.cfg.loss, self.stream, start, end - start,
            lr=lr, schedule=schedule, warmup_steps=warmup, strategy=strategy,
        )
        callbacks: list = [evaluator, self.progress.callback(arm, end - start)]
        if strategy is not None:
            strategy.attach(module, self.stream, self.init_state)
            callbacks.append(strategy)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*IterableDataset.*__len__.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            _trainer(self.parts, self.cfg, end - start, callbacks).fit(module, stream_loader(self.stream, start, end))
        self.train_seconds += time.perf_counter() - t0 - evaluator.seconds
        self.eval_seconds += evaluator.seconds
        self.train_tokens += (end - start) * self.stream.batch_size * self.stream.seq_len

    def _arm_summary(self, strategy: str, evaluator: Evaluator, R_rows: dict[int, list[float]]) -> dict:
        R = [R_rows[i] for i in sorted(R_rows)]
        phases = self.stream.phases
        summary = {
            "strategy": strategy,
            "R_kl_bits": R,
            "final_kl_bits": sum(R[-1]) / len(R[-1]),
            "final_current_kl_bits": R[-1][len(R) - 1],
            "forgetting_bits": forgetting_bits(R),
            "bwt_bits": bwt_bits(R),
            "auc_kl": [],
            "steps_to_threshold": [],
        }
        for i, p in enumerate(phases[: len(R)]):
            curve = [(s, k) for s, k in evaluator.curves.get(i, []) if p.start <= s <= p.start + p.steps]
            if curve:
                steps, kls = zip(*curve)
                summary["auc_kl"].append(auc_kl(list(steps), list(kls)))
                summary["steps_to_threshold"].append(
                    steps_to_threshold(list(steps), list(kls), self.cfg.eval.threshold_bits, p.start))
            else:
                summary["auc_kl"].append(None)
                summary["steps_to_threshold"].append(None)
        return summary

    # ------------------------------------------------------------------ the protocol
    def pretrain(self) -> nn.Module:
        cfg, p0 = self.cfg, self.stream.phases[0]
        model = self.parts.new_model(cfg.seed).to(self.parts.device)
        self.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.pretrain_eval = self._evaluator(PRETRAIN_ARM, 0, p0.steps, self.init_state, "init")
        self.pretrain_eval.evaluate(model, 0)
        self._fit(PRETRAIN_ARM, model, 0, p0.steps, self.pretrain_eval, cfg.optim.lr, cfg.optim.schedule,
                  cfg.optim.warmup_steps)
        atomic_torch_save({"model": model.state_dict(), "init": self.init_state},
                          self.rundir.checkpoints / "pretrained.pt")
        return model

    def run_arm(self, arm: str, strategy: Strategy, pretrained: nn.Module) -> None:
        cfg = self.cfg
        start, end = self.stream.phases[1].start, self.stream.total_steps
        pl.seed_everything(cfg.seed + zlib.crc32(arm.encode()) % 10_000, verbose=False)
        model = copy.deepcopy(pretrained)
        reference = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}
        evaluator = self._evaluator(arm, start, end, reference)
        evaluator.R[0] = self.pretrain_eval.R[0]
        for j, curve in self.pretrain_eval.curves.items():
            evaluator.curves[j] = list(curve)
        if strategy.frozen:
            t0 = time.perf_counter()
            rows = self._frozen_rows(evaluator, model, start)
            for step in sorted(evaluator.eval_steps):
                evaluator.replay(rows, step)
            self.eval_seconds += time.perf_counter() - t0
            self.progress.skip(arm, end - start)
        else:
            self._fit(arm, model, start, end, evaluator, cfg.optim.online_lr, "constant", 0, strategy)
        atomic_torch_save({"model": model.state_dict()}, self.rundir.checkpoints / f"{arm}.pt")
        self.arm_results[arm] = self._arm_summary(strategy.name, evaluator, evaluator.R)

    def _frozen_rows(self, evaluator: Evaluator, model: nn.Module, step: int) -> list[dict]:
        """One evaluation of the unchanged weights, without recording it (replay records it per step)."""
        write, on_eval, R, curves = evaluator.write_rows, evaluator.on_eval, dict(evaluator.R), {
            k: list(v) for k, v in evaluator.curves.items()}
        evaluator.write_rows, evaluator.on_eval = (lambda rows: None), None
        try:
            rows = evaluator.evaluate(model, step)
        finally:
            evaluator.write_rows, evaluator.on_eval, evaluator.R, evaluator.curves = write, on_eval, R, curves
        return rows

    def run_fresh(self) -> None:
        """A freshly initialized learner per phase, trained on that phase alone with the same budget."""
        cfg = self.cfg
        diag: dict[int, list[float]] = {}
        for i, p in enumerate(self.stream.phases[1:], start=1):
            model = self.parts.new_model(cfg.seed + 1000 * i).to(self.parts.device)
            evaluator = self._evaluator("fresh", p.start, p.start + p.steps, None, "init")
            evaluator.banks = {i: self.banks[i]}
            evaluator.curves = {i: []}
            self._fit("fresh", model, p.start, p.start + p.steps, evaluator, cfg.optim.lr, cfg.optim.schedule,
                      cfg.optim.warmup_steps)
            diag[i] = evaluator.R.get(i, [float("nan")])
        self.fresh_diag = {i: row[0] for i, row in diag.items()}

    def run(self) -> dict:
        t_start = time.perf_counter()
        cfg = self.cfg
        self.rundir.create(to_container(cfg))
        if cfg.trainer.threads > 0:
            torch.set_num_threads(cfg.trainer.threads)
        pl.seed_everything(cfg.seed, verbose=False)
        self.banks = self.stream.eval_banks()
        total = self.stream.phases[0].steps + sum(
            (0 if s.frozen else self.stream.total_steps - self.stream.phases[0].steps)
            for s in self.parts.strategies.values()) if len(self.stream.phases) > 1 else self.stream.total_steps
        with self.progress.run(total):
            pretrained = self.pretrain()
            if len(self.stream.phases) == 1:
                self.arm_results[PRETRAIN_ARM] = self._arm_summary("pretrain", self.pretrain_eval,
                                                                   self.pretrain_eval.R)
            else:
                for arm, strategy in self.parts.strategies.items():
                    self.run_arm(arm, strategy, pretrained)
                if cfg.fresh:
                    self.run_fresh()
                    fresh_R = [[0.0] * len(self.stream.phases) for _ in self.stream.phases]
                    for i, v in self.fresh_diag.items():
                        fresh_R[i][i] = v
                    for res in self.arm_results.values():
                        gaps = plasticity_gap_bits(res["R_kl_bits"], fresh_R)
                        res["plasticity_gap_bits"] = [None] + list(gaps[1:])
                    self.arm_results["fresh"] = {"strategy": "fresh", "R_kl_diag_bits": self.fresh_diag}
        wall = time.perf_counter() - t_start
        summary = {
            "name": cfg.name,
            "phases": [p.name for p in self.stream.phases],
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
        return summary


def run(cfg: DictConfig, run_dir: Path | str | None = None) -> dict:
    """Run an experiment end to end; returns the summary (also written to the run directory)."""
    exp = Experiment(cfg, Path(run_dir) if run_dir else None)
    summary = exp.run()
    summary["run_dir"] = str(exp.rundir.path)
    return summary
