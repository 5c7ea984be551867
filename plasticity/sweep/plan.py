"""A sweep's trials, resolved and validated before anything runs, each named by a hash of its config.

A trial's name is `<experiment>-<first 10 hex of sha256 of the canonical JSON of the resolved config>`,
leaving out the keys that say where and how a run executes rather than what it computes (`run.*`,
`progress`, `plots`, `logger.*`, `trainer.threads`, `trainer.devices`, `trainer.strategy`): the same config
always gets the same name, on any machine and from any executor, so a re-run finds its finished trials by name.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from plasticity.run.build import build
from plasticity.run.config import ConfigError, load_config, to_container
from plasticity.sweep.spec import SweepSpec, format_override

# trainer.devices/strategy: a DDP run computes the same experiment (within float rounding), like threads
EXECUTION_KEYS = ("run", "progress", "plots", "logger", "trainer.threads", "trainer.devices", "trainer.strategy",
                  "git_commit")


def _drop(container: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = container
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def identity(container: dict) -> dict:
    """The part of a resolved config that determines the results."""
    container = json.loads(json.dumps(container, default=str))
    for key in EXECUTION_KEYS:
        _drop(container, key)
    return container


def config_hash(container: dict) -> str:
    canonical = json.dumps(identity(container), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_name(cfg: DictConfig | dict) -> str:
    container = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    return f"{container.get('name', 'run')}-{config_hash(container)[:10]}"


@dataclass
class Trial:
    name: str
    params: dict[str, Any]  # the sweep's parameter values
    overrides: list[str]  # the command's fixed overrides + the parameters: what defines the config
    run_dir: Path
    extra: list[str] = field(default_factory=list)  # execution-only overrides (run.dir, threads, ...)

    def args(self, experiment: str) -> list[str]:
        """The `plasticity run` arguments (after `run`)."""
        return [experiment, *self.overrides, *self.extra]

    def command(self, experiment: str) -> str:
        return shlex.join(["plasticity", "run", *self.args(experiment)])


def _check(experiment: str, overrides: list[str]) -> DictConfig:
    cfg = load_config(experiment, overrides)
    build(cfg)
    return cfg


def _explain(spec: SweepSpec, params: dict[str, Any], error: ConfigError) -> ConfigError:
    """Name the parameter that makes a trial's config invalid (one line)."""
    where = f"sweep {spec.path}"
    try:
        _check(spec.experiment, spec.base_overrides)
    except ConfigError as e:
        return ConfigError(f"{where}: experiment '{spec.experiment}': {e}")
    for key, value in params.items():
        try:
            _check(spec.experiment, [*spec.base_overrides, format_override(key, value)])
        except ConfigError as e:
            return ConfigError(f"{where}: parameter '{key}' (value {value!r}): {e}")
    return ConfigError(f"{where}: trial {params}: {error}")


def plan(spec: SweepSpec, out: Path, seed: int = 0, threads: int = 1) -> tuple[list[Trial], int]:
    """Every trial of the sweep, validated; returns (trials, number of duplicate configs merged)."""
    trials: dict[str, Trial] = {}
    duplicates = 0
    for params in spec.trials(seed):
        try:
            overrides = [*spec.base_overrides, *(format_override(k, v) for k, v in params.items())]
            cfg = _check(spec.experiment, overrides)
        except ConfigError as e:
            raise _explain(spec, params, e) from None
        name = run_name(cfg)
        if name in trials:
            duplicates += 1
            continue
        trial = Trial(name, dict(params), overrides, (out / name).resolve())
        # the sweep runs trials side by side: each runs its own units one after another
        trial.extra = [f"run.dir={trial.run_dir}", f"run.name={name}", "progress=false", f"trainer.threads={threads}",
                       "trainer.workers=1"]
        tags = OmegaConf.select(cfg, "logger.wandb.tags")
        if tags is not None:  # the wandb runs of a sweep are findable by a tag (the sink groups by run)
            trial.extra.append(format_override("logger.wandb.tags", [*tags, f"sweep:{spec.name or spec.stem}"]))
        trials[name] = trial
    return list(trials.values()), duplicates


def check_keys(spec: SweepSpec) -> None:
    """For sweeps whose trials are drawn by wandb (bayes): each parameter alone, at representative values."""
    try:
        _check(spec.experiment, spec.base_overrides)
    except ConfigError as e:
        raise ConfigError(f"sweep {spec.path}: experiment '{spec.experiment}': {e}") from None
    for p in spec.params:
        for value in p.representatives():
            try:
                _check(spec.experiment, [*spec.base_overrides, format_override(p.key, value)])
            except ConfigError as e:
                raise ConfigError(f"sweep {spec.path}: parameter '{p.key}' (value {value!r}): {e}") from None
