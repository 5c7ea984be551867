"""A sweep file in the wandb sweep format, parsed and expanded into trials (lists of overrides).

The same file works with `plasticity sweep` and with `wandb sweep` + `wandb agent`, so it holds only
keys of wandb's sweep schema (whose top level has `additionalProperties: false`): the base experiment
is named in `command` (`[plasticity, run, EXPERIMENT, key=value..., ${args_no_hyphens}]`), and fixed
`key=value` tokens there apply to every trial. Two plasticity-only top-level keys are also read —
`experiment:` (instead of `command`) and `slurm:` (resources) — and stripped by `--emit-wandb`.
Parameter keys are dotted override keys (`model.n_layers`); nested `parameters:` blocks are refused,
since the wandb agent would pass them as one dict (`model={...}`), which replaces the whole group.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plasticity.run.config import ConfigError, read_yaml
from plasticity.sweep.resources import submitit_parameters
from streams.checks import did_you_mean, is_number

WANDB_KEYS = (
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
    "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate", "parameters",
)
PLASTICITY_KEYS = ("experiment", "slurm")
ARGS_MACRO = "${args_no_hyphens}"
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # wandb's rule for parameter names

# distribution -> the keys it takes (beyond `distribution`); the wandb sweep schema's parameter kinds.
DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "categorical_w_probabilities": ("values", "probabilities"),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform": ("min", "max"),
    "inv_log_uniform_values": ("min", "max"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
    "beta": ("a", "b"),
    "q_beta": ("a", "b", "q"),
}
DEFAULTS = {"mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0, "q": 1.0}
REQUIRED = {"min", "max", "values", "value", "probabilities"}
GRID_OK = ("constant", "categorical", "categorical_w_probabilities", "int_uniform", "q_uniform")


@dataclass
class Param:
    key: str
    distribution: str
    spec: dict

    @property
    def values(self) -> list:
        """Every value a grid takes."""
        d, s = self.distribution, self.spec
        if d == "constant":
            return [s["value"]]
        if d.startswith("categorical"):
            return list(s["values"])
        if d == "int_uniform":
            return list(range(s["min"], s["max"] + 1))
        if d == "q_uniform":
            n = int(math.floor((s["max"] - s["min"]) / s["q"] + 1e-9))
            return [_quantize(s["min"] + i * s["q"], s["q"], s) for i in range(n + 1)]
        raise ConfigError(f"parameter '{self.key}': distribution {d} has no grid of values")

    def representatives(self) -> list:
        """Values to validate the key with when the trials are not known in advance (wandb's bayes)."""
        d, s = self.distribution, self.spec
        if d in GRID_OK:
            return self.values
        if d in ("log_uniform", "q_log_uniform"):
            return [math.exp(s["min"]), math.exp(s["max"])]
        if d == "inv_log_uniform":
            return [math.exp(-s["max"]), math.exp(-s["min"])]
        if "min" in s:
            return [s["min"], s["max"]]
        if d.endswith("log_normal"):
            return [math.exp(s["mu"])]
        return [s["mu"]] if "mu" in s else [0.5]

    def sample(self, rng: random.Random) -> Any:
        d, s = self.distribution, self.spec
        q = s.get("q", 1.0)
        if d == "constant":
            return s["value"]
        if d == "categorical":
            return rng.choice(s["values"])
        if d == "categorical_w_probabilities":
            return rng.choices(s["values"], weights=s["probabilities"])[0]
        if d == "int_uniform":
            return rng.randint(s["min"], s["max"])
        if d in ("uniform", "q_uniform"):
            x = rng.uniform(s["min"], s["max"])
        elif d in ("log_uniform", "q_log_uniform"):  # min/max are natural-log exponents
            x = math.exp(rng.uniform(s["min"], s["max"]))
        elif d in ("log_uniform_values", "q_log_uniform_values"):
            x = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
        elif d == "inv_log_uniform":
            x = math.exp(-rng.uniform(s["min"], s["max"]))
        elif d == "inv_log_uniform_values":
            x = 1.0 / math.exp(rng.uniform(math.log(1.0 / s["max"]), math.log(1.0 / s["min"])))
        elif d in ("normal", "q_normal"):
            x = rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0))
        elif d in ("log_normal", "q_log_normal"):
            x = math.exp(rng.gauss(s.get("mu", 0.0), s.get("sigma", 1.0)))
        else:  # beta, q_beta
            x = rng.betavariate(s.get("a", 1.0), s.get("b", 1.0))
        return _quantize(x, q, s) if d.startswith("q_") else x


