"""WindTunnelModule: a LightningModule that trains a model on a stream's batches.

Data stay outside (streams/, train/data.py); the module owns the loss at scored positions, the optimizer
and schedule (train/optim.py), the divergence guard and clipping, and the continual strategy's hooks: loss
terms, batch transforms and phase boundaries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import nn

from plasticity.train.guards import divergence, finiteness
from plasticity.train.loss import sequence_loss
from plasticity.train.optim import OptimConfig, build_optimizer, build_scheduler
from streams import Batch, Stream

if TYPE_CHECKING:
    from plasticity.strategies.base import Strategy


class WindTunnelModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig,
        loss: str = "sampled",
        stream: Stream | None = None,
        start_step: int = 0,
        total_steps: int = 1,
        lr: float | None = None,
        schedule: str | None = None,
        warmup_steps: int | None = None,
        strategy: Strategy | None = None,
        resume_state: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.optim = optim
        self.loss_kind = loss
        self.stream = stream
        self.start_step = start_step  # the stream step this fit (or its resumption) begins at
        self.total_steps = total_steps  # length of the learning-rate schedule
        self.resume_state = resume_state  # a checkpoint to continue from (train/checkpointing.py)
        self.lr = optim.lr if lr is None else lr
        self.schedule = optim.schedule if schedule is None else schedule
        self.warmup_steps = optim.warmup_steps if warmup_steps is None else warmup_steps
        self.strategy = strategy
        self.current_phase: int | None = None
        # The step's own stream batch and the model's logits on it, before the update: the prediction that
        # the prequential figures score (plasticity.eval.prequential). None until the first step.
        self.prediction: tuple[Batch, torch.Tensor] | None = None
        self.last_finite_loss: float | None = None
        self.last_grad_norm: float = 0.0
        self._params: list[nn.Parameter] | None = None
        self.automatic_optimization = False  # see training_step

    # ------------------------------------------------------------------ resumption
    def progress_state(self) -> dict:
        return {"current_phase": self.current_phase, "last_finite_loss": self.last_finite_loss,
                "last_grad_norm": self.last_grad_norm}

    def on_train_start(self) -> None:
        state = self.resume_state
        if state is None:
            return
        from plasticity.train.checkpointing import restore_rng_states  # it saves this module's state

        self.trainer.optimizers[0].load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(state["scheduler"])
        for key, value in state["module"].items():
            setattr(self, key, value)
        restore_rng_states(state["rng"])

    # ------------------------------------------------------------------ steps
    @property
    def stream_step(self) -> int:
        """Training steps done on the stream so far (the global step across phases and fits)."""
        return self.start_step + self.global_step

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx
        )

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if self.stream is None:
            return
        phase = self.stream.phase_at(self.stream_step)
        if phase != self.current_phase:
            if self.strategy is not None and self.current_phase is not None:
                self.strategy.on_phase_end(self, self.current_phase)
            self.current_phase = phase
            if self.strategy is not None:
                self.strategy.on_phase_start(self, phase)

    def on_train_end(self) -> None:
        if self.strategy is not None and self.current_phase is not None:
            self.strategy.on_phase_end(self, self.current_phase)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One update, optimized by hand (`automatic_optimization = False`): the same order and the same
        hooks as Lightning's automatic loop (zero_grad, on_before/after_backward, on_before_optimizer_step,
        the optimizer step, then the per-step scheduler, all before on_train_batch_end), without its
        closure machinery, ~0.1 ms per step (benchmarks/bench_train.py)."""
        loss = self.compute_loss(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.lr_schedulers().step()
        return loss.detach()

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """The training loss of a batch (with the strategy's batch transform and penalty), or
        DivergenceError when the loss or any logit is not finite."""
        stream_batch = batch
        if self.strategy is not None:
            batch = self.strategy.transform_batch(self, batch)
        logits = self.model(batch.tokens)
        self.prediction = (stream_batch, self._stream_logits(stream_batch, batch, logits))
        loss = sequence_loss(logits, batch, self.loss_kind)
        if self.strategy is not None:
            extra = self.strategy.penalty(self, batch, logits)
            if extra is not None:
                loss = loss + extra
        value, local = finiteness(loss, logits)
        bad = local
        if self._trainer is not None:  # DDP: every process stops at the same step, whichever saw the NaN
            bad = self._trainer.strategy.reduce_boolean_decision(local, all=False)
        if bad:
            raise divergence(value, local, self.stream_step, self.current_phase, self.last_finite_loss)
        self.last_finite_loss = value
        return loss

    def _stream_logits(self, stream_batch: Batch, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """The logits of the stream's own sequences: the first rows of the trained batch when a transform
        appended to it (replay), else a forward pass of their own (no gradient)."""
        B = len(stream_batch)
        if batch is stream_batch or (len(batch) >= B and torch.equal(batch.tokens[:B], stream_batch.tokens)):
            return logits[:B].detach()
        with torch.no_grad():
            return self.model(stream_batch.tokens)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Clipping here (not by the Trainer) yields the pre-clip norm for free: the gradient-norm probe
        # reads it at evaluations. Runs after the strategies' hooks (SI reads the raw task gradient there).
        # clip_grad_norm_ skips parameters without a gradient; the list is made once per fit (strategies
        # edit parameters in place, never replace them), not walked out of the module tree every step.
        if self._params is None:
            self._params = list(self.model.parameters())
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.optim.grad_clip)

    @property
    def last_grad_norm(self) -> float:
        return float(self._grad_norm)

    @last_grad_norm.setter
    def last_grad_norm(self, value: float) -> None:
        self._grad_norm = torch.tensor(float(value))

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim, self.lr)
        scheduler = build_scheduler(optimizer, self.schedule, self.warmup_steps, self.total_steps,
                                    self.optim.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
