"""Files that survive a crash: whole files written atomically (temp file in the same folder, fsync,
rename), JSONL appended one record batch per write under a lock, a torn last line skipped when read.

The bottom of plasticity: checkpoints (train), the run directory (run), reports and sweep indexes use
these, and nothing here imports torch unless a tensor file is written.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data are on disk before the rename makes them the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: Path, rows: list[dict]) -> None:
    """Dicts with the first one's keys as a CSV file (a header line, then a line each)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # late: only writers of tensor files pay for torch

    _atomic_write(path, lambda f: torch.save(obj, f))


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/Inf become None (strict JSON has no NaN), tensors and numpy scalars become numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch tensors, numpy arrays/scalars
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows as JSON lines in one write, under an exclusive lock, then fsync: rows written by several
    processes to one file never interleave, and a row is on disk before the caller goes on."""
    if not rows:
        return
    data = jsonl_text(rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:  # a regular file takes the whole write; the loop is for the rare short write
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a truncated or corrupt line (a crash mid-write) is skipped."""
    rows = []
    path = Path(path)
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
