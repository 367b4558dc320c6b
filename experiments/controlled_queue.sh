#!/usr/bin/env bash
# The controlled study's queue (docs/preregistration.md): one run at a time, in the registered
# order, each committed to main with its small files and weights as soon as it finishes.
#
#   git worktree add /work/study <commit>         # a frozen copy of the code the runs train with
#   cd /work/study && nice -n 10 bash experiments/controlled_queue.sh /work/main /work/study-runs \
#       > /work/logs/queue.log 2>&1 &
#
# $1: the checkout whose docs/results/controlled receives the runs and whose main branch gets the
#     commits (default: this checkout).
# $2: where runs train (default: $1/docs/results).  Give a folder outside any git checkout: a
#     checkout's untracked files may be cleaned between sessions, and with them an unfinished run's
#     checkpoint.  The committed files of the study are copied there first (tracked files only, so an
#     unfinished run there is never overwritten), so the sweep's tables count every committed run;
#     each finished run and the tables the sweep rebuilt are copied back into $1 and committed
#     (.gitignore keeps weights and samples out).  The registered analysis (registered.*,
#     validation_curves.png: experiments.controlled_study) is written on $1 only, never copied back.
# Finished runs are skipped, an interrupted one resumes from its checkpoint, so the same command
# continues the queue in every session.  Float32 everywhere (--amp off): the study keeps one precision.
set -euo pipefail
code="$(cd "$(dirname "$0")/.." && pwd)"
target="$(cd "${1:-$code}" && pwd -P)"
committed="$target/docs/results"
work="${2:-$committed}"
mkdir -p "$work/controlled"
work="$(cd "$work" && pwd -P)"
if [ "$work" != "$committed" ] && [ -d "$committed/controlled" ]; then
  # the committed runs and tables: tracked files only, so nothing unfinished in $work is overwritten
  (cd "$committed" && git ls-files -z -- controlled | xargs -0 --no-run-if-empty cp -a --parents -t "$work")
fi
# written by experiments.controlled_study on $1, never by the sweep: not copied back from $work
not_the_sweeps=(registered.md registered.json validation_curves.png)
order=()
for seed in 3 4 5 6 7; do order+=("rigl $seed" "cigl-keep0.99 $seed"); done
for seed in 3 4 5; do order+=("cigl-no-rm $seed"); done
for seed in 3 4 5; do order+=("cigl-no-wma-keep0.99 $seed"); done

for cell in "${order[@]}"; do
  read -r method seed <<<"$cell"
  run="$method-plain-s0.95-seed$seed"
  folder="$committed/controlled/runs/$run"
  if [ -f "$folder/metrics.json" ] && git -C "$target" ls-files --error-unmatch "$folder/metrics.json" >/dev/null 2>&1; then
    continue  # finished and committed
  fi
  echo "$(date -u +%FT%TZ) start $run on $(python -c 'import platform; print(platform.processor() or platform.machine())')"
  (cd "$code" && PYTHONPATH="$code" python -m experiments.sweep --protocol controlled --results "$work" \
      --study controlled --amp off --methods "$method" --seeds "$seed" --no-progress)
  if [ "$work" != "$committed" ]; then  # the finished run, then the study tables the sweep rebuilt
    mkdir -p "$committed/controlled/runs"
    cp -a "$work/controlled/runs/$run" "$committed/controlled/runs/"
    for file in "$work/controlled"/*; do
      name="$(basename "$file")"
      if [ -f "$file" ] && [[ ! " ${not_the_sweeps[*]} " == *" $name "* ]]; then
        cp -a "$file" "$committed/controlled/$name"
      fi
    done
  fi
  committed_ok=no
  for try in 1 2 3 4 5; do  # another git command may hold the index for a moment
    if git -C "$target" add -- "docs/results/controlled" && \
       git -C "$target" commit -q -m "controlled: $run (float32)" --only -- "docs/results/controlled"; then
      committed_ok=yes
      break
    fi
    sleep 5
  done
  if [ "$committed_ok" != yes ]; then
    echo "$(date -u +%FT%TZ) error: could not commit $run; its files are in $committed/controlled" >&2
    exit 1
  fi
  echo "$(date -u +%FT%TZ) committed $run"
done
echo "$(date -u +%FT%TZ) queue done"
