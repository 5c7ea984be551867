#!/usr/bin/env bash
# Loss of plasticity over long_stream_plasticity, 3 seeds (configs/sweep/long_stream.yaml).
# Then `plasticity report` on the results. Extra flags go to `plasticity sweep`, e.g.
#   scripts/sweep_long_stream.sh --workers 4
#   scripts/sweep_long_stream.sh --executor slurm --partition gpu --time 02:00:00 --gpus-per-node 1
#   scripts/sweep_long_stream.sh --emit-wandb wandb_sweeps/      (then wandb sweep / wandb agent, see its README)
# OUT=dir changes where the runs go (default runs/sweeps/long_stream).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" long_stream "$@"
