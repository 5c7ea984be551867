"""Slurm resources of a sweep's trials: the sweep file's `slurm:` block (or the command-line flags) as
submitit parameters, checked when the sweep file is loaded."""

from __future__ import annotations

from typing import Any

from plasticity.run.config import ConfigError
from streams.checks import did_you_mean

RESOURCES = {  # the sweep file's `slurm:` keys -> submitit AutoExecutor parameters
    "partition": "slurm_partition",
    "time": "timeout_min",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "gpus_per_node": "gpus_per_node",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "array_parallelism": "slurm_array_parallelism",
    "setup": "slurm_setup",
    "additional_parameters": "slurm_additional_parameters",
}


def minutes(value: Any) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) as whole minutes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, int(round(value)))
    text = str(value).strip()
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if days:
            parts += [0] * (3 - len(parts))
            h, m, s = parts
            total = int(days) * 1440 + h * 60 + m + s / 60
        elif len(parts) == 3:
            total = parts[0] * 60 + parts[1] + parts[2] / 60
        elif len(parts) == 2:
            total = parts[0] + parts[1] / 60
        else:
            total = parts[0]
    except ValueError:
        raise ConfigError(f"slurm.time={value!r}: use minutes or HH:MM:SS (or D-HH:MM:SS)") from None
    if total <= 0:
        raise ConfigError(f"slurm.time={value!r}: must be positive")
    return max(1, int(round(total)))


def submitit_parameters(resources: dict, workers: int, name: str) -> dict:
    params: dict[str, Any] = {"name": name, "slurm_array_parallelism": workers, "timeout_min": 60}
    for key, value in resources.items():
        if key not in RESOURCES:
            raise ConfigError(f"slurm.{key}: unknown resource; allowed: {', '.join(RESOURCES)}."
                              f"{did_you_mean(key, RESOURCES)}")
        if value is None:
            continue
        if key == "time":
            value = minutes(value)
        elif key in ("cpus_per_task", "mem_gb", "gpus_per_node", "array_parallelism"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"slurm.{key}={value!r}: must be a non-negative integer")
        params[RESOURCES[key]] = value
    return params
