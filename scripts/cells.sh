#!/usr/bin/env bash
# Run an experiment grid one cell group at a time and commit each finished group's results, so that the cells of a
# long grid survive a session that ends (issue #40 part 5). Meant to run in its own git worktree, in the background:
#
#   git worktree add ../wt-exp && cd ../wt-exp && bash scripts/setup.sh   # or link the main checkout's .venv
#   nohup bash scripts/cells.sh configs/experiments/ml1m-table2.yaml "sft dpo dmpo" > cells.log 2>&1 &
#   ONLY_GIVEN=1 EXTRA="--only ml-1m-text-title --set shots=[1000]" \
#       bash scripts/cells.sh configs/experiments/ml1m-curve.yaml "zero-shot sft item-prior" 0
#
# For each seed, then each method (the order given, then the grid's other methods), it runs
# `prefrec experiment CONFIG --only METHOD --set seeds=[SEED] --no-report` (which copies the finished cells' small
# files under docs/results/<name>/cells) and commits them; after each seed it writes the report there and commits it. A finished cell is skipped by the experiment itself, so running
# the script again continues where it stopped. Every torch command takes the lock $LOCK (default /tmp/torch.lock)
# and waits a little after each group, so that another torch job waiting on the same lock runs between two groups
# rather than beside one (one torch job at a time on a small machine).
set -euo pipefail
cd "$(dirname "$0")/.."
# this checkout's code, not the one an editable install of a shared .venv points to
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
CONFIG=${1:?usage: cells.sh CONFIG [METHODS...] [SEEDS...]}
P=${PREFREC:-.venv/bin/prefrec}  # word-split: "python -m prefrec" works too
PY=${PYTHON:-.venv/bin/python}
LOCK=${LOCK:-/tmp/torch.lock}
EXP=${EXP:-experiments/$(basename "$CONFIG" .yaml)}
read -r -a FIRST <<< "${2:-}"
read -r -a SEEDS <<< "${3:-$("$PY" -c 'import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))["seeds"])' "$CONFIG")}"
read -r -a ALL <<< "$("$PY" -c 'import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))["methods"])' "$CONFIG")"
METHODS=("${FIRST[@]}")
# ONLY_GIVEN=1: just the methods given (a part of a large grid), not the grid's others after them
[[ "${ONLY_GIVEN:-0}" == 1 ]] || for m in "${ALL[@]}"; do [[ " ${METHODS[*]} " == *" $m "* ]] || METHODS+=("$m"); done
REPORT=docs/results/$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$CONFIG")

commit() { git add -A "$REPORT"; git diff --cached --quiet || git commit -q -m "$1"; }

mkdir -p "$REPORT/cells"  # git add of a missing folder fails: a group with no cell publishes nothing
for seed in "${SEEDS[@]}"; do
  for m in "${METHODS[@]}"; do
    echo "$(date -u +%FT%TZ) cells: $m seed $seed"
    # shellcheck disable=SC2086  # $EXTRA: more experiment options, word-split (e.g. "--only LABEL --set shots=[1000]")
    # --no-report still copies the finished cells' small files under $REPORT/cells, to commit here
    flock "$LOCK" $P experiment "$CONFIG" --set "output_dir=$EXP" --set "seeds=[$seed]" --only "$m" --no-report ${EXTRA:-}
    commit "$(basename "$CONFIG" .yaml): $m seed $seed finished (#40)"
    sleep "${YIELD_S:-30}"
  done
  # the report (a few minutes of bootstraps on a large grid) once per seed; its experiment.json records the
  # settings that let a later session count the committed cells as done. SEED_REPORT=0 leaves it to a report
  # made from another checkout (the main one's code, with this output folder linked under it)
  [[ "${SEED_REPORT:-1}" == 1 ]] || continue
  flock "$LOCK" $P experiment "$CONFIG" --set "output_dir=$EXP" --report-only
  commit "$(basename "$CONFIG" .yaml): report after seed $seed (#40)"
done
echo "$(date -u +%FT%TZ) cells: all done"
