#!/usr/bin/env bash
# The runs of the 2026-12-03 round (issues 19 and 20) and how their tables got here.
#
#   bash results/round2/collect.sh RUNS_DIR
#
# Each `sweep` line below is the exact command that trained the points (run from the repository
# root; the runs used the commits named in results/README.md). Rerun on a finished RUNS_DIR it
# retrains nothing: every point reuses its point.json, the sweep rewrites its tables and plots,
# and this script copies them (never the checkpoints) into results/round2/.
# Runs were single-threaded, two at a time, on the 2-core machine:
#   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
set -euo pipefail
R=${1:?usage: collect.sh RUNS_DIR}
H=$(cd "$(dirname "$0")" && pwd)
sweep() { python -m sleepjax.sweep --config.train.progress_bar=False "$@"; }
copy() { mkdir -p "$H/$2"; cp "$R/$1"/*.md "$R/$1"/*.json "$H/$2/"; cp "$R/$1"/*.png "$H/$2/" 2>/dev/null || true; }
R110_LR="--config.optim.muon_lr=0.01 --config.optim.adam_lr=0.0015"
DEPO="--config.train.batch_size=64 --config.train.steps=1000 --config.train.eval_every=100 --config.train.checkpoint_every=200 --config.train.eval_batch_size=128"

# 1. learning-rate grids on N = 1 (the paper's protocol)
sweep --config=experiments/rule110.py:cpu --workdir="$R/grid_r110" --lr_grid=1e-3,2e-3,4e-3,1e-2,2e-2 --seeds=0,1
copy grid_r110 lr_grid_rule110_cpu
sweep --config=experiments/rule110.py:tiny --workdir="$R/grid_tiny" --lr_grid=5e-3,1e-2,2e-2,4e-2 --seeds=0,1
copy grid_tiny lr_grid_rule110_tiny
sweep --config=experiments/depo.py:tiny --workdir="$R/grid_depo" --lr_grid=2e-3,5e-3,1e-2,2e-2 --lr_criterion=answer_loss --seeds=0,1 $DEPO
copy grid_depo lr_grid_depo_tiny

# 2. Fig. 2a analogue: N = 1 at every depth, 3 seeds
for t in 0 1 2 3 4; do
  sweep --config=experiments/rule110.py:cpu --workdir="$R/fig2a_t$t" --passes=1 --seeds=0,1,2 --eval_passes=none --config.task.t=$t $R110_LR
  copy "fig2a_t$t" "fig2a/t$t"
done
python experiments/analysis/plot_depths.py --out="$H/fig2a_rule110_depth.png" "$R"/fig2a_t{0,1,2,3,4}

# 3. Fig. 3 analogue (Depo tiny at the grid's rate)
sweep --config=experiments/depo.py:tiny --workdir="$R/fig3_depo" --passes=1,2,4 --seeds=0,1,2 --eval_passes=1,2,4,8 $DEPO --config.optim.muon_lr=0.02 --config.optim.adam_lr=0.006
copy fig3_depo fig3_depo

# 4. issue 19: the stable-training recipes at t = 2. Run as (in this order; the first was stopped
#    after seeds 0 and 1 of fixed N = 4, its seed 2 left a resumable checkpoint):
#      sweep ... --settings=0,6,1,3,5,4,7,2 --seeds=0,1,2   (stopped)
#      sweep ... --settings=6 --seeds=0 ; sweep ... --settings=1 --seeds=0 ; sweep ... --settings=0 --seeds=2
#    and the table is made from the finished points (N = 1 rows from Fig. 2a's t = 2 sweep):
ABL="--config=experiments/rule110.py:cpu --workdir=$R/abl_t2 --sweep=recipes --eval_passes=1,2,4,6,8,12 --eval_adaptive_tols=0.01,0.03,0.1 --adaptive_cap=12"
sweep $ABL --settings=0 --seeds=0,1,2
sweep $ABL --settings=6 --seeds=0
sweep $ABL --settings=1 --seeds=0
#    second session (2026-12-03 14:43-16:55 UTC, same commit b5e7822), two lanes, in this order:
#      lane A: --settings=6 --seeds=1 (resumed from its step-62 checkpoint), 2, 3, 4;
#              --settings=0 --seeds=3; --settings=6 --seeds=5 (held out); --settings=0 --seeds=5
#      lane B: Depo recipe seed 0 (below); --settings=0 --seeds=4; Depo recipe seeds 1, 2;
#              --settings=6 --seeds=6 (held out); --settings=0 --seeds=6
#    (the held-out points that had not finished when the session stopped are listed in
#    results/README.md "Not done"; a finished point is reused by any later command)
sweep $ABL --settings=6 --seeds=1,2,3,4
sweep $ABL --settings=0 --seeds=3,4
sweep $ABL --settings=6,0 --seeds=5,6
#    third session (2026-12-03 17:49 UTC on, same commit b5e7822), two lanes: lane A the fixed
#    law with the curriculum (setting 5), lane B the uniform law without it (setting 3), seeds 0-4
sweep $ABL --settings=5 --seeds=0,1,2,3,4
sweep $ABL --settings=3 --seeds=0,1,2,3,4
#      then the held-out seeds of the fixed law with the curriculum, one per lane (setting 3's
#      held-out seeds were not run)
sweep $ABL --settings=5 --seeds=5,6
sweep $ABL --settings=0,5,6 --seeds=0,1,2,3,4,5,6    # the plots and accuracy_vs_passes.{md,json}
cp "$R"/abl_t2/accuracy_vs_passes.{md,json} "$R"/abl_t2/*.png "$H/ablation_t2/"
mkdir -p "$H/ablation_t2"
for d in "$R"/abl_t2/*/; do [ -f "$d/point.json" ] && mkdir -p "$H/ablation_t2/$(basename "$d")" && cp "$d/point.json" "$H/ablation_t2/$(basename "$d")/"; done
python experiments/analysis/recipe_table.py "$R/abl_t2" --baseline "$R/fig2a_t2" --summary_seeds=0,1,2,3,4 --summary_seeds=5,6 > "$H/ablation_t2/table.md"

# 4b. the stable-training recipe (uniform 1..6 with the curriculum) on Depo tiny, against the
#     fixed N = 1 / 4 points of step 3; answer loss per k and seed of both sweeps
sweep --config=experiments/depo.py:tiny --workdir="$R/depo_recipe" --passes=4 --seeds=0,1,2 --eval_passes=1,2,4,8 $DEPO --config.optim.muon_lr=0.02 --config.optim.adam_lr=0.006 --config.sleep.train_passes=uniform:1:6 --config.sleep.passes_warmup_fraction=0.25
copy depo_recipe depo_recipe
python experiments/analysis/answer_loss_table.py "$R/fig3_depo" "$R/depo_recipe" > "$H/depo_recipe/answer_loss_per_seed.md"

# Depo diagnosis: residual-stream scale, fast-weight norm and dL/dS per (window, pass)
for n in 1 2; do
  python experiments/analysis/diagnose_sleep.py --config=experiments/depo.py:tiny $DEPO --config.optim.muon_lr=0.02 --config.optim.adam_lr=0.006 --config.sleep.passes=$n --run="$R/fig3_depo/passes${n}_seed0" --out="$H/fig3_depo/diagnose_N${n}_seed0.json"
done
python experiments/analysis/diagnose_sleep.py --config=experiments/depo.py:tiny $DEPO --config.optim.muon_lr=0.02 --config.optim.adam_lr=0.006 --config.sleep.passes=2 --out="$H/fig3_depo/diagnose_N2_init.json"

# 5. the README main job's configuration: tuning seeds, then the held-out seeds alone
MAIN="--config=experiments/rule110.py:tiny --workdir=$R/main_tiny --passes=1,4 --eval_passes=1,2,4,8 $R110_LR"
sweep $MAIN --seeds=0,1,2
copy main_tiny main_job/seeds_0-2
sweep $MAIN --seeds=3,4,5
copy main_tiny main_job/heldout_seeds_3-5
