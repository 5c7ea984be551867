"""Calibration at every step: the prequential (predict, then update) KL of a learner on its own stream.

Every training batch carries the exact posterior, and the model's logits on it are computed before the
update: the KL of that prediction to the posterior, summed over the stream, is the learner's regret — its
excess log-loss, in bits, over the Bayes predictor that knows each phase's prior. `Prequential` records it
at every step of a fit from the module's own forward pass (the stream's own sequences only: a strategy's
replayed part is not scored); `record_frozen` scores a frozen arm's predictions on the same batches with
a forward pass. `phase_figures` turns the records into the summary's per-phase figures.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from plasticity.eval.calibration import step_calibration
from streams import Batch, Stream

Record = Callable[[int, int, torch.Tensor], None]  # (stream step, phase, step_calibration sums)


class Prequential(pl.Callback):
    """Scores the module's pre-update prediction of every step (`WindTunnelModule.prediction`) and, with
    `retention_every` > 0, a rotating slice of `retention_size` sequences of every past phase's bank."""

    def __init__(self, stream: Stream, record: Record, banks: dict[int, Batch] | None = None,
                 retention_every: int = 0, retention_size: int = 32, record_retention: Record | None = None):
        self.stream, self.record = stream, record
        self.banks, self.retention_every, self.retention_size = banks or {}, retention_every, retention_size
        self.record_retention = record_retention

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.stream_step - 1  # the batch's own step: its prediction came before this update
        stream_batch, logits = pl_module.prediction
        sums = step_calibration(logits, stream_batch.posterior, stream_batch.scored, stream_batch.tokens,
                                stream_batch.general)
        if trainer.world_size > 1:  # each DDP process scored its share of the batch
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        phase = self.stream.phase_at(step)
        self.record(step, phase, sums)
        if self.retention_every and self.record_retention is not None and step % self.retention_every == 0:
            self._retention(pl_module.model, step, phase)

    @torch.no_grad()
    def _retention(self, model: nn.Module, step: int, phase: int) -> None:
        k = step // self.retention_every
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for j in range(phase):
                bank = self.banks[j]
                m = min(self.retention_size, len(bank))
                start = (k * m) % len(bank)
                rows = torch.arange(start, start + m) % len(bank)
                part = bank[rows]
                logits = model(part.tokens.to(device))
                self.record_retention(step, j, step_calibration(logits, part.posterior, part.scored, part.tokens))
        finally:
            model.train(was_training)


@torch.no_grad()
def record_frozen(model: nn.Module, stream: Stream, start: int, end: int, record: Record,
                  device: torch.device, every_step: Callable[[], None] | None = None) -> None:
    """A frozen arm's prequential record: its prediction on every stream batch of [start, end), forward only."""
    was_training = model.training
    model.eval()
    try:
        for step in range(start, end):
            batch = stream.batch(step).to(device)
            sums = step_calibration(model(batch.tokens), batch.posterior, batch.scored, batch.tokens, batch.general)
            record(step, stream.phase_at(step), sums)
            if every_step is not None:
                every_step()
    finally:
        model.train(was_training)


def phase_figures(records: list[dict], phases, window: int, factor: float, tolerance: float,
                  steady_fraction: float, shift_steps: int) -> dict[int, dict]:
    """Per phase with records (dicts with step, phase, n_scored, kl_bits, as in steps/<unit>.csv):

    - `regret_bits`: Σ over the phase's steps of kl_bits × n_scored (bits), and `regret_bits_per_token`;
    - `steady_kl_bits`: the token-weighted mean KL over the phase's last max(1, steady_fraction × steps)
      steps, the level the learner settled at;
    - `shift_cost_bits`: Σ over the first `shift_steps` steps of (kl_bits − steady) × n_scored: the bits
      the shift cost beyond the steady level;
    - `adaptation_steps`: the number of updates in the phase before the running mean of the per-step KL
      (token-weighted, over the last `window` steps, not reaching before the phase start) first falls to
      factor × steady + tolerance; None if it never does.
    """
    by_phase: dict[int, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["step"]):
        by_phase.setdefault(r["phase"], []).append(r)
    out = {}
    for i, rs in by_phase.items():
        kl = torch.tensor([r["kl_bits"] for r in rs], dtype=torch.float64)
        n = torch.tensor([r["n_scored"] for r in rs], dtype=torch.float64)
        bits = kl * n
        tail = max(1, round(steady_fraction * len(rs)))
        steady = float(bits[-tail:].sum() / n[-tail:].sum())
        csum_bits, csum_n = torch.cumsum(bits, 0), torch.cumsum(n, 0)
        lagged = lambda c: torch.cat([torch.zeros(window, dtype=c.dtype), c])[: len(c)]  # noqa: E731
        running = (csum_bits - lagged(csum_bits)) / (csum_n - lagged(csum_n))
        within = (running <= factor * steady + tolerance).nonzero().flatten()
        first = int(rs[0]["step"]) - phases[i].start  # updates done in the phase before its first record
        out[i] = {
            "regret_bits": float(bits.sum()),
            "regret_bits_per_token": float(bits.sum() / n.sum()),
            "steady_kl_bits": steady,
            "shift_cost_bits": float((bits[:shift_steps] - steady * n[:shift_steps]).sum()),
            "adaptation_steps": first + int(within[0]) if len(within) else None,
        }
    return out
