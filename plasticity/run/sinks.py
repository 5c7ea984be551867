"""Where a run's results go besides the run directory (which is always written first and is the source of
truth): wandb, live plots, anything a user adds. A sink must never fail the run: the experiment calls
every hook through `safe`, which reports the sink's error once and disables it."""

from __future__ import annotations

import sys
from typing import Any


class RunSink:
    def on_start(self, config: dict, run_dir: str) -> None:
        pass

    def on_rows(self, rows: list[dict]) -> None:
        """Rows just appended to metrics.jsonl (one evaluation of one arm on every phase)."""

    def on_phase_end(self, arm: str, phase: int, R_rows: dict[int, list[float]]) -> None:
        """An arm finished a phase; R_rows holds the R matrix rows recorded so far."""

    def on_steps(self, arm: str, records: list[dict]) -> None:
        """Per-step records just appended to steps/<unit>.csv (step, phase, n_scored, kl_bits, nll_bits,
        bayes_nll_bits: the prequential figures of each training batch, before its update)."""

    def on_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Sinks:
    """Fan-out to several sinks; a sink that raises is reported once on stderr and then skipped."""

    def __init__(self, sinks: list[RunSink] | None = None):
        self.sinks = list(sinks or [])

    def call(self, hook: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, hook)(*args)
            except Exception as e:  # noqa: BLE001 - a dashboard must never take the run down
                print(f"warning: {type(sink).__name__}.{hook} failed ({type(e).__name__}: {e}); "
                      "disabled for the rest of the run — the run directory has everything", file=sys.stderr)
                self.sinks.remove(sink)
