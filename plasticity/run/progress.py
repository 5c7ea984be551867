"""A Rich progress display: a bar for the whole run and one for each unit of work while it trains
(pretraining, each arm, each fresh learner), with its live KL; silent when not a TTY or progress=false."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager


class RunProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stdout.isatty()
        self._bar = None
        self._steps: dict[str, int] = {}
        self._tasks: dict[str, int] = {}
        self._total = None

    @contextmanager
    def run(self, steps_by_unit: dict[str, int]):
        if not self.enabled:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[kl]}"), transient=False,
        )
        self._steps = dict(steps_by_unit)
        with self._bar:
            self._total = self._bar.add_task("run", total=sum(self._steps.values()), kl="")
            yield self
        self._bar, self._tasks, self._total = None, {}, None

    def _task(self, unit: str) -> int | None:
        """The unit's bar, added when it starts training; None for a unit with nothing to train."""
        if unit not in self._tasks and self._steps.get(unit, 0) > 0:
            self._tasks[unit] = self._bar.add_task(unit, total=self._steps[unit], kl="")
        return self._tasks.get(unit)

    def advance(self, unit: str, n: int) -> None:
        if self._bar is None or not n:
            return
        self._bar.advance(self._total, n)
        task = self._task(unit)
        if task is not None:
            self._bar.advance(task, n)
            # a finished unit leaves the display; the run bar counts it
            if next(t for t in self._bar.tasks if t.id == task).finished:
                self._bar.remove_task(task)
                self._steps.pop(unit, None)

    def on_eval(self, unit: str, step: int, kl_bits: float) -> None:
        if self._bar is not None and not math.isnan(kl_bits) and (task := self._task(unit)) is not None:
            self._bar.update(task, kl=f"step {step}: kl {kl_bits:.4f} bits")
