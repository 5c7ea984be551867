#!/usr/bin/env bash
# Keys or length? (configs/sweep/binding_length.yaml): transformer and lstm on an 8-key bijection with
# replacement at 24 pairs, the length of the 16-key task of scripts/binding_keys.sh; the report, then the
# learning curves.
#   scripts/binding_length.sh --workers 2
set -euo pipefail
AFTER="scripts/learning_curves.py" exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" binding_length "$@"
