"""The run directory, the source of truth: config.yaml, metrics.jsonl, summary.json, checkpoints/.

Whole files are written atomically (temp file in the same folder, fsync, rename); metrics.jsonl is
append-only and flushed per evaluation; a truncated last line (power loss) is skipped when read.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/Inf become None (strict JSON has no NaN), tensors become numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a truncated or corrupt line (a crash mid-write) is skipped."""
    rows = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class RunDir:
    """`read_only`: the run directory of DDP ranks other than 0, which compute everything and write nothing."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.config_path = self.path / "config.yaml"
        self.plots = self.path / "plots"

    def create(self, config: dict) -> None:
        if self.read_only:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        config = dict(config)
        config["git_commit"] = git_commit()
        atomic_write_text(self.config_path, yaml.safe_dump(_clean(config), sort_keys=False))

    def append_metrics(self, rows: list[dict]) -> None:
        if not rows or self.read_only:
            return
        text = "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows)
        with open(self.metrics_path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl atomically (used by resume to drop rows past a checkpoint)."""
        if self.read_only:
            return
        atomic_write_text(self.metrics_path, "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows))

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def metrics_torn(self) -> bool:
        """metrics.jsonl holds a line that is not a whole row (a write cut short by a crash): rows appended
        after it would be glued to it, so resume rewrites the file first."""
        if not self.metrics_path.exists():
            return False
        text = self.metrics_path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        return (bool(text) and not text.endswith("\n")) or len(lines) != len(read_jsonl(self.metrics_path))

    def write_summary(self, summary: dict) -> None:
        if self.read_only:
            return
        atomic_write_text(self.summary_path, json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())
