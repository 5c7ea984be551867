"""Our KL to the exact posterior as an Avalanche plugin metric.

Avalanche's built-in accuracy and forgetting metrics assume one label per sample; this metric reads the
posterior that rides along in every eval sample (`benchmark.bank_dataset`) and accumulates exactly what
`plasticity.eval.evaluator.evaluate_bank` does (`CalibrationAccumulator`, float64 from the logits). After
each eval experience it emits `KL_bits/eval_phase/Exp{j:03d}`; evaluated on all phases after training
experience i, it fills row i of the R matrix (`R[i][j]`: bits per scored token on phase j's eval bank),
the same `R_kl_bits` as a native arm's summary.
"""

from __future__ import annotations

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from plasticity.avalanche_bridge.model import IGNORE_INDEX
from plasticity.eval.calibration import CalibrationAccumulator


class PosteriorKL(PluginMetric[float]):
    """KL(p* ‖ q) in bits per scored token on each eval experience; `R[phase][eval_phase]`.

    `train_phases[i]` is the stream phase of train experience i (the row written by evaluations that
    follow it); eval experience j is phase j."""

    def __init__(self, train_phases: list[int] | None = None):
        super().__init__()
        self.train_phases = train_phases
        self.R: dict[int, dict[int, float]] = {}
        self.row: int | None = None  # the phase whose training ended last
        self._acc: CalibrationAccumulator | None = None
        self._last: dict | None = None

    def reset(self) -> None:
        self._acc = None

    def result(self) -> float | None:
        return None if self._last is None else self._last["kl_bits"]

    def matrix(self) -> list[list[float]]:
        """The R rows recorded so far, in phase order (rows need not start at phase 0)."""
        return [[self.R[i][j] for j in sorted(self.R[i])] for i in sorted(self.R)]

    def after_training_exp(self, strategy) -> None:
        exp = strategy.experience.current_experience
        self.row = self.train_phases[exp] if self.train_phases is not None else exp

    def before_eval_exp(self, strategy) -> None:
        self._acc = None  # sized at the first minibatch: eval banks may be longer than training sequences

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        mb = strategy.mbatch
        tokens, targets, posterior = mb[0], mb[1], mb[2]
        if self._acc is None:
            self._acc = CalibrationAccumulator(tokens.shape[1])
        self._acc.update(strategy.mb_output.transpose(1, 2), posterior, targets != IGNORE_INDEX, tokens)

    def after_eval_exp(self, strategy) -> MetricValue:
        self._last = self._acc.compute()
        j = strategy.experience.current_experience
        kl = float(self._last["kl_bits"])
        if self.row is not None:
            self.R.setdefault(self.row, {})[j] = kl
        self._acc = None
        return MetricValue(self, f"KL_bits/eval_phase/Exp{j:03d}", kl, strategy.clock.train_iterations)

    def __str__(self) -> str:
        return "KL_bits"
