#!/usr/bin/env bash
# The search for loss of plasticity (issue 14; the grid and its outcomes: docs/plasticity.md). One knob at a
# time from a base point, naive fine-tuning at 3 seeds, then scripts/plasticity_decline.py on each point:
# end-of-phase KL over the first vs the last fifth of the phases, mean and 95% interval over the seeds.
#   scripts/plasticity_search.sh                 every point (~25 CPU-minutes on a 2-core Xeon)
#   scripts/plasticity_search.sh base lr_3e-3    only the points named (finished points are only tabulated)
# Base: the loss_of_plasticity experiment cut to 60 phases, a d32 transformer and AdamW at a constant 1e-3.
# OUT=dir changes where the runs go (default runs/plasticity_search); SEEDS=N the number of seeds;
# WORKERS=N the worker processes (default: trainer.workers, one per core).
set -euo pipefail
OUT=${OUT:-runs/plasticity_search}
SEEDS=${SEEDS:-3}
BASE="arms=[naive] stream.phases.0.repeat=60 model.d_model=32 model.d_ff=128 optim.lr=1e-3 optim.online_lr=1e-3 fresh_every=10"
HOT="optim.lr=3e-3 optim.online_lr=3e-3"
declare -A POINTS=(
  [base]=""
  [relu]="model.activation=relu"
  [no_ln]="model.layer_norm=false"
  [no_ln_relu]="model.layer_norm=false model.activation=relu"
  [wd_0.1]="optim.weight_decay=0.1"
  [lr_3e-4]="optim.lr=3e-4 optim.online_lr=3e-4"
  [lr_3e-3]="$HOT"
  [d64]="model.d_model=64 model.d_ff=256"
  [steps_100]="stream.phases.0.steps=100"
  [pool_4]="stream.phases.0.tasks=4"
  [gradual]="stream.transition=gradual stream.window=25"
  [sgd]="optim.optimizer=sgd optim.lr=0.1 optim.online_lr=0.1 optim.momentum=0.9"
  [hot_d64]="$HOT model.d_model=64 model.d_ff=256"
  [hot_lr_1e-2]="optim.lr=1e-2 optim.online_lr=1e-2"
  [hot_no_ln_relu]="$HOT model.layer_norm=false model.activation=relu"
  [hot_wd_0.1]="$HOT optim.weight_decay=0.1"
  [hot_wd_1]="$HOT optim.weight_decay=1.0"
  [hot_steps_100]="$HOT stream.phases.0.steps=100"
  [hot_pool_4]="$HOT stream.phases.0.tasks=4"
  [hot_gradual]="$HOT stream.transition=gradual stream.window=25"
  [long_200]="stream.phases.0.repeat=200"
  [hot_long_200]="$HOT stream.phases.0.repeat=200"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || mapfile -t names < <(printf '%s\n' "${!POINTS[@]}" | sort)
for name in "${names[@]}"; do
  [ -n "${POINTS[$name]+x}" ] || { echo "plasticity_search.sh: unknown point '$name'; choose from: $(printf '%s\n' "${!POINTS[@]}" | sort | xargs)" >&2; exit 2; }
done
for name in "${names[@]}"; do
  # a point whose seeds all finished is not run again, only tabulated
  [ -f "$OUT/$name/aggregate.json" ] ||
  # shellcheck disable=SC2086  # the points are lists of overrides
  plasticity run loss_of_plasticity $BASE ${POINTS[$name]} seeds="$SEEDS" run.dir="$OUT/$name" progress=false \
    logger.wandb.mode=disabled ${WORKERS:+trainer.workers=$WORKERS} >/dev/null
  echo "== $name: ${POINTS[$name]:-(base)}"
  python "$(dirname "${BASH_SOURCE[0]}")/plasticity_decline.py" "$OUT/$name" --figures "end-of-phase KL,gap to fresh,weight norm,dormant"
done
