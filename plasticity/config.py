"""Experiment configuration: a structured OmegaConf schema, YAML groups under configs/, CLI overrides.

Resolution order: the experiment YAML, then group selections from the command line (`model=mlp`), then
groups named by string are replaced by their YAML (`configs/<group>/<name>.yaml`), then dotted overrides
(`model.n_layers=4`). Every mistake raises ConfigError with one line naming the key and what is allowed;
`validate` also builds the stream, the model and the strategies so nothing fails after work has begun.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import BooleanNode

from plasticity.models import ModelConfig
from streams.stream import StreamSpec

CONFIG_ROOT = Path(os.environ.get("PLASTICITY_CONFIGS", Path(__file__).resolve().parents[1] / "configs"))
GROUPS = ("stream", "model", "experiment", "sweep", "strategy")
DEFAULT_EXPERIMENT = "default"


class ConfigError(ValueError):
    """A configuration mistake, reported as one line before any work starts."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant  (pretraining and single-phase runs)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    online_lr: float = 3e-4  # constant learning rate of online arms after pretraining


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | cuda
    # torch CPU threads; 0 keeps torch's default (all cores). One thread per process is the robust default:
    # on a shared 2-core machine two threads collapse when the other core is busy (docs/benchmarks.md).
    threads: int = 1
    deterministic: bool = True
    devices: int = 1  # processes (CPU) or GPUs; > 1 runs Lightning DDP (plasticity.distributed)
    strategy: str = "auto"  # auto (DDP when devices > 1) | ddp