def _quantize(x: float, q: float, spec: dict) -> float | int:
    v = round(x / q) * q
    ints = all(isinstance(spec.get(k, 1), int) and not isinstance(spec.get(k, 1), bool) for k in ("q", "min", "max"))
    return int(round(v)) if ints else float(f"{v:.12g}")  # 0.3, not 0.30000000000000004


@dataclass
class SweepSpec:
    path: Path
    experiment: str
    method: str
    params: list[Param]
    base_overrides: list[str] = field(default_factory=list)  # fixed key=value tokens of `command`
    metric: dict | None = None
    run_cap: int | None = None
    name: str | None = None
    slurm: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.path.stem

    def trials(self, seed: int = 0) -> list[dict[str, Any]]:
        """Parameter assignments (key -> value), in a deterministic order: the grid in the file's order,
        or `run_cap` draws from a RNG seeded with `seed`."""
        if self.method == "grid":
            combos = itertools.product(*(p.values for p in self.params))
            out = [dict(zip((p.key for p in self.params), combo)) for combo in combos]
            return out[: self.run_cap] if self.run_cap else out
        if self.method == "random":
            rng = random.Random(seed)
            return [{p.key: p.sample(rng) for p in self.params} for _ in range(self.run_cap or 0)]
        raise ConfigError(
            f"sweep {self.path}: method '{self.method}' needs the wandb controller; run it with "
            f"--emit-wandb DIR and `wandb agent` (here: grid or random)"
        )


def parse_param(where: str, key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ConfigError(f"{where}: parameter name {key!r} must be a dotted key like model.n_layers")
    at = f"{where}: parameter '{key}'"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a mapping such as {{values: [...]}} or {{value: x}}, got {spec!r}")
    if "parameters" in spec:
        raise ConfigError(f"{at}: nested `parameters` are not supported; use dotted keys ({key}.NAME)")
    spec = dict(spec)
    dist = spec.pop("distribution", None)
    if dist is None:  # what wandb infers from the keys given
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical_w_probabilities" if "probabilities" in spec else "categorical"
        elif "min" in spec and "max" in spec:
            dist = "int_uniform" if all(isinstance(spec[k], int) for k in ("min", "max")) else "uniform"
        else:
            raise ConfigError(f"{at}: give `values: [...]`, `value: x` or a distribution with min/max")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{at}: unknown distribution '{dist}'; allowed: {', '.join(DISTRIBUTIONS)}."
                          f"{did_you_mean(str(dist), DISTRIBUTIONS)}")
    allowed = DISTRIBUTIONS[dist]
    for k in spec:
        if k not in allowed:
            raise ConfigError(f"{at}: key '{k}' does not belong to distribution {dist}; allowed: "
                              f"{', '.join(allowed)}.{did_you_mean(k, allowed)}")
    for k in allowed:
        if k not in spec:
            if k in REQUIRED:
                raise ConfigError(f"{at}: distribution {dist} needs '{k}'")
            spec[k] = DEFAULTS[k]
    if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
        raise ConfigError(f"{at}: values must be a non-empty list, got {spec['values']!r}")
    if "probabilities" in spec:
        probs = spec["probabilities"]
        if (not isinstance(probs, list) or len(probs) != len(spec["values"])
                or not all(is_number(p) and p >= 0 for p in probs) or abs(sum(probs) - 1) > 1e-6):
            raise ConfigError(f"{at}: probabilities must be one non-negative number per value, summing to 1")
    for k in ("min", "max", "mu", "sigma", "a", "b", "q"):
        if k in spec and not is_number(spec[k]):
            raise ConfigError(f"{at}: {k} must be a number, got {spec[k]!r}")
    if dist == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise ConfigError(f"{at}: int_uniform needs integer min and max")
    if "min" in spec and spec["min"] > spec["max"]:
        raise ConfigError(f"{at}: min ({spec['min']}) is above max ({spec['max']})")
    if dist.endswith("_values") and dist != "categorical_w_probabilities" and spec["min"] <= 0:
        raise ConfigError(f"{at}: {dist} needs min > 0, got {spec['min']}")
    if spec.get("q", 1.0) <= 0 or spec.get("sigma", 1.0) < 0:
        raise ConfigError(f"{at}: q must be > 0 and sigma >= 0")
    return Param(key, dist, spec)


