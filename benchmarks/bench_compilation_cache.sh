#!/usr/bin/env bash
# Wall time of the README main job's sweep (6 points: N in {1, 4} x seeds 0-2, each evaluated at
# N' in {1, 2, 4, 8}) without JAX's persistent compilation cache and with a fresh one, side by
# side, at a reduced step count so that compilation (the same at any length) is what differs.
#
#   bash benchmarks/bench_compilation_cache.sh [STEPS]      (default 50; from the repository root)
set -euo pipefail
steps=${1:-50}
out=$(mktemp -d)
S=(--config=experiments/rule110.py:tiny --passes=1,4 "--config.train.steps=$steps"
   "--config.train.eval_every=$steps" "--config.train.checkpoint_every=$steps"
   --config.train.progress_bar=false)
declare -A wall
for mode in none cache; do
  cache=none; [ "$mode" = cache ] && cache="$out/jax_cache"
  t0=$(date +%s.%N)
  python -m sleepjax.sweep "${S[@]}" --workdir="$out/$mode" --compilation_cache_dir="$cache" \
    > "$out/$mode.log" 2>&1 || { echo "the $mode sweep failed: see $out/$mode.log"; exit 1; }
  wall[$mode]=$(python -c "import time; print(round(time.time() - $t0, 1))")
done
python - "${wall[none]}" "${wall[cache]}" "$steps" <<'PY'
import sys
none, cache, steps = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"main job sweep at {steps} steps: no cache {none:.1f} s, fresh cache {cache:.1f} s, "
      f"ratio {cache / none:.2f} (saved {none - cache:.1f} s)")
PY
rm -rf "$out"