@dataclass
class EvalConfig:
    every: int = 100  # evaluate every N training steps (and at every phase end)
    size: int | None = None  # overrides stream.eval_size
    batch_size: int = 256
    probes: bool = True
    tau: float = 0.1  # ReDo's dormancy threshold
    threshold_bits: float = 0.05  # for steps_to_threshold


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


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ExperimentConfig:
    name: str = "custom"
    description: str = ""
    seed: int = 0
    loss: str = "sampled"  # sampled | posterior
    stream: StreamSpec = field(default_factory=StreamSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    # arm name -> {strategy: NAME or "pkg.module:Class", ...strategy parameters}. Phase 0 is pretraining,
    # shared by every arm; the arms fork from the pretrained weights for the later phases.
    arms: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # also train a fresh learner on each phase alone (the plasticity yardstick)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    plots: bool = True  # PNGs in <run>/plots at the end of the run
    progress: bool = True


CHOICES = {
    "loss": ("sampled", "posterior"),
    "optim.schedule": ("cosine", "constant"),
    "trainer.accelerator": ("auto", "cpu", "cuda"),
    "trainer.strategy": ("auto", "ddp"),
    "model.mlp_input": ("onehot", "embed"),
}
OPTIONAL_CHOICES = {"logger.wandb.mode": ("online", "offline", "disabled")}
MAX_SEED = 2**31 - 1  # arms and fresh learners derive their seeds from it; Lightning takes uint32
MAX_LAYERS, MAX_WIDTH = 1024, 2**20  # sanity bounds: validation builds the model (on the meta device)
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
    "eval.every": (1, math.inf, "> 0"),
    "eval.batch_size": (1, math.inf, "> 0"),
    "eval.tau": (0, math.inf, ">= 0"),
    "eval.threshold_bits": (0, math.inf, ">= 0"),
    "run.checkpoint_every": (0, math.inf, ">= 0"),
    "trainer.threads": (0, 1024, "an integer in [0, 1024]"),
    "trainer.devices": (1, 1024, "an integer in [1, 1024]"),
    "model.n_layers": (1, MAX_LAYERS, f"in [1, {MAX_LAYERS}]"),
    "model.depth": (1, MAX_LAYERS, f"in [1, {MAX_LAYERS}]"),
    "model.d_model": (1, MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
    "model.d_ff": (1, MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
    "model.hidden": (1, MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
    "model.n_heads": (1, MAX_WIDTH, f"in [1, {MAX_WIDTH}]"),
    "model.dropout": (0, 1, "in [0, 1)"),
}
OPEN_BELOW = ("optim.lr", "optim.online_lr", "optim.grad_clip")
OPEN_ABOVE = ("optim.beta1", "optim.beta2", "model.dropout")


# ---------------------------------------------------------------------------------------------------
# Group files


def group_options(group: str) -> list[str]:
    folder = CONFIG_ROOT / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what}: file not found: {path}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "malformed YAML"
        raise ConfigError(f"{what}: malformed YAML in {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_group(group: str, name: str) -> dict:
    """The YAML of `configs/<group>/<name>.yaml`, or of a file path."""
    if name.endswith((".yaml", ".yml")):
        return read_yaml(Path(name), group)
    options = group_options(group)
    if name not in options:
        raise ConfigError(
            f"{group}={name}: unknown {group}; choose one of: {', '.join(options)}.{_did_you_mean(name, options)}"
        )
    return read_yaml(CONFIG_ROOT / group / f"{name}.yaml", f"{group}={name}")


def _resolve_groups(raw: dict) -> dict:
    raw = dict(raw)
    for group in ("stream", "model"):
        if isinstance(raw.get(group), str):
            raw[group] = load_group(group, raw[group])
    arms = raw.get("arms")
    if isinstance(arms, str):
        arms = [a.strip() for a in arms.strip("[]").split(",") if a.strip()]
    if isinstance(arms, list):
        resolved = {}
        for arm in arms:
            if not isinstance(arm, str):
                raise ConfigError(f"arms: a list of arms must hold strategy names, got {arm!r}")
            resolved[arm] = _strategy_entry(arm)
        raw["arms"] = resolved
    elif isinstance(arms, dict):
        raw["arms"] = {k: _strategy_entry(k) if v is None else v for k, v in arms.items()}
    return raw


def _strategy_entry(name: str) -> dict:
    if name in group_options("strategy"):
        entry = load_group("strategy", name)
        entry.setdefault("strategy", name)
        return entry
    return {"strategy": name}  # a registered name or an import path; checked by the strategy registry


# ---------------------------------------------------------------------------------------------------
# Overrides


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def split_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value (e.g. model.n_layers=4)")
        key, value = item.split("=", 1)
        if not key:
            raise ConfigError(f"override '{item}': empty key")
        pairs.append((key.strip(), _parse_value(value)))
    return pairs


def _format_error(e: OmegaConfBaseException, prefix: str = "") -> str:
    key = getattr(e, "full_key", "") or ""
    msg = str(getattr(e, "msg", "") or e).splitlines()[0]
    key = f"{prefix}.{key}" if prefix and key else (key or prefix)
    return f"{key}: {msg}" if key else msg


def load_config(experiment: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Resolve an experiment (name under configs/experiment, a YAML path, or None for the default)."""
    overrides = overrides or []
    name = experiment or DEFAULT_EXPERIMENT
    raw = load_group("experiment", name)
    raw.setdefault("name", Path(name).stem)
    pairs = split_overrides(overrides)
    for key, value in pairs:  # group selections replace the whole group before anything else
        if key in ("stream", "model", "arms"):
            raw[key] = value
        elif key == "strategy":  # shorthand for a single arm
            raw["arms"] = [value] if isinstance(value, str) else value
    raw = _resolve_groups(raw)
    schema = OmegaConf.structured(ExperimentConfig)
    _strict_bools(raw, schema)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        raise ConfigError(_format_error(e)) from None
    for key, value in pairs:
        if key in ("stream", "model", "arms", "strategy"):
            continue
        if key.startswith("strategy."):  # strategy.X=V applies to the single arm
            if len(cfg.arms) != 1:
                raise ConfigError(f"{key}: 'strategy.*' needs exactly one arm; use arms.<arm>.{key[9:]}")
            key = f"arms.{next(iter(cfg.arms))}.{key[9:]}"
        _apply_override(cfg, key, value)
    try:  # interpolations (${seed}) resolve now, so a dangling one is a config error and not a crash later
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_format_error(e)) from None
    return cfg


def _strict_bools(raw: Any, node: Any, path: str = "") -> None:
    """OmegaConf reads any integer as a bool (`fresh=-1` is true); a true/false key takes true or false."""
    if isinstance(node, ListConfig) and isinstance(raw, list):
        schema = node._metadata.element_type
        if dataclasses.is_dataclass(schema):
            for i, item in enumerate(raw):
                _strict_bools(item, OmegaConf.structured(schema), f"{path}{i}.")
        return
    if not isinstance(node, DictConfig) or _free_form(node) or not isinstance(raw, dict):
        return
    for key, value in raw.items():
        if not isinstance(key, str) or key not in node:
            continue  # unknown keys are the merge's to report
        child = node._get_node(key)
        if isinstance(child, BooleanNode) and not isinstance(value, bool) and value is not None:
            raise ConfigError(f"{path}{key}={value!r}: must be true or false")
        _strict_bools(value, child, f"{path}{key}.")


def _free_form(node: Any) -> bool:
    """A plain mapping (family params, arm entries): new keys are allowed, their owner validates them."""
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _apply_override(cfg: DictConfig, key: str, value: Any) -> None:
    parts = key.replace("[", ".").replace("]", "").split(".")
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]), creating=_free_form(node))
    last = parts[-1]
    if isinstance(node, DictConfig) and not _free_form(node) and last not in node:
        raise ConfigError(_unknown_key(key, last, list(node.keys())))
    if isinstance(node, DictConfig) and last in node:
        _strict_bools({last: value}, node, key[: len(key) - len(last)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # OmegaConf's int -> float notice
            if isinstance(node, DictConfig) and isinstance(value, (dict, list)):
                node.merge_with({last: value})  # merging types lists of dicts as lists of dataclasses
            elif isinstance(node, DictConfig):
                node[last] = value
            else:
                node[int(last)] = value
    except (OmegaConfBaseException, ValueError, IndexError) as e:
        msg = _format_error(e) if isinstance(e, OmegaConfBaseException) else str(e)
        raise ConfigError(f"{key}={value!r}: {msg.split(': ', 1)[-1]}") from None


def _child(node: Any, part: str, path: str, creating: bool) -> Any:
    if isinstance(node, DictConfig):
        if part not in node:
            if creating:
                node[part] = {}
            else:
                raise ConfigError(_unknown_key(path, part, list(node.keys())))
        return node[part]
    try:
        return node[int(part)]
    except (ValueError, IndexError):
        raise ConfigError(f"{path}: no such list index (the list has {len(node)} items)") from None


def _unknown_key(path: str, key: str, allowed: list[str]) -> str:
    return f"{path}: unknown key '{key}'; allowed: {', '.join(map(str, allowed))}.{_did_you_mean(key, allowed)}"


# ---------------------------------------------------------------------------------------------------
# Semantic validation


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def validate(cfg: DictConfig) -> None:
    """Range checks, plus building the stream, the model and the strategies (cheap) so that every
    mistake surfaces before training or file writes."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r}: must be one of {', '.join(allowed)}")
    for key, allowed in OPTIONAL_CHOICES.items():
        if _get(cfg, key) is not None and _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r}: must be one of {', '.join(allowed)} (or unset)")
    for key, (low, high, allowed) in RANGES.items():
        v = _get(cfg, key)
        ok = math.isfinite(v) and low <= v <= high
        ok = ok and (key not in OPEN_BELOW or v > low) and (key not in OPEN_ABOVE or v < high)
        if not ok:
            raise ConfigError(f"{key}={v!r}: must be {allowed}")
    if cfg.eval.size is not None and cfg.eval.size < 1:
        raise ConfigError(f"eval.size={cfg.eval.size}: must be >= 1")
    from plasticity.experiment import build_parts  # late import: the experiment imports this module

    try:
        build_parts(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, ArithmeticError, IndexError) as e:
        raise ConfigError((str(e).splitlines() or [type(e).__name__])[0]) from None


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
