#!/usr/bin/env bash
# Length generalisation (issue 17): configs/sweep/lengths.yaml (rotary transformer, mamba, lstm, mlp on
# dirichlet, hmm and recall, trained at one length and evaluated at about twice it, 3 seeds), the report,
# then the within / beyond-the-training-length table and figure of scripts/length_generalisation.py.
#   scripts/lengths.sh --workers 2
set -euo pipefail
AFTER=scripts/length_generalisation.py exec "$(dirname "${BASH_SOURCE[0]}")/_sweep_and_report.sh" lengths "$@"
