#!/usr/bin/env bash
# The primitives table (issue 17): transformer / mamba / lstm / mlp on dirichlet, hmm (with a header, and
# one fixed HMM), recall, bijection with and without replacement at 10,000 steps, 3 seeds:
# configs/sweep/primitives.yaml, the report, then scripts/learning_curves.py (KL by step per task, one line
# per architecture, and when each seed learned) and scripts/hmm_filtering.py (the HMM's KL before the
# first observation and after it).
#   scripts/primitives.sh --workers 2
set -euo pipefail
AFTER="scripts/learning_curves.py scripts/hmm_filtering.py" exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" primitives "$@"
