"""Loading an experiment config: YAML groups under configs/, CLI overrides, the schema's checks.

Resolution order: the experiment YAML, then group selections from the command line (`model=mlp`), then
groups named by string are replaced by their YAML (`configs/<group>/<name>.yaml`), then dotted overrides
(`model.n_layers=4`), then the schema's choices and ranges (plasticity.run.schema) and the model's own
parameters. Every mistake raises ConfigError with one line naming the key and what is allowed;
`plasticity.run.build` then builds the stream, the model and the strategies once, so nothing fails after
work has begun.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import BooleanNode

from plasticity import models
from plasticity.eval.evaluator import eval_selection
from plasticity.run.schema import (
    CHOICES,
    MAX_SEED,
    OPEN_ABOVE,
    OPEN_BELOW,
    OPTIONAL_CHOICES,
    RANGES,
    ExperimentConfig,
)
from streams.checks import did_you_mean

CONFIG_ROOT = Path(os.environ.get("PLASTICITY_CONFIGS", Path(__file__).resolve().parents[2] / "configs"))
GROUPS = ("stream", "model", "experiment", "sweep")
DEFAULT_EXPERIMENT = "default"


class ConfigError(ValueError):
    """A configuration mistake, reported as one line before any work starts."""


# ---------------------------------------------------------------------------------------------------
# Group files


def group_options(group: str) -> list[str]:
    folder = CONFIG_ROOT / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


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
            f"{group}={name}: unknown {group}; choose one of: {', '.join(options)}.{did_you_mean(name, options)}"
        )
    return read_yaml(CONFIG_ROOT / group / f"{name}.yaml", f"{group}={name}")


def _resolve_groups(raw: dict) -> dict:
    raw = dict(raw)
    for group in ("stream", "model"):
        if isinstance(raw.get(group), str):
            raw[group] = load_group(group, raw[group])
        elif group in raw and not isinstance(raw[group], dict):
            raise ConfigError(f"{group}={raw[group]!r}: must be the name of a {group} under configs/{group}, "
                              "a YAML file, or a mapping of its keys")
    arms = raw.get("arms")
    if isinstance(arms, str):
        arms = [a.strip() for a in arms.strip("[]").split(",") if a.strip()]
    if isinstance(arms, list):
        resolved = {}
        for arm in arms:
            if not isinstance(arm, str):
                raise ConfigError(f"arms: a list of arms must hold strategy names, got {arm!r}")
            resolved[arm] = {"strategy": arm}  # a registered name or an import path: the registry checks it
        raw["arms"] = resolved
    elif isinstance(arms, dict):
        raw["arms"] = {k: {"strategy": k} if v is None else v for k, v in arms.items()}
    return raw


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
    check(cfg)
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
                element = node._metadata.element_type  # a whole phase given as a mapping: typed as one
                if isinstance(value, dict) and dataclasses.is_dataclass(element):
                    value = OmegaConf.merge(OmegaConf.structured(element), value)
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
    return f"{path}: unknown key '{key}'; allowed: {', '.join(map(str, allowed))}.{did_you_mean(key, allowed)}"


# ---------------------------------------------------------------------------------------------------
# Checks


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def check(cfg: DictConfig) -> None:
    """The schema's choices and ranges, and the model's own parameters (spelled out in `cfg.model`)."""
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
    workers = cfg.trainer.workers
    if workers != "auto" and not (_is_int(workers) and 1 <= workers <= 1024):
        raise ConfigError(f"trainer.workers={workers!r}: must be auto or an integer in [1, 1024]")
    seed_list(cfg)  # checks `seeds`
    try:
        eval_selection(cfg.eval.phases, 1)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        cfg.model = models.normalize(to_container(cfg.model))
    except ValueError as e:
        msg = (str(e).splitlines() or ["invalid model"])[0]
        raise ConfigError(msg if msg.startswith("model") else f"model: {msg}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seed_list(cfg: DictConfig) -> list[int] | None:
    """The seeds of `seeds` (a list, or a count n: 0..n-1), or None for a single run at `seed`."""
    seeds = cfg.seeds
    if seeds is None:
        return None
    values = list(range(seeds)) if _is_int(seeds) else list(seeds) if isinstance(seeds, (list, ListConfig)) else None
    if (not values or not all(_is_int(s) and 0 <= s <= MAX_SEED for s in values) or len(set(values)) != len(values)
            or len(values) > 1000):
        raise ConfigError(f"seeds={OmegaConf.to_container(seeds) if isinstance(seeds, ListConfig) else seeds!r}: "
                          f"must be a count in [1, 1000] or a list of distinct seeds in [0, {MAX_SEED}]")
    return values


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_container(raw: dict) -> DictConfig:
    """A resolved config given as plain data (a run's config.yaml, a config sent to another process)."""
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), {k: v for k, v in raw.items() if k != "git_commit"})
    check(cfg)
    return cfg


def load_run_config(run_dir: Path | str) -> DictConfig:
    """The resolved config a run directory was started with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    try:
        return from_container(yaml.safe_load(path.read_text()) or {})
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a hand-edited or foreign config.yaml
        raise ConfigError(f"--resume {run_dir}: config.yaml does not match the schema: {e}".splitlines()[0]) from None

