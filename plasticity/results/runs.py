"""Finding and loading run directories and sweep indexes, for the report, the sweep figures and sweeps.

A run directory holds config.yaml and, once finished, summary.json (plasticity.run.rundir); a sweep's
--out folder also holds sweep_index.json, the status of every trial (plasticity.sweep.index).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from plasticity.files import read_jsonl
from plasticity.run.config import ConfigError

INDEX_NAME = "sweep_index.json"
# Config keys that do not change what a run measures (seed, paths, logging, hardware): runs whose configs
# agree on everything else are seeds of one setting.
NOT_A_SETTING = ("seed", "run", "git_commit", "progress", "plots", "logger", "trainer", "description")


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict | None
    problem: str | None = None  # why the summary is missing or unreadable

    def diverged_arms(self) -> dict[str, str]:
        """{arm: divergence message} from the summary (empty when none diverged, or no summary yet)."""
        arms = (self.summary or {}).get("arms") or {}
        return {arm: str(res["diverged"]) for arm, res in arms.items() if isinstance(res, dict) and res.get("diverged")}

    def rows(self) -> list[dict]:
        """The metrics rows (a truncated last line skipped)."""
        return read_jsonl(self.path / "metrics.jsonl")

    def final_kl_by_position(self, phase: int = 0) -> list | None:
        """The KL by position (None where unscored) of the last evaluation on eval phase `phase`, if any."""
        rows = [r for r in self.rows() if r.get("eval_phase") == phase and r.get("kl_bits_by_position")]
        return max(rows, key=lambda r: r["step"])["kl_bits_by_position"] if rows else None

    @property
    def experiment(self) -> str:
        return str(self.config.get("name") or (self.summary or {}).get("name") or self.path.name)


def _is_run(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "config.yaml").is_file()


def find(dirs: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(run directories, sweep index files) under the given folders, each once, in a stable order."""
    runs: dict[Path, None] = {}
    indexes: dict[Path, None] = {}
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ConfigError(f"report: {d}: no such directory")
        if _is_run(d):
            runs[d.resolve()] = None
            continue
        for root, subdirs, files in os.walk(d):
            root_path = Path(root)
            subdirs.sort()
            if INDEX_NAME in files:
                indexes[(root_path / INDEX_NAME).resolve()] = None
            if root_path != d and _is_run(root_path):
                runs[root_path.resolve()] = None
                subdirs[:] = []  # checkpoints/, plots/, wandb/ hold no runs
    return list(runs), list(indexes)


def load(path: Path) -> Run:
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        return Run(path, config, None, "no summary.json (running, interrupted or failed)")
    try:
        return Run(path, config, json.loads(summary_path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        return Run(path, config, None, f"unreadable summary.json ({type(e).__name__})")


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{dotted key: JSON value}; a list of dicts (the stream's phases) by index: `stream.phases.1.tasks`."""
    if isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        d = dict(enumerate(d))
    if isinstance(d, dict) and d:
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(d, sort_keys=True)}


def config_setting(config: dict, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The config minus what does not change the experiment (seed, paths, logging, hardware), flattened:
    runs with equal settings are seeds of one another."""
    return flatten({k: v for k, v in config.items() if k not in NOT_A_SETTING + drop})


def differing_keys(configs: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """The setting keys (`config_setting`) on which these runs' configs differ, leaving out the keys in
    `ignore` and everything inside them (`model` ignores `model.name`, `model.hidden`, ...): [] when the runs
    are seeds of one setting."""
    def kept(key: str) -> bool:
        return not any(key == i or key.startswith(f"{i}.") for i in ignore)

    settings = [config_setting(c) for c in configs]
    keys = {k for s in settings for k in s if kept(k)}
    return sorted(k for k in keys if len({s.get(k) for s in settings}) > 1)


def setting_labels(settings: list[dict[str, str]]) -> list[str]:
    """Each setting's label among its peers, `key=value, ...`: for every key that varies, the settings that
    differ from its baseline, a value several settings share while every other value of the key is held by
    one setting only (a one-at-a-time sweep around a baseline); otherwise every setting names its value (a
    grid, even an unfinished one where one value has a row more than the others, and a random search);
    "-" for a setting with nothing to tell. Where a block's `name` varies (`model.name`,
    `stream.phases.0.name`), the name stands for the block: `model=lstm`, and the block's other keys, which
    follow from the choice, are not listed."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({s.get(k, "unset") for s in settings}) > 1]
    named = {k.removesuffix(".name") for k in varying if k.endswith(".name")}
    labels: list[list[str]] = [[] for _ in settings]
    for key in varying:
        block = key.removesuffix(".name") if key.endswith(".name") else None
        if any(key.startswith(f"{b}.") and b != block for b in named):  # inside a block its name stands for
            continue
        values = [s.get(key, "unset") for s in settings]
        ranked = Counter(values).most_common()
        common, n = ranked[0]
        shared = n > 1 and all(count == 1 for _, count in ranked[1:])
        for parts, value in zip(labels, values):
            if not shared or value != common:
                parts.append(f"{block or key}={short_value(value)}")
    return [", ".join(parts) or "-" for parts in labels]


def short_value(text: str) -> str:
    """A flattened JSON value as a label shows it: strings without their quotes, numbers as Python prints them."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    return str(value) if isinstance(value, (str, int, float)) else text


def failed_trials(indexes: list[Path]) -> list[dict]:
    out = []
    for path in indexes:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for t in data.get("trials") or []:
            if isinstance(t, dict) and t.get("status") == "failed":
                out.append({**t, "index": str(path)})
    return out
