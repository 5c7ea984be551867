"""What a native arm's Lightning loop does around each step, as an Avalanche plugin.

Avalanche counts iterations inside an experience; `StepPlugin` maps iteration k of the experience for
phase p to stream step `p.start + k + 1` (the step count after it, as `WindTunnelModule.stream_step`
reads in `on_train_batch_end`) and, at each:
- checks the loss and logits are finite (else `DivergenceError`, the native arms' guard);
- reads the gradient norm before clipping (the probe) and clips it to `optim.grad_clip`, like
  Lightning's `gradient_clip_val` (norm clipping over all parameters);
- steps the learning-rate scheduler (constant for online arms, as native);
- evaluates with our `Evaluator` at the steps in `evaluator.eval_steps` strictly inside the phase, and
  at the phase end in `after_training_exp`, after the last update and before any other plugin's
  end-of-experience hook (so metrics.jsonl rows and R rows come out exactly like a native arm's);
- calls the arm loop's `on_step` (progress, token count) and stops with `Preempted` when a stop signal
  (SIGTERM, USR2) asked the run to stop.

A strategy that trains on something else than the experience's batches (GDumb trains on its buffer)
runs a different number of iterations: its intermediate rows are at iteration counts, its phase-end
row is still at the phase end. The consolidation experience (phase-0 sample) is not trained on: the
plugin stops its epoch before the first iteration, so only its end-of-experience hooks run.
"""

from __future__ import annotations

import torch
from avalanche.training.plugins import SupervisedPlugin

from plasticity.avalanche_bridge.benchmark import StreamBenchmark
from plasticity.avalanche_bridge.model import unwrap
from plasticity.strategies.base import ArmLoop
from plasticity.train.guards import divergence, finiteness
from plasticity.train.stopping import Preempted


class StepPlugin(SupervisedPlugin):
    def __init__(self, benchmark: StreamBenchmark, loop: ArmLoop, scheduler=None):
        super().__init__()
        self.benchmark, self.loop, self.scheduler = benchmark, loop, scheduler
        self.stream, self.evaluator, self.grad_clip = loop.stream, loop.evaluator, loop.optim.grad_clip
        self.step = self.end = 0
        self.last_finite_loss: float | None = None
        self.skip = False
        self.grad_norm = 0.0
        self.iterations = 0  # trained iterations in all experiences

    def before_training_exp(self, strategy, **kwargs):
        i = strategy.experience.current_experience
        self.skip = self.benchmark.consolidation and i == 0
        p = self.stream.phases[self.benchmark.train_phases[i]]
        self.phase, self.step, self.end = p.index, p.start, p.end

    def before_training_epoch(self, strategy, **kwargs):
        if self.skip:
            strategy.stop_training()

    def before_update(self, strategy, **kwargs):
        value, bad = finiteness(strategy.loss, strategy.mb_output)
        if bad:
            raise divergence(value, bad, self.step, self.phase, self.last_finite_loss)
        self.last_finite_loss = value
        grads = [p for p in strategy.model.parameters() if p.grad is not None]
        # the norm before clipping, like the native module's (0 when nothing has a gradient)
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)) if grads else 0.0

    def after_update(self, strategy, **kwargs):
        if self.scheduler is not None:
            self.scheduler.step()

    def after_training_iteration(self, strategy, **kwargs):
        self.step += 1
        self.iterations += 1
        self.loop.on_step()
        if self.step < self.end and self.step in self.evaluator.eval_steps:
            self.evaluator.evaluate(unwrap(strategy.model), self.step, self.grad_norm)
        if self.loop.stop_requested():
            raise Preempted(f"stopped by a stop signal at step {self.step}; an Avalanche arm "
                            "restarts from its beginning on --resume")

    def after_training_exp(self, strategy, **kwargs):
        if not self.skip:
            self.evaluator.evaluate(unwrap(strategy.model), self.end, self.grad_norm)
