#!/usr/bin/env bash
# Shared body of the sweep launchers: `_sweep_and_report.sh NAME [plasticity sweep flags...]` runs
# configs/sweep/NAME.yaml into $OUT (default runs/sweeps/NAME), then `plasticity report $OUT`, then
# `python SCRIPT $OUT` for each script $AFTER names (space-separated: an experiment's own summaries of the
# same folder).
# Finished trials are skipped, so re-running a launcher resumes the sweep. With --emit-wandb or --dry-run
# only the sweep command runs. Exit status: the sweep's (1 when a trial failed, 2 for a config mistake).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name="$1"
shift
OUT="${OUT:-runs/sweeps/$name}"
prev=""
for arg in "$@"; do
  case "$arg" in
    --emit-wandb* | --dry-run) exec plasticity sweep "configs/sweep/$name.yaml" --out "$OUT" "$@" ;;
    --out=*) OUT="${arg#--out=}" ;;
  esac
  [ "$prev" = "--out" ] && OUT="$arg"
  prev="$arg"
done
status=0
plasticity sweep "configs/sweep/$name.yaml" --out "$OUT" "$@" || status=$?
if [ "$status" -ne 2 ]; then
  plasticity report "$OUT"
  for script in ${AFTER:-}; do
    python "$script" "$OUT"
  done
fi
exit "$status"
