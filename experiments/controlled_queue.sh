#!/usr/bin/env bash
# The controlled study's queue (docs/preregistration.md): one run at a time, in the registered
# order, each committed to main with its small files and weights as soon as it finishes.
#
#   git worktree add /work/study HEAD            # a frozen copy of the code the runs train with
#   cd /work/study && nice -n 10 bash experiments/controlled_queue.sh /work/main > /work/logs/queue.log 2>&1 &
#
# $1: the checkout whose docs/results/controlled receives the runs and whose main branch gets the
# commits (default: this checkout).  Finished runs are skipped, an interrupted one resumes from its
# checkpoint (same machine only: checkpoints are not committed), so the same command continues the
# queue in every session.  Float32 everywhere (--amp off): the study keeps one precision.
set -euo pipefail
code="$(cd "$(dirname "$0")/.." && pwd)"
target="$(cd "${1:-$code}" && pwd)"
results="$target/docs/results"
order=()
for seed in 3 4 5 6 7; do order+=("rigl $seed" "cigl-keep0.99 $seed"); done
for seed in 3 4 5; do order+=("cigl-no-rm $seed"); done
for seed in 3 4 5; do order+=("cigl-no-wma-keep0.99 $seed"); done

for cell in "${order[@]}"; do
  read -r method seed <<<"$cell"
  run="$method-plain-s0.95-seed$seed"
  folder="$results/controlled/runs/$run"
  if [ -f "$folder/metrics.json" ] && git -C "$target" ls-files --error-unmatch "$folder/metrics.json" >/dev/null 2>&1; then
    continue  # finished and committed
  fi
  echo "$(date -u +%FT%TZ) start $run on $(python -c 'import platform; print(platform.processor() or platform.machine())')"
  (cd "$code" && PYTHONPATH="$code" python -m experiments.sweep --protocol controlled --results "$results" \
      --study controlled --amp off --methods "$method" --seeds "$seed" --no-progress)
  for try in 1 2 3 4 5; do  # another git command may hold the index for a moment
    if git -C "$target" add -- "docs/results/controlled" && \
       git -C "$target" commit -q -m "controlled: $run (float32)" --only -- "docs/results/controlled"; then
      break
    fi
    sleep 5
  done
  echo "$(date -u +%FT%TZ) committed $run"
done
echo "$(date -u +%FT%TZ) queue done"
