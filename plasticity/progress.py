"""A Rich progress bar with the live KL of the arm in training; silent when not a TTY or progress=false."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager

import pytorch_lightning as pl


class _Advance(pl.Callback):
    def __init__(self, progress: RunProgress):
        self.progress = progress

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.progress.advance(1)


class RunProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stdout.isatty()
        self._bar = None
        self._task = None
        self._kl: dict[str, float] = {}

    @contextmanager
    def run(self, total_steps: int):
        if not self.enabled:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[kl]}"), transient=False,
        )
        with self._bar:
            self._task = self._bar.add_task("training", total=total_steps, kl="")
            yield self
        self._bar = self._task = None

    def callback(self, arm: str, steps: int) -> pl.Callback:
        if self._bar is not None:
            self._bar.update(self._task, description=arm)
        return _Advance(self)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def on_eval(self, arm: str, step: int, kl_bits: float) -> None:
        self._kl[arm] = kl_bits
        if self._bar is not None and not math.isnan(kl_bits):
            self._bar.update(self._task, kl=f"{arm} step {step}: kl {kl_bits:.4f} bits")
