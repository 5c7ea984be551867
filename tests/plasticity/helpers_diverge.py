"""A strategy that makes its arm diverge for real: from stream step `at` on, its loss term is NaN.

Loaded by import path (`helpers_diverge:Explode`, with this folder on sys.path / PYTHONPATH), the way a
user's own strategy is."""

import os
from dataclasses import dataclass

from plasticity.strategies.base import Strategy


class Explode(Strategy):
    name = "explode"

    @dataclass
    class Params:
        at: int = 0  # the first stream step whose loss is NaN

    def penalty(self, module, batch, logits):
        if module.stream_step >= self.params.at:
            return logits.sum() * float("nan")
        return None


class Crash(Strategy):
    """A bug, not a divergence: from stream step `at` on, the arm raises."""

    name = "crash"

    @dataclass
    class Params:
        at: int = 0

    def penalty(self, module, batch, logits):
        if module.stream_step >= self.params.at:
            raise RuntimeError(f"crash at step {module.stream_step}")
        return None


class Vanish(Strategy):
    """The process dies at stream step `at` with no word, as the out-of-memory killer ends it."""

    name = "vanish"

    @dataclass
    class Params:
        at: int = 0

    def penalty(self, module, batch, logits):
        if module.stream_step >= self.params.at:
            os._exit(9)
        return None
