"""Several processes: Lightning DDP over `trainer.devices` processes (gloo on CPU, NCCL on GPUs).

The launcher is ours rather than Lightning's. Lightning's `strategy="ddp"` re-runs `sys.argv` for every
other rank at the first `fit`, which breaks when the run was started from pytest, a sweep worker or a
notebook, and starts the other ranks after rank 0 has already created the run directory and evaluated.
Instead `launch` starts ranks 1..n-1 when the run starts (`python -m plasticity.run.rank`, the resolved
config on stdin) and sets the variables Lightning reads (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
so every `fit` of the run finds its processes there. Under an external launcher (torchrun, `srun` with one
task per device: LOCAL_RANK already set) nothing is spawned; give every rank the same `run.dir`.

Every rank walks the whole protocol in lockstep: pretraining, each arm, each fresh learner. Rank r trains on
sequences r, r+n, r+2n, ... of each step's batch (`stream_loader`), so the ranks see distinct data, the
global batch is the single-process batch and DDP's averaged gradient is the single-process gradient up to
float rounding. Only rank 0 writes (run directory, checkpoints, wandb, plots). Every rank evaluates, on the
same weights, so no rank waits on another outside a collective; decisions that stop a fit (divergence,
SIGTERM) are reduced over the ranks so that all of them stop at the same step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def enabled(cfg: DictConfig) -> bool:
    return cfg.trainer.devices > 1 or cfg.trainer.strategy == "ddp"


def world_size(cfg: DictConfig) -> int:
    return cfg.trainer.devices if enabled(cfg) else 1


def rank(cfg: DictConfig) -> int:
    """This process's rank (single node: the local rank); 0 when the run is single-process."""
    return int(os.environ.get("LOCAL_RANK", 0)) if enabled(cfg) else 0


def check(cfg: DictConfig, strategies: dict) -> str | None:
    """Why this config cannot run under DDP (a one-line message naming the key), or None."""
    if not enabled(cfg):
        return None
    n = cfg.trainer.devices
    if cfg.stream.batch_size % n:
        return f"stream.batch_size={cfg.stream.batch_size}: must be divisible by trainer.devices={n}"
    for arm, s in strategies.items():
        if not s.ddp_safe or s.external_loop:  # their edits are per process: the ranks' weights would drift apart
            return (f"arms.{arm}: strategy '{s.name}' cannot run with trainer.devices={n} (it changes weights "
                    "outside the optimizer step, per process); use trainer.devices=1")
    return None


def trainer_strategy(cfg: DictConfig, device_type: str):
    """The Trainer's `strategy` argument: 'auto', or DDP over the processes `launch` started."""
    if not enabled(cfg):
        return "auto"
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    # LightningEnvironment reads the variables `launch` set (never SLURM's: the job may have one task)
    return DDPStrategy(cluster_environment=LightningEnvironment(), start_method="popen",
                       process_group_backend="nccl" if device_type == "cuda" else "gloo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launch(cfg: DictConfig, run_dir: Path, resume: bool):
    """In rank 0 of a DDP run: start the other ranks for the duration of the run; otherwise nothing."""
    if not enabled(cfg) or "LOCAL_RANK" in os.environ:  # single process, a rank we started, or torchrun
        yield
        return
    from omegaconf import OmegaConf

    n = cfg.trainer.devices
    env = {"NODE_RANK": "0", "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    job = json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": str(Path(run_dir).resolve()),
                      "resume": resume})
    procs = []
    for r in range(1, n):
        proc = subprocess.Popen([sys.executable, "-m", "plasticity.run.rank"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env={**os.environ, **env, "LOCAL_RANK": str(r)})
        proc.stdin.write(job.encode())
        proc.stdin.close()
        procs.append(proc)
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(env, LOCAL_RANK="0")
    try:
        yield
        for r, proc in enumerate(procs, start=1):
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"DDP rank {r} ended with status {proc.returncode}; its stderr is above")
    finally:
        for proc in procs:  # rank 0 failed or was stopped: the others have nothing to save
            if proc.poll() is None:
                try:
                    proc.wait(timeout=10)  # a pre-emption or divergence stops every rank at the same step
                except subprocess.TimeoutExpired:
                    proc.kill()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # a later run in this process starts its own group
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
