"""Avalanche (avalanche-lib) strategies as arms of a plasticity experiment, behind the `avalanche` extra.

`strategy: avalanche.<Name>` in an arm's config runs `avalanche.training.<Name>` through our stream and
our evaluator, next to the native arms and scored with the same Bayesian metrics. The core never
imports this package: the strategy registry's prefix table (plasticity.strategies.base) names
`avalanche_strategy_class`, imported only when an arm's strategy starts with `avalanche.`.

- `benchmark`: the stream's phases as an Avalanche benchmark (one training experience per phase, in
  stream order; eval experiences from the eval banks);
- `model`: the [B, V, L] logit layout Avalanche's losses and plugins expect, and the criterion;
- `metrics`: the KL to the exact posterior as an Avalanche plugin metric (the R matrix);
- `plugins`: stream steps, our evaluator, gradient clipping, divergence and pre-emption inside
  Avalanche's training loop;
- `strategy`: the `AvalancheArm` strategy (`external_loop`) and the `avalanche.<Name>` registry;
- `fixes`: a fix for an Avalanche 0.6.0 bug that changes results (SI on the CPU), scoped to a bridge arm.

See docs/avalanche.md for the design and the native-vs-Avalanche comparison.
"""

from __future__ import annotations

import warnings

EXTRA_HINT = "pip install -e '.[avalanche]' -c constraints.txt"

try:
    with warnings.catch_warnings():  # qpsolvers (GEM's backend) warns at import when it finds no solver
        warnings.filterwarnings("ignore", message=".*no QP solver found.*")
        import avalanche  # noqa: F401
        import avalanche.training  # noqa: F401
except ModuleNotFoundError as e:  # only a missing avalanche becomes the extra's message
    if (e.name or "").split(".")[0] != "avalanche":
        raise
    raise ModuleNotFoundError(f"plasticity.avalanche_bridge needs the avalanche extra: {EXTRA_HINT}",
                              name="avalanche") from None

from plasticity.avalanche_bridge.benchmark import StreamBenchmark, stream_benchmark  # noqa: E402
from plasticity.avalanche_bridge.metrics import PosteriorKL  # noqa: E402
from plasticity.avalanche_bridge.model import IGNORE_INDEX, SequenceLogits, sequence_criterion  # noqa: E402
from plasticity.avalanche_bridge.strategy import AvalancheArm, avalanche_strategy_class  # noqa: E402

__all__ = [
    "EXTRA_HINT", "IGNORE_INDEX", "AvalancheArm", "PosteriorKL", "SequenceLogits", "StreamBenchmark",
    "avalanche_strategy_class", "sequence_criterion", "stream_benchmark",
]
