#!/usr/bin/env bash
# The ML-1M learning curve of issue 27 (configs/experiments/ml1m-curve.yaml), in the order its choices need:
#
#   bash scripts/ml1m-curve.sh lr       # SFT at 1,000 samples, three learning rates, VALIDATION split only
#                                       # (and zero-shot on the same validation samples)
#   bash scripts/ml1m-curve.sh choose   # the validation table (docs/results/ml1m-curve/lr.md) and the chosen lr
#   bash scripts/ml1m-curve.sh curve    # test cells at the chosen lr: zero-shot, SFT, prompt-facts, baselines
#   bash scripts/ml1m-curve.sh dmpo     # DMPO from the chosen SFT point
#   bash scripts/ml1m-curve.sh seeds    # seeds 1 and 2 of the chosen point
#   bash scripts/ml1m-curve.sh report   # one report of every finished cell (docs/results/ml1m-curve)
#
# Every part is resumable (a killed cell continues from its last checkpoint; finished cells are skipped). Outputs go
# to $EXP (default experiments/ml1m-curve); the chosen lr is read from $EXP/chosen-lr.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PREFREC:-.venv/bin/prefrec}
C=configs/experiments/ml1m-curve.yaml
EXP=${EXP:-experiments/ml1m-curve}
LRS=(3.0e-4 1.0e-3 3.0e-3)
LETTER=ml-1m-hybrid-letter

chosen() { cat "$EXP/chosen-lr"; }
test_cells() { $P experiment $C --set "output_dir=$EXP/test" --set "sft.lr=$(chosen)" "$@"; }
curve() { test_cells --no-report "$@"; }

case "${1:?usage: ml1m-curve.sh lr|choose|curve|dmpo|seeds|report}" in
  lr)
    for lr in "${LRS[@]}"; do
      $P experiment $C --only $LETTER --only sft --set 'shots=[1000]' --set "sft.lr=$lr" \
          --set "output_dir=$EXP/lr-$lr" --set eval.split=valid --no-report
    done
    # the zero-shot model on the same validation samples: the reference of choose's paired tests
    data=$(ls -d "$EXP/lr-${LRS[0]}"/data/$LETTER-pairwise-seed0)
    [ -e "$EXP/valid/zero-shot/results.json" ] || $P eval embedded --samples "$data" --split valid --dtype bf16 \
        --out "$EXP/valid/zero-shot"
    ;;
  choose)
    .venv/bin/python docs/results/ml1m-curve/choose_lr.py "$EXP" "${LRS[@]}" > "$EXP/chosen-lr"
    cat "$EXP/chosen-lr"
    ;;
  curve)
    # the chosen lr's trained 1,000-sample run is the test cell's run (training is the same; only the split of its
    # evaluation differs), so it is not trained twice
    src=$(ls -d "$EXP/lr-$(chosen)"/cells/$LETTER/sft-*shots1000*seed0/run)
    dst="$EXP/test/cells/$LETTER/$(basename "$(dirname "$src")")"
    if [ ! -e "$dst/run" ]; then mkdir -p "$dst" && cp -r "$src" "$dst/run"; fi
    curve --only $LETTER --set 'shots=[1000]' --only zero-shot --only sft --only prompt-facts --only popularity \
        --only sasrec
    curve --only ml-1m-text-letter --set 'shots=[1000]'
    curve --only ml-1m-hybrid-title --set 'shots=[1000]'
    curve --only $LETTER --only sft --set 'shots=[3000]'
    ;;
  dmpo)
    curve --only $LETTER --only dmpo --set 'shots=[1000]'
    ;;
  seeds)
    for s in 1 2; do
      curve --only $LETTER --only zero-shot --only sft --only prompt-facts --set 'shots=[1000]' --set "seeds=[$s]"
    done
    ;;
  report)
    test_cells --set 'seeds=[0,1,2]' --set 'shots=[1000,3000,10000]' --set report_dir=docs/results/ml1m-curve/report \
        --report-only
    ;;
  *) echo "unknown part $1" >&2; exit 2 ;;
esac
