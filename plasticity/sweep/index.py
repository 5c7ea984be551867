"""`<out>/sweep_index.json`: every trial of a sweep with its status, rewritten atomically on each change.

`{sweep, experiment, method, out, updated, counts, trials: [{name, overrides, status, error, run_dir, log,
command, seconds, started, finished}]}` with status one of pending, running, done, failed; `error` is
`{type, message, log_tail}` for a failed trial. The run directories stay the source of truth: a trial is
done when its `summary.json` exists, whatever an old index says.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from plasticity.files import atomic_write_text

STATUSES = ("pending", "running", "done", "failed")


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def read_index(path: Path) -> dict | None:
    """A sweep index, or None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("trials"), list) else None


class SweepIndex:
    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = dict(header)
        self.trials: dict[str, dict] = {}
        self.lock = threading.Lock()
        old = read_index(self.path) or {"trials": []}
        self.previous = {t.get("name"): t for t in old["trials"] if isinstance(t, dict)}

    def add(self, entry: dict) -> None:
        self.trials[entry["name"]] = entry

    def update(self, name: str, drop: tuple[str, ...] = (), **fields: Any) -> None:
        with self.lock:
            for key in drop:
                self.trials[name].pop(key, None)
            self.trials[name].update(fields)
            self._save()

    def save(self) -> None:
        with self.lock:
            self._save()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for t in self.trials.values():
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts

    def _save(self) -> None:
        data = {**self.header, "updated": _now(), "counts": self.counts(), "trials": list(self.trials.values())}
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")
