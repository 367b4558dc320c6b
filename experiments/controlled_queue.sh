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
#     registered_paired.png, validation_curves.png: experiments.controlled_study; posthoc.*:
#     experiments.controlled_posthoc, which it runs; the folder's README.md)
#     is written on $1 only, never copied back.
# After each run: for a rigl run, the last-layer Laplace baseline on its committed weights
# (experiments.laplace_baseline, with $1's code: evaluation, not training) and its re-evaluation
# under recomputed-augmented statistics with a temperature (experiments.reevaluate --out
# docs/results/controlled/reevaluated), the sweep's tables
# rebuilt with $1's code (experiments.sweep --tables-only), then the registered analysis
# (experiments.controlled_study), all committed.  A failure there is logged and retried
# by the next start of the queue; it never stops the training.
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
not_the_sweeps=(registered.md registered.json registered_paired.png validation_curves.png README.md
                posthoc.md posthoc.json)
order=()
for seed in 3 4 5 6 7; do order+=("rigl $seed" "cigl-keep0.99 $seed"); done
for seed in 3 4 5; do order+=("cigl-no-rm $seed"); done
for seed in 3 4 5; do order+=("cigl-no-wma-keep0.99 $seed"); done

tracked() { git -C "$target" ls-files --error-unmatch "$1" >/dev/null 2>&1; }

commit_study() {  # $1: the commit message; only docs/results/controlled is committed
  local try
  for try in 1 2 3 4 5; do  # another git command may hold the index for a moment
    if git -C "$target" add -- "docs/results/controlled" && \
       git -C "$target" commit -q -m "$1" --only -- "docs/results/controlled"; then
      return 0
    fi
    sleep 5
  done
  return 1
}

evaluate_after() {  # $1: method, $2: run name; the evaluations of a committed run, with $1's code
  local done_what=()
  if [ "$1" = rigl ] && ! tracked "$committed/controlled/runs/$2/laplace.json" && \
     ! tracked "$committed/controlled/runs/$2/diverged.json"; then  # a diverged run has no weights to fit on
    if (cd "$target" && PYTHONPATH="$target" python -m experiments.laplace_baseline \
          "docs/results/controlled/runs/$2" --no-progress); then
      done_what+=("last-layer Laplace")
    else
      echo "$(date -u +%FT%TZ) error: the Laplace baseline of $2 failed; the next start retries it" >&2
    fi
  fi
  # RigL's last weights under recomputed-augmented statistics with a temperature of their own (the post
  # hoc "strongest no-retraining baseline", which the runs' metrics.json predate): a re-evaluation
  if [ "$1" = rigl ] && ! tracked "$committed/controlled/reevaluated/$2.json" && \
     ! tracked "$committed/controlled/runs/$2/diverged.json"; then
    if (cd "$target" && PYTHONPATH="$target" python -m experiments.reevaluate "docs/results/controlled/runs/$2" \
          --bn-protocols recomputed-augmented --predictors final --out docs/results/controlled/reevaluated \
          --no-progress > /dev/null); then
      done_what+=("re-evaluation")
    else
      echo "$(date -u +%FT%TZ) error: the re-evaluation of $2 failed; the next start retries it" >&2
    fi
  fi
  # the sweep's generic tables again, with $1's report code (the frozen copy trains; $1 reports)
  if (cd "$target" && PYTHONPATH="$target" python -m experiments.sweep --protocol controlled --results docs/results \
        --study controlled --amp off --tables-only --no-progress > /dev/null); then
    done_what+=("study tables")
  else
    echo "$(date -u +%FT%TZ) error: rebuilding the study tables failed after $2" >&2
  fi
  if (cd "$target" && PYTHONPATH="$target" python -m experiments.controlled_study docs/results/controlled); then
    done_what+=("registered analysis")
  else
    echo "$(date -u +%FT%TZ) error: the registered analysis failed after $2" >&2
  fi
  if ! git -C "$target" diff --quiet HEAD -- docs/results/controlled || \
     [ -n "$(git -C "$target" ls-files --others --exclude-standard -- docs/results/controlled)" ]; then
    local what
    what="$(printf '%s, ' "${done_what[@]}")"
    commit_study "controlled: after $2, ${what%, }" || {
      echo "$(date -u +%FT%TZ) error: could not commit the evaluations of $2" >&2; exit 1; }
  fi
}

for cell in "${order[@]}"; do
  read -r method seed <<<"$cell"
  run="$method-plain-s0.95-seed$seed"
  folder="$committed/controlled/runs/$run"
  if tracked "$folder/diverged.json"; then
    continue  # diverged and committed: a failure of its method for that seed, never retried (preregistration)
  fi
  if [ -f "$folder/metrics.json" ] && tracked "$folder/metrics.json"; then
    if [ "$method" = rigl ] && { ! tracked "$folder/laplace.json" || \
                                 ! tracked "$committed/controlled/reevaluated/$run.json"; }; then
      evaluate_after "$method" "$run"  # an earlier session ended before its Laplace baseline or re-evaluation
    fi
    continue  # finished and committed
  fi
  echo "$(date -u +%FT%TZ) start $run on $(python -c 'import platform; print(platform.processor() or platform.machine())')"
  status=0
  (cd "$code" && PYTHONPATH="$code" python -m experiments.sweep --protocol controlled --results "$work" \
      --study controlled --amp off --methods "$method" --seeds "$seed" --no-progress) || status=$?
  if [ "$status" -ne 0 ]; then
    if [ ! -f "$work/controlled/runs/$run/diverged.json" ]; then
      echo "$(date -u +%FT%TZ) error: $run stopped (exit $status); the next start resumes it" >&2
      exit "$status"
    fi
    # diverged (a non-finite loss): a failure of its method for this seed (docs/preregistration.md,
    # Exclusions and amendment 2), committed as such so the analysis counts it and no start retries it
    echo "$(date -u +%FT%TZ) $run diverged: committed as a failure of $method at seed $seed"
    if [ "$work" != "$committed" ]; then  # its marker and config only: no weights exist
      mkdir -p "$committed/controlled/runs/$run"
      cp -a "$work/controlled/runs/$run/diverged.json" "$committed/controlled/runs/$run/"
      [ ! -f "$work/controlled/runs/$run/config.json" ] || cp -a "$work/controlled/runs/$run/config.json" \
        "$committed/controlled/runs/$run/"
    fi
    commit_study "controlled: $run diverged (float32)" || {
      echo "$(date -u +%FT%TZ) error: could not commit the divergence of $run" >&2; exit 1; }
    evaluate_after "$method" "$run"
    continue
  fi
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
  if ! commit_study "controlled: $run (float32)"; then
    echo "$(date -u +%FT%TZ) error: could not commit $run; its files are in $committed/controlled" >&2
    exit 1
  fi
  echo "$(date -u +%FT%TZ) committed $run"
  evaluate_after "$method" "$run"
done
echo "$(date -u +%FT%TZ) queue done"
