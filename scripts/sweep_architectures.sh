#!/usr/bin/env bash
# transformer / mlp / lstm / mamba x seeds on wind_tunnel_bijection (configs/sweep/architectures.yaml).
# Then `plasticity report` on the results. Extra flags go to `plasticity sweep`, e.g.
#   scripts/sweep_architectures.sh --workers 4
#   scripts/sweep_architectures.sh --executor slurm --partition gpu --time 02:00:00 --gpus-per-node 1
#   scripts/sweep_architectures.sh --emit-wandb wandb_sweeps/      (then wandb sweep / wandb agent, see its README)
# OUT=dir changes where the runs go (default runs/sweeps/architectures).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" architectures "$@"
