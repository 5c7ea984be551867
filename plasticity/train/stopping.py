"""Why a fit stops before its end: a stop signal (it checkpoints at the end of the step and raises
`Preempted`) or a divergence (`DivergenceError`: the arm stops alone).

Torch-free, so that `plasticity.sweep.trial` can read the signals in a fresh submitit job before torch
is imported.
"""

from __future__ import annotations

import os
import signal


class DivergenceError(RuntimeError):
    """NaN or Inf in the loss or the logits: the arm stops with this message."""


class Preempted(RuntimeError):
    """A stop signal arrived; a checkpoint was written and the run stopped. Resume with --resume."""


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM (kill, scancel, pre-emption) and the signal Slurm sends ahead of a time limit or a
    pre-emption with `--signal`: submitit's USR2, or the one named by $SUBMITIT_PREEMPT_SIGNAL."""
    extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return tuple(dict.fromkeys((signal.SIGTERM, extra)))


class StopFlag:
    """Set by a stop signal (`stop_signals()`); read at the end of every training step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal = ""  # the name of the signal that asked to stop
        self._previous: dict = {}

    def install(self) -> None:
        for sig in stop_signals():
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: pre-emption is the caller's business
                pass

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested, self.signal = True, signal.Signals(signum).name
