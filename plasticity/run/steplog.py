"""Per-step records of a unit of work: `steps/<unit>.csv`, one line per training step (the prequential
figures of the step's own batch, scored before the update), and `steps/<unit>.retention.csv` when
`eval.retention_every` is on (a rotating slice of every past phase's eval bank).

Lines are buffered as tensors (no host sync per step on a GPU) and appended in batches; `flush()` runs
before every checkpoint and fsyncs, so the lines up to a checkpoint are on disk when it is written (the
appends in between are not synced: a killed process loses nothing the OS has, and a resume rewrites what
came after its checkpoint anyway). A resumed unit first drops the lines at or after its checkpoint's step
(and a torn last line): no gap, no duplicate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from plasticity.files import atomic_write_text

LN2 = math.log(2.0)
STEP_COLUMNS = ("step", "phase", "n_scored", "kl_bits", "nll_bits", "bayes_nll_bits", "kl_general_bits")
RETENTION_COLUMNS = ("step", "eval_phase", "n_scored", "kl_bits")
FLUSH_EVERY = 64  # steps buffered before an append


class _CsvLog:
    def __init__(self, path: Path, columns: tuple[str, ...], enabled: bool = True):
        self.path, self.columns, self.enabled = Path(path), columns, enabled
        self.buffer: list[tuple] = []

    def add(self, record: tuple) -> None:
        if self.enabled:
            self.buffer.append(record)
            if len(self.buffer) >= FLUSH_EVERY:
                self.flush(sync=False)

    def flush(self, sync: bool = True) -> None:
        if not self.buffer:
            return
        text = "".join(",".join(map(_text, self._values(r))) + "\n" for r in self.buffer)
        self.buffer = []
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write((",".join(self.columns) + "\n" if new else "") + text)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def _values(self, record: tuple) -> list:
        return list(record)

    def truncate(self, before_step: int) -> None:
        """Keep the whole lines of steps < before_step (a resumed unit writes the others again)."""
        self.buffer = []
        if not self.enabled or not self.path.exists():
            return
        header, *body = _lines(self.path)
        kept = [line for line in body if _whole(line, len(self.columns)) and int(line.split(",")[0]) < before_step]
        atomic_write_text(self.path, "\n".join([header, *kept]) + "\n")


class StepLog(_CsvLog):
    """The prequential records of one unit: `add(step, phase, sums)` with `sums` the float64 tensor of
    `plasticity.eval.calibration.step_calibration` ([KL nats, NLL nats, Bayes NLL nats, scored tokens,
    KL to the general posterior nats or NaN])."""

    def __init__(self, path: Path, enabled: bool = True, on_flush: Callable[[list[dict]], None] | None = None):
        super().__init__(path, STEP_COLUMNS, enabled)
        self.on_flush = on_flush  # gets the flushed records (for the sinks), as dicts

    def _values(self, record: tuple) -> list:
        step, phase, sums = record
        kl, nll, bayes, n, general = sums.tolist() if isinstance(sums, torch.Tensor) else sums
        return [step, phase, int(n), *(v / n / LN2 if n else float("nan") for v in (kl, nll, bayes, general))]

    def flush(self, sync: bool = True) -> None:
        records = [dict(zip(STEP_COLUMNS, self._values(r))) for r in self.buffer] if self.on_flush else []
        super().flush(sync)
        if records:
            self.on_flush(records)


class RetentionLog(_CsvLog):
    """`add(step, eval_phase, sums)`: the KL on a slice of a past phase's eval bank at a step."""

    def __init__(self, path: Path, enabled: bool = True):
        super().__init__(path, RETENTION_COLUMNS, enabled)

    def _values(self, record: tuple) -> list:
        step, phase, sums = record
        kl, _, _, n, _ = sums.tolist()
        return [step, phase, int(n), kl / n / LN2 if n else float("nan")]


class Blocks:
    """Per-step records as means over blocks of `size` consecutive steps (token-weighted), for dashboards
    that want a few thousand points per arm: `add(records)` returns the blocks completed, `rest()` the
    partial last one. A block's point is at its last step."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.open: dict | None = None

    def add(self, records: list[dict]) -> list[dict]:
        done = []
        for r in records:
            block = r["step"] // self.size
            if self.open is not None and self.open["block"] != block:
                done.append(self._close())
            if self.open is None:
                self.open = {"block": block, "n": 0, "kl": 0.0, "nll": 0.0, "bayes": 0.0}
            o, n = self.open, r["n_scored"]
            o["step"], o["phase"], o["n"] = r["step"], r["phase"], o["n"] + n
            o["kl"], o["nll"], o["bayes"] = (o["kl"] + r["kl_bits"] * n, o["nll"] + r["nll_bits"] * n,
                                             o["bayes"] + r["bayes_nll_bits"] * n)
        return done

    def rest(self) -> list[dict]:
        return [self._close()] if self.open is not None else []

    def _close(self) -> dict:
        o, self.open = self.open, None
        n = o["n"] or 1
        return {"step": o["step"], "phase": o["phase"], "n_scored": o["n"], "kl_bits": o["kl"] / n,
                "nll_bits": o["nll"] / n, "bayes_nll_bits": o["bayes"] / n}


def read_steps(path: Path) -> list[dict]:
    """The records of a steps CSV (whole lines only), as dicts of numbers."""
    path = Path(path)
    if not path.exists():
        return []
    header, *body = _lines(path)
    columns = header.split(",")
    out = []
    for line in body:
        if _whole(line, len(columns)):
            out.append({c: (int(v) if c in ("step", "phase", "eval_phase", "n_scored") else float(v))
                        for c, v in zip(columns, line.split(","))})
    return out


def _lines(path: Path) -> list[str]:
    """The lines that end with a newline: a line cut short by a crash (the last, without one) is not."""
    return [line for line in path.read_text().split("\n")[:-1] if line] or [""]


def _whole(line: str, n_columns: int) -> bool:
    fields = line.split(",")
    if len(fields) != n_columns:
        return False
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


def _text(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
