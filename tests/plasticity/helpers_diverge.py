"""Strategies that make their arm fail for real from stream step `at` on: a NaN loss (a divergence), an
exception (a bug), or the process dying without a word (the out-of-memory killer).

Loaded by import path (`helpers_diverge:Explode`, with this folder on sys.path / PYTHONPATH), the way a
user's own strategy is."""

import os
from dataclasses import dataclass

from plasticity.strategies.base import Strategy


class _FromStep(Strategy):
    """Calls `fail` from stream step `at` on; until then adds nothing to the loss."""

    @dataclass
    class Params:
        at: int = 0  # the first stream step that fails

    def penalty(self, module, batch, logits):
        return self.fail(module, logits) if module.stream_step >= self.params.at else None

    def fail(self, module, logits):
        raise NotImplementedError


class Explode(_FromStep):
    name = "explode"

    def fail(self, module, logits):
        return logits.sum() * float("nan")


class Crash(_FromStep):
    """A bug, not a divergence."""

    name = "crash"

    def fail(self, module, logits):
        raise RuntimeError(f"crash at step {module.stream_step}")


class Vanish(_FromStep):
    name = "vanish"

    def fail(self, module, logits):
        os._exit(9)
