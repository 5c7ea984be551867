"""The Lightning Trainer of every native fit: no logger, checkpointing or progress bar of its own (the run
does those), deterministic on the CPU, DDP over the processes `plasticity.run.distributed` started."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def make_trainer(device: torch.device, max_steps: int, callbacks: list, deterministic: bool = True,
                 devices: int = 1, strategy="auto") -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=deterministic and device.type == "cpu",
        callbacks=callbacks,
    )
    # A stop signal is the run's StopFlag alone: the Checkpointer reads it at the end of a step, writes a
    # checkpoint and raises Preempted. Lightning's own SIGTERM handler races it: its SIGTERMException (a
    # SystemExit) can land after the Checkpointer's check in the same step and end the process with no
    # checkpoint, no report to a pool's parent and status 0; under DDP it broadcasts from inside the handler,
    # which deadlocks ranks caught in a gradient all-reduce.
    trainer._signal_connector.register_signal_handlers = lambda: None
    return trainer
