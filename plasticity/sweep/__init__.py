"""Sweeps: a wandb-format sweep file run locally (N worker processes) or on Slurm (submitit job arrays),
or emitted for `wandb sweep` + `wandb agent`. See docs/sweeps.md.

    spec.py       the sweep file: parsing, checks, grid/random expansion, values as override text
    plan.py       trials resolved and validated before any work, named by a hash of their config
    executors.py  where a trial runs: local worker processes or submitit (Slurm)
    trial.py      one trial, its output in its log; the local worker loop
    index.py      <out>/sweep_index.json
    runner.py     `plasticity sweep`: skip finished trials, run the rest, keep the index current
    emit.py       `--emit-wandb DIR`

The names below are imported lazily: submitit unpickles `plasticity.sweep.trial.run_trial` in every
job, and that import must stay light (no torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_sweep": "spec", "SweepSpec": "spec", "format_override": "spec",
    "plan": "plan", "run_name": "plan", "config_hash": "plan", "Trial": "plan",
    "run_sweep": "runner", "emit_wandb": "emit", "read_index": "index", "INDEX_NAME": "index",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"plasticity.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'plasticity.sweep' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
