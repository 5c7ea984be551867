"""The experiment config schema: structured OmegaConf dataclasses, the allowed choices and value ranges.

Each layer owns the config of what it builds (streams: StreamSpec; models: each model's own Config;
strategies: each strategy's Params; train: OptimConfig); this schema composes them with the run's own
settings. Every key here is checked when a config is loaded (plasticity.run.config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from plasticity.train.loss import LOSSES
from plasticity.train.optim import OPTIMIZERS, OptimConfig
from streams.stream import StreamSpec


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | cuda
    # torch CPU threads; 0 keeps torch's default (all cores). One thread per process is the robust default:
    # on a shared 2-core machine two threads collapse when the other core is busy (docs/benchmarks.md).
    threads: int = 1
    deterministic: bool = True
    # Processes running the units of work (each arm, each fresh learner) in parallel: auto = the cores this
    # process may use divided by `threads` (on CUDA: as many as fit on the GPU); 1 runs them one after another.
    workers: Any = "auto"
    devices: int = 1  # processes (CPU) or GPUs; > 1 runs Lightning DDP (plasticity.run.distributed)
    strategy: str = "auto"  # auto (DDP when devices > 1) | ddp


@dataclass
class EvalConfig:
    every: int = 100  # evaluate every N training steps (and at every phase end)
    # The banks evaluated while a phase trains, besides its own: all | current | recent:K | every:K (the stream's
    # end evaluates every bank). Long streams keep evaluations flat with current or recent:K.
    phases: str = "all"
    size: int | None = None  # overrides stream.eval_size
    batch_size: int = 256
    probes: bool = True
    tau: float = 0.1  # ReDo's dormancy threshold
    threshold_bits: float = 0.05  # for steps_to_threshold
    # Every step: the KL of each training batch's prediction, before its update (steps/<unit>.csv), and per
    # phase the regret, the shift cost and the adaptation time derived from it (plasticity.eval.prequential).
    prequential: bool = True
    steady_fraction: float = 0.1  # a phase's steady level: the mean KL over this last share of its steps
    shift_steps: int = 50  # the shift cost: excess bits over the steady level in a phase's first N steps
    adapt_window: int = 10  # adaptation time: a running mean of the per-step KL over this many steps ...
    adapt_factor: float = 1.5  # ... first at or below adapt_factor x the steady level ...
    adapt_tolerance_bits: float = 0.001  # ... plus this many bits
    retention_every: int = 0  # > 0: every N steps, a slice of every past phase's bank (steps/<unit>.retention.csv)
    retention_size: int = 32  # sequences per past phase and retention step
    # > 0: the geometry probes (plasticity.eval.geometry; transformers) every N steps and at every phase end, on
    # the first geometry_size sequences of the current phase's bank, in that phase's row; 0: off
    geometry_every: int = 0
    geometry_size: int = 256


@dataclass
class RunConfig:
    name: str | None = None  # default: experiment name + timestamp
    dir: str | None = None  # overrides runs/<name>
    root: str = "runs"
    checkpoint_every: int = 500  # stream steps between resumable checkpoints (0: only at SIGTERM)


@dataclass
class WandbConfig:
    # online | offline | disabled; unset: $WANDB_MODE if set, else online when an API key is configured,
    # else offline (files kept for `wandb sync`).
    mode: str | None = None
    project: str = "plasticity"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    max_step_points: int = 2000  # per-step figures reach wandb as means over blocks: at most this many per arm


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ExperimentConfig:
    name: str = "custom"
    description: str = ""
    seed: int = 0
    # Run the experiment at several seeds: a list of seeds or a count (0..n-1), in one parent directory with a
    # sub-directory per seed and an aggregate (mean and 95% interval over seeds). None: one run at `seed`.
    seeds: Any = None
    loss: str = "sampled"  # sampled | posterior
    stream: StreamSpec = field(default_factory=StreamSpec)
    # {name: transformer | mlp | lstm | package.module:Class, **that model's parameters} (plasticity.models)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "transformer"})
    # arm name -> {strategy: NAME or "pkg.module:Class", ...strategy parameters}. Phase 0 is pretraining,
    # shared by every arm; the arms fork from the pretrained weights for the later phases.
    arms: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # also train a fresh learner on each phase alone (the plasticity yardstick)
    fresh_every: int = 1  # ... on phases 1, 1 + K, 1 + 2K, ... only (long streams)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    plots: bool = True  # PNGs in <run>/plots at the end of the run
    progress: bool = True


CHOICES = {
    "loss": LOSSES,
    "optim.schedule": ("cosine", "constant"),
    "trainer.accelerator": ("auto", "cpu", "cuda"),
    "trainer.strategy": ("auto", "ddp"),
    "optim.optimizer": OPTIMIZERS,
}
OPTIONAL_CHOICES = {"logger.wandb.mode": ("online", "offline", "disabled")}
MAX_SEED = 2**31 - 1  # arms and fresh learners derive their seeds from it; Lightning takes uint32
# key: (low, high, what the message says); inclusive bounds unless listed in OPEN_*, every value finite
RANGES: dict[str, tuple[float, float, str]] = {
    "seed": (0, MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "optim.lr": (0, math.inf, "> 0"),
    "optim.online_lr": (0, math.inf, "> 0"),
    "optim.grad_clip": (0, math.inf, "> 0"),
    "optim.weight_decay": (0, math.inf, ">= 0"),
    "optim.warmup_steps": (0, math.inf, ">= 0"),
    "optim.min_lr_ratio": (0, 1, "in [0, 1]"),
    "optim.beta1": (0, 1, "in [0, 1)"),
    "optim.beta2": (0, 1, "in [0, 1)"),
    "optim.momentum": (0, 1, "in [0, 1)"),
    "eval.every": (1, math.inf, "> 0"),
    "fresh_every": (1, math.inf, ">= 1"),
    "eval.batch_size": (1, math.inf, "> 0"),
    "eval.tau": (0, math.inf, ">= 0"),
    "eval.threshold_bits": (0, math.inf, ">= 0"),
    "eval.steady_fraction": (0, 1, "in (0, 1]"),
    "eval.shift_steps": (1, math.inf, ">= 1"),
    "eval.adapt_window": (1, math.inf, ">= 1"),
    "eval.adapt_factor": (1, math.inf, ">= 1"),
    "eval.adapt_tolerance_bits": (0, math.inf, ">= 0"),
    "eval.retention_every": (0, math.inf, ">= 0"),
    "eval.retention_size": (1, math.inf, ">= 1"),
    "eval.geometry_every": (0, math.inf, ">= 0"),
    "eval.geometry_size": (1, math.inf, ">= 1"),
    "logger.wandb.max_step_points": (1, math.inf, ">= 1"),
    "run.checkpoint_every": (0, math.inf, ">= 0"),
    "trainer.threads": (0, 1024, "an integer in [0, 1024]"),
    "trainer.devices": (1, 1024, "an integer in [1, 1024]"),
}
OPEN_BELOW = ("optim.lr", "optim.online_lr", "optim.grad_clip", "eval.steady_fraction")
OPEN_ABOVE = ("optim.beta1", "optim.beta2", "optim.momentum")
