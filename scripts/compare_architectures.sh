#!/usr/bin/env bash
# transformer / parameter-matched mlp / lstm on bijection (8 and 16 keys, with and without replacement),
# recall and hmm, at one budget, 2 seeds: configs/sweep/compare_architectures.yaml, then the report table.
#   scripts/compare_architectures.sh --workers 2
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" compare_architectures "$@"