def parse_command(where: str, command: Any) -> tuple[str | None, list[str]]:
    """The experiment and the fixed overrides of `[..., run, EXPERIMENT, key=value..., ${args_no_hyphens}]`."""
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise ConfigError(f"{where}: command must be a list such as [plasticity, run, smoke, {ARGS_MACRO}]")
    command = [str(c) for c in command]
    if "run" not in command:
        raise ConfigError(f"{where}: command must call `plasticity run EXPERIMENT {ARGS_MACRO}`, got {command}")
    if ARGS_MACRO not in command:
        raise ConfigError(f"{where}: command must pass the parameters as {ARGS_MACRO} (our overrides are "
                          f"key=value), got {command}")
    experiment, overrides = None, []
    for token in command[command.index("run") + 1:]:
        if token.startswith("${"):
            continue
        if "=" in token:
            overrides.append(token)
        elif token.startswith("-"):
            raise ConfigError(f"{where}: command: flag {token!r} is not supported after `run`")
        elif experiment is None:
            experiment = token
        else:
            raise ConfigError(f"{where}: command names two experiments ({experiment!r}, {token!r})")
    return experiment, overrides


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file; every mistake is a ConfigError of one line."""
    path = Path(path)
    where = f"sweep {path}"
    raw = read_yaml(path, "sweep")
    for key in raw:
        if key not in WANDB_KEYS + PLASTICITY_KEYS:
            allowed = WANDB_KEYS + PLASTICITY_KEYS
            raise ConfigError(f"{where}: unknown top-level key '{key}'; allowed: {', '.join(allowed)}."
                              f"{did_you_mean(str(key), allowed)}")
    method = raw.get("method")
    if method not in ("grid", "random", "bayes", "custom"):
        raise ConfigError(f"{where}: method must be one of grid, random, bayes, got {method!r}")
    experiment, base = (None, [])
    if "command" in raw:
        experiment, base = parse_command(where, raw["command"])
    if raw.get("experiment") is not None:
        if experiment is not None and str(raw["experiment"]) != experiment:
            raise ConfigError(f"{where}: `experiment: {raw['experiment']}` disagrees with command ({experiment})")
        experiment = str(raw["experiment"])
    if experiment is None:
        raise ConfigError(f"{where}: name the base experiment: command: [plasticity, run, EXPERIMENT, {ARGS_MACRO}]")
    params_raw = raw.get("parameters")
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping of dotted keys to {{values: [...]}}")
    params = [parse_param(where, k, v) for k, v in params_raw.items()]
    if method == "grid":
        for p in params:
            if p.distribution not in GRID_OK:
                raise ConfigError(f"{where}: parameter '{p.key}': grid search needs values (or int_uniform/"
                                  f"q_uniform); distribution {p.distribution} needs method: random")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise ConfigError(f"{where}: run_cap must be a positive integer, got {run_cap!r}")
    if method == "random" and run_cap is None:
        raise ConfigError(f"{where}: random search needs run_cap (the number of trials)")
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            raise ConfigError(f"{where}: metric must be {{name: NAME, goal: minimize|maximize}}")
        if metric.get("goal", "minimize") not in ("minimize", "maximize"):
            raise ConfigError(f"{where}: metric.goal must be minimize or maximize, got {metric.get('goal')!r}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{where}: slurm must be a mapping (partition, time, cpus_per_task, ...)")
    try:
        submitit_parameters(slurm, 1, "check")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return SweepSpec(path, experiment, method, params, base, metric, run_cap, raw.get("name"), dict(slurm), raw)


# ---------------------------------------------------------------------------------------------------
# Values as override text


def _format_scalar(v: Any, nested: bool) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(v, str):
        plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*" if nested else r"[^\s'\"\[\]{},#&*!|>%@`]+", v)
        if plain and yaml.safe_load(v) == v:
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ConfigError(f"cannot pass a value of type {type(v).__name__} as an override: {v!r}")


def format_value(v: Any, nested: bool = False) -> str:
    """Text that `plasticity run`'s override parser (YAML) reads back as exactly `v`."""
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x, True) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_format_scalar(str(k), True)}: {format_value(x, True)}" for k, x in v.items()) + "}"
    return _format_scalar(v, nested)


def format_override(key: str, value: Any) -> str:
    text = format_value(value)
    back = yaml.safe_load(text) if text else ""
    if back != value and not (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"parameter '{key}': value {value!r} does not survive the override syntax ({text})")
    return f"{key}={text}"
