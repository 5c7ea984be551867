"""DDP ranks 1..n-1 (`python -m plasticity.run.rank`): the run rank 0 started, from the config it wrote
on stdin (plasticity.run.distributed.launch); they compute everything and write nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    from plasticity.run.processes import die_with_parent

    die_with_parent()  # rank 0 writes; nothing here is lost
    job = json.loads(sys.stdin.read())
    from plasticity.run.build import build
    from plasticity.run.config import from_container
    from plasticity.run.experiment import Experiment
    from plasticity.train.stopping import DivergenceError, Preempted

    cfg = from_container(job["config"])
    cfg.progress, cfg.plots = False, False
    try:
        Experiment(build(cfg), Path(job["run_dir"]), sinks=[], resume=job["resume"]).run()
    except Preempted:  # every rank stopped at the same step; rank 0 wrote the checkpoint and says so
        return 143
    except DivergenceError:  # pretraining diverged on every rank; rank 0 reports it
        return 1
    finally:
        import torch.distributed as dist

        # Exiting with the gloo group alive can abort in its C++ destructors ("terminate called without
        # an active exception", status -6) when the interpreter tears its threads down: close it first.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
