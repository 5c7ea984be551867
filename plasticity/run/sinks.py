"""Where a run's results go besides the run directory (which is always written first and is the source of
truth): wandb, live plots, anything a user adds. A sink must never fail the run: the experiment calls
every hook through `safe`, which reports the sink's error once and disables it."""

from __future__ import annotations

import queue
import sys
import threading
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
            if not _called(sink, hook, args):
                self.sinks.remove(sink)


class BackgroundSink(RunSink):
    """Runs a sink's hooks in a thread of its own, in the order they were called, so that a slow sink
    (wandb's init, its images at phase ends) does not hold up training: the run's thread only enqueues.
    `close()` waits for every queued hook, then closes the sink. A hook that raises is reported once and
    the sink is dropped, as by `Sinks`. Arguments are not copied: callers hand over rows they no longer
    change (the run directory already has them)."""

    def __init__(self, sink: RunSink):
        self.sink = sink
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failed = False
        self._thread = threading.Thread(target=self._work, name=f"sink-{type(sink).__name__}", daemon=True)
        self._thread.start()

    def on_start(self, *args) -> None:
        self._queue.put(("on_start", args))

    def on_rows(self, *args) -> None:
        self._queue.put(("on_rows", args))

    def on_phase_end(self, *args) -> None:
        self._queue.put(("on_phase_end", args))

    def on_steps(self, *args) -> None:
        self._queue.put(("on_steps", args))

    def on_summary(self, *args) -> None:
        self._queue.put(("on_summary", args))

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(("close", ()))
            self._thread.join()

    def _work(self) -> None:
        while True:
            hook, args = self._queue.get()
            if not self._failed:
                self._failed = not _called(self.sink, hook, args)
            if hook == "close":
                return


def _called(sink: RunSink, hook: str, args: tuple) -> bool:
    """Call a sink's hook; False, with one line on stderr, if it raised (the caller then drops the sink)."""
    try:
        getattr(sink, hook)(*args)
        return True
    except Exception as e:  # noqa: BLE001 - a dashboard must never take the run down
        print(f"warning: {type(sink).__name__}.{hook} failed ({type(e).__name__}: {e}); "
              "disabled for the rest of the run — the run directory has everything", file=sys.stderr)
        return False
