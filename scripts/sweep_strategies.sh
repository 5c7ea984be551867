#!/usr/bin/env bash
# Continual strategies x seeds on frozen_vs_online (configs/sweep/strategies.yaml): one run per seed with every arm.
# Then `plasticity report` on the results. Extra flags go to `plasticity sweep`, e.g.
#   scripts/sweep_strategies.sh --workers 4
#   scripts/sweep_strategies.sh --executor slurm --partition gpu --time 02:00:00 --gpus-per-node 1
#   scripts/sweep_strategies.sh --emit-wandb wandb_sweeps/      (then wandb sweep / wandb agent, see its README)
# OUT=dir changes where the runs go (default runs/sweeps/strategies).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" strategies "$@"
