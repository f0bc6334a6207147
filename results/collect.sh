#!/usr/bin/env bash
# Copy the sweeps' tables and figures (not their checkpoints) from a runs directory into results/,
# after regenerating each sweep's summary from its finished points (nothing is retrained):
#   bash results/collect.sh RUNS_DIR
set -euo pipefail
R=${1:?usage: collect.sh RUNS_DIR}
H=$(cd "$(dirname "$0")" && pwd)
copy_sweep() { mkdir -p "$H/$2"; cp "$R/$1"/accuracy_vs_passes.{json,md} "$R/$1"/*.png "$H/$2/"; }
sweep() { python -m sleepjax.sweep --config=experiments/rule110.py:tiny --config.train.progress_bar=False "$@"; }
T2="--config.task.t=2 --config.train.steps=960 --config.train.eval_every=96 --config.train.checkpoint_every=480 --config.optim.muon_lr=4e-3 --config.optim.adam_lr=6e-4"
sweep --workdir="$R/e5_r110_t2" --passes=1,4 --seeds=0,1,2,3,4 --eval_passes=1,4,8 $T2
copy_sweep e5_r110_t2 rule110_t2_N1_N4_5seeds
sweep --workdir="$R/e1_r110_t1" --passes=1,4 --seeds=0,1,2,3,4,5 --eval_passes=1,4,8
copy_sweep e1_r110_t1 rule110_t1_N1_N4_6seeds
sweep --workdir="$R/e1_r110_t1" --passes=1,2,3,4 --seeds=0,1,2
copy_sweep e1_r110_t1 rule110_t1_N1234
for t in 0 1 2 3; do copy_sweep "e3_depth_t$t" "rule110_depth_N1/t$t"; done
copy_sweep e4_depo depo_tiny_300steps
copy_sweep e4b_depo_long depo_tiny_1200steps
python experiments/analysis/plot_depths.py --out="$H/fig2a_rule110_depth.png" "$R"/e3_depth_t{0,1,2,3}
