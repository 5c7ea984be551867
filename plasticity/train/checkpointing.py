"""Resumable training: one checkpoint per fit (pretraining, an arm, a fresh learner) holding everything
the rest of the fit depends on — weights, optimizer, schedule, strategy state, evaluation history, the
stream step (the data are a pure function of it) and the RNG states — written atomically every
`run.checkpoint_every` steps and when a stop signal asks the run to stop (Slurm pre-emption, a time limit)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from plasticity.files import atomic_torch_save
from plasticity.train.stopping import Preempted, StopFlag


def rng_states() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": _python_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    # .cpu(): a checkpoint loaded with map_location=cuda brings the RNG states to the GPU too
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    random.setstate(_python_state_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# weights_only=True loading accepts tensors and plain containers only: convert the RNG states.
def _numpy_state_to_tensors(s) -> list:
    return [s[0], torch.from_numpy(s[1].astype(np.int64)), int(s[2]), int(s[3]), float(s[4])]


def _numpy_state_from_tensors(s) -> tuple:
    return (s[0], s[1].cpu().numpy().astype(np.uint32), s[2], s[3], s[4])


def _python_state_to_list(s) -> list:
    return [s[0], list(s[1]), s[2]]


def _python_state_from_list(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])


class Checkpointer(pl.Callback):
    """Saves the fit's state every `every` stream steps (0: never) and when the stop flag is set.

    Registered last, so the state it saves includes this step's evaluation and strategy updates. Under DDP
    the stop request is reduced over the processes (all stop at the same step) and only rank 0 writes."""

    def __init__(self, path: Path, every: int, end: int, evaluator, strategy, stop: StopFlag, write: bool = True,
                 before_save: list | None = None):
        self.path, self.every, self.end = path, every, end
        self.evaluator, self.strategy, self.stop, self.write = evaluator, strategy, stop, write
        self.before_save = list(before_save or [])  # e.g. flushing the per-step records up to this step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.stream_step
        due = self.every > 0 and step % self.every == 0 and step < self.end
        stop = trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False)
        if (due or stop) and self.write:
            self.save(trainer, pl_module)
        if stop and step < self.end:
            raise Preempted(f"stopped by {self.stop.signal or 'a stop signal'} at step {step}; "
                            f"checkpoint written to {self.path}")

    def save(self, trainer, module) -> None:
        for flush in self.before_save:
            flush()
        scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        atomic_torch_save(
            {
                "stream_step": module.stream_step,
                "model": module.model.state_dict(),
                "optimizer": trainer.optimizers[0].state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "module": module.progress_state(),
                "strategy": self.strategy.state_dict() if self.strategy is not None else {},
                "evaluator": self.evaluator.state_dict(),
                "rng": rng_states(),
            },
            self.path,
        )


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location=device, weights_only=True)
