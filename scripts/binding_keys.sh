#!/usr/bin/env bash
# Binding with more keys (configs/sweep/binding_keys.yaml): mamba, transformer and lstm on a 16-key
# bijection with replacement at 10,000 steps, 3 seeds; the report, then the learning curves.
#   scripts/binding_keys.sh --workers 2
set -euo pipefail
AFTER="scripts/learning_curves.py" exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" binding_keys "$@"
