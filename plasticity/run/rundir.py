"""The run directory, the source of truth: config.yaml, metrics.jsonl, summary.json, checkpoints/.

Whole files are written atomically; metrics.jsonl is append-only, one locked write per evaluation (so
rows written by several processes never interleave) and fsynced; a truncated last line (power loss) is
skipped when read and rewritten away on resume (plasticity.files).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from plasticity.files import append_jsonl, atomic_write_text, json_safe, jsonl_text, read_jsonl


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class RunDir:
    """`read_only`: the run directory of DDP ranks other than 0, which compute everything and write nothing."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.checkpoints = self.path / "checkpoints"
        self.steps = self.path / "steps"  # per-step records of every unit (plasticity.run.steplog)
        self.geometry = self.path / "geometry"  # the manifold figure's data: <arm>@<phase>.json
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.config_path = self.path / "config.yaml"

    def create(self, config: dict) -> None:
        if self.read_only:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        config = dict(config)
        config["git_commit"] = git_commit()
        atomic_write_text(self.config_path, yaml.safe_dump(json_safe(config), sort_keys=False))

    def append_metrics(self, rows: list[dict]) -> None:
        if not self.read_only:
            append_jsonl(self.metrics_path, rows)

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl atomically (used by resume to drop rows past a checkpoint)."""
        if not self.read_only:
            atomic_write_text(self.metrics_path, jsonl_text(rows))

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

    def write_manifold(self, arm: str, phase: int, data: dict) -> None:
        """The representation's principal components at a phase end (plasticity.eval.geometry.manifold)."""
        if not self.read_only:
            self.geometry.mkdir(exist_ok=True)
            atomic_write_text(self.geometry / f"{arm}@{phase}.json", json.dumps(json_safe(data)) + "\n")

    def write_summary(self, summary: dict) -> None:
        if not self.read_only:
            atomic_write_text(self.summary_path, json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
