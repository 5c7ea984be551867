"""Child processes that never outlive their parent (DDP ranks, sweep workers, unit workers). Torch-free."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Linux: deliver `sig` to this process when its parent dies, however it dies (PR_SET_PDEATHSIG).
    SIGTERM lets a training process checkpoint at the end of its step and stop; SIGKILL ends it at once."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl
        sys.exit(1)
