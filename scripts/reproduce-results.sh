#!/usr/bin/env bash
# The exact commands behind docs/results/: every experiment config, run at the reduced size that fits a 2-core CPU
# in about two hours (one seed, fewer training users and test users than the configs' defaults; the --set flags
# say which). Each part is resumable; run one part per process, e.g. two at a time with OMP_NUM_THREADS=1:
#
#   OMP_NUM_THREADS=1 bash scripts/reproduce-results.sh pairwise &
#   OMP_NUM_THREADS=1 bash scripts/reproduce-results.sh candidates-ml100k &
#
# Order: quickstart before pairwise and fig7 (they reuse its runs); candidates-report last (it only rewrites the
# S-DPO report over both datasets).
#
# Drop the --set flags to run a config at its full size (5 seeds, 100-200 training users, 200-300 test users).
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/prefrec

part=${1:?usage: reproduce-results.sh quickstart|learning-curve|learning-curve-candidates|learning-curve-models|pairwise|negatives|crossdomain|candidates-ml100k|candidates-lastfm|candidates-report|shots|fig7|llara|llara-pairwise}
case "$part" in
  quickstart)
    # the README's quickstart: the learning curve's 1,000-sample point (hybrid prompt, zero-shot vs SFT on all 702
    # test users) in bf16 where the CPU has fast bf16 matmuls, without LoRA dropout; then its cells for seeds 1 and 2
    # and one report of the three seeds (docs/results/quickstart)
    $P quickstart --out runs/quickstart-curve
    for s in 1 2; do $P experiment runs/quickstart-curve/experiment.yaml --set "seeds=[$s]" --no-report; done
    $P experiment runs/quickstart-curve/experiment.yaml --set 'seeds=[0,1,2]' \
        --set report_dir=docs/results/quickstart --report-only
    ;;
  learning-curve)
    # issue 12: the cells run so far: SFT at 333 and 1,000 training samples (3 pairs each), DMPO and DPO from the
    # 1,000-sample SFT model, the baselines as reference lines, then one report of them all; drop --set shots and the
    # --only flags for the whole curve (days of 2-core CPU; gpu.sh on a GPU)
    B="--only popularity --only liked-share --only bpr --only sasrec --only gru4rec"
    lc() { $P experiment configs/experiments/learning-curve.yaml --only ml-100k --set 'models=[embedded]' "$@"; }
    lc --set 'shots=[333,1000]' --only zero-shot --only sft $B
    lc --set 'shots=[1000]' --only dmpo --only dpo
    lc --set 'shots=[333,1000]' --only zero-shot --only sft --only dmpo --only dpo $B --report-only
    ;;
  learning-curve-candidates)
    # issue 12: the candidates task (20 titles) of the curve: zero-shot, SFT and SFT + S-DPO (k = 3) at 333 training
    # samples and three baselines on all 1,000 test samples, ranked by likelihood only (generation would add ~50 min
    # per cell on 2 cores), then one report (docs/results/learning-curve/candidates)
    lc() { $P experiment configs/experiments/learning-curve.yaml --only ml-100k-candidates --set 'models=[embedded]' \
        --set output_dir=experiments/learning-curve-candidates --set eval.generate=false "$@"; }
    lc --set 'shots=[333]' --only zero-shot --only sft --only sdpo --only popularity --only liked-share --only sasrec \
        --set report_dir=docs/results/learning-curve/candidates
    ;;
  learning-curve-models)
    # issue 12: the second offline model (gemma3-270m) and a 600-sample point beside the embedded model's seed-2
    # cells of the quickstart regime (run `quickstart` first; fp32 on a CPU without fast bf16), five baselines on the
    # same test samples, then one report (docs/results/learning-curve/models-seed2)
    Q=runs/quickstart-curve/experiment.yaml
    $P experiment $Q --set 'seeds=[2]' --set 'models=[gemma3-270m]' --no-report
    $P experiment $Q --set 'seeds=[2]' --set 'shots=[600]' --only sft --no-report
    $P experiment $Q --set 'seeds=[2]' --set 'methods=[popularity, liked-share, bpr, sasrec, gru4rec]' \
        --set 'regimes=[full]' --no-report
    $P experiment $Q --set 'seeds=[2]' --set 'methods=[zero-shot, sft, popularity, liked-share, bpr, sasrec, gru4rec]' \
        --set 'regimes=[full]' --set 'models=[embedded, gemma3-270m]' --set 'shots=[600, 1000]' \
        --set report_dir=docs/results/learning-curve/models-seed2 --report-only
    ;;
  pairwise)
    # DMPO Table 2 (ML-100K rows: + DPO and six baselines in two regimes) and Figure 5 (both offline models; k = 3),
    # the papers' few-shot protocol; their cells share runs/quickstart (the folder of the first quickstart, whose
    # cells are table 2's zero-shot, sft and dmpo cells), and fig7 reads its runs
    $P experiment configs/experiments/dmpo-table2.yaml --only ml-100k \
        --set output_dir=runs/quickstart --set 'seeds=[0]' --set eval.limit=100
    $P experiment configs/experiments/dmpo-fig5-models.yaml \
        --set output_dir=runs/quickstart --set 'seeds=[0]' --set eval.limit=100 --set 'ks=[3]'
    ;;
  negatives)
    # DMPO Figure 3: k = 1, 3, 5 on 30 training users
    $P experiment configs/experiments/dmpo-fig3-negatives.yaml \
        --set 'seeds=[0]' --set 'ks=[1, 3, 5]' --set 'shots=[30]' --set eval.limit=30
    ;;
  crossdomain)
    # DMPO Table 3: Movies -> Games and Games -> Movies, 30 training users of the source domain
    $P experiment configs/experiments/dmpo-table3-crossdomain.yaml \
        --set 'seeds=[0]' --set 'shots=[30]' --set eval.limit=30 --set 'methods=[zero-shot, sft, dmpo, cmf]'
    ;;
  candidates-ml100k|candidates-lastfm|candidates-report)
    # S-DPO on the candidates task, 30 training users, 15 test samples, with the six traditional baselines in both
    # regimes; then (ML-100K) the beta study, which shares the SFT run and the beta = 1 cell
    only=(--only ml-100k); [ "$part" = candidates-lastfm ] && only=(--only lastfm); [ "$part" = candidates-report ] && only=()
    $P experiment configs/experiments/sdpo-candidates.yaml "${only[@]}" \
        --set output_dir=experiments/sdpo --set 'seeds=[0]' --set 'shots=[30]' --set eval.limit=15 \
        --set 'methods=[zero-shot, sft, dpo, sdpo, popularity, bpr, sasrec, gru4rec, bert4rec, caser]' \
        --set 'regimes=[few-shot, full]'
    if [ "$part" = candidates-ml100k ]; then
      $P experiment configs/experiments/sdpo-k-beta.yaml \
          --set output_dir=experiments/sdpo --set 'seeds=[0]' --set 'shots=[30]' --set eval.limit=15 \
          --set 'ks=[3]' --set 'betas=[0.1, 1.0, 5.0]'
    fi
    ;;
  shots)
    # DMPO Figure 4: DMPO alone vs SFT + DMPO with 20 and 50 training users
    $P experiment configs/experiments/dmpo-fig4-shots.yaml \
        --set 'seeds=[0]' --set 'shots=[20, 50]' --set eval.limit=30
    ;;
  fig7)
    # DMPO Figure 7: conditional probabilities of positives vs negatives, the quickstart's models
    $P explain zero-shot=embedded sft=runs/quickstart/cells/ml-100k/sft-seed0/run \
        sft+dmpo=runs/quickstart/cells/ml-100k/dmpo-k3-beta0.1-seed0/run \
        --samples runs/quickstart/data/ml-100k-pairwise-seed0/test.jsonl --compare --limit 30 \
        --out docs/results/dmpo-fig7
    ;;
  llara)
    # issue 28: collaborative item tokens, seed 0, 200 training samples; ML-100K likelihood only, then its five LLM
    # adapters re-evaluated with generation; LastFM with both; then the paired tests against SASRec
    L=configs/experiments/llara-candidates.yaml
    X=(--set 'seeds=[0]' --set train.model.dtype=bf16 --set eval.dtype=bf16)
    $P experiment $L --only ml-100k --set output_dir=experiments/llara --set eval.generate=false "${X[@]}" \
        --set report_dir=docs/results/llara-candidates
    $P experiment $L --only ml-100k --only sasrec --only prompt-facts --only zero-shot --only sft \
        --set output_dir=experiments/llara --set eval.generate=false "${X[@]}" --set 'seeds=[1]' --no-report
    # seed 2 ran in fp32 (an AVX2-only CPU), so in its own folder (an output folder holds one precision); the
    # three-seed report reads both folders' cells gathered in one
    $P experiment $L --only ml-100k --only sasrec --only prompt-facts --only zero-shot --only sft \
        --set output_dir=experiments/llara-fp32 --set eval.generate=false --set 'seeds=[2]' \
        --set train.model.dtype=fp32 --set eval.dtype=fp32 --no-report
    cp -r experiments/llara-fp32/cells/ml-100k/*-seed2 experiments/llara/cells/ml-100k/
    $P experiment $L --only ml-100k --set output_dir=experiments/llara --set eval.generate=false "${X[@]}" \
        --set 'seeds=[0,1,2]' --set report_dir=docs/results/llara-candidates --report-only
    C=experiments/llara/cells/ml-100k
    for cell in zero-shot-seed0 sft-var-text-seed0 sft-var-hybrid-seed0 sdpo-var-text-k3-beta1-seed0 \
        sdpo-var-hybrid-k3-beta1-seed0; do
      model=$C/$cell/run; [ $cell = zero-shot-seed0 ] && model=embedded
      $P eval $model --samples experiments/llara/data/ml-100k-candidates-seed0 --split test --limit 200 --generate \
          --dtype bf16 --seed 0 --out docs/results/llara-candidates/generation/ml-100k/$cell
    done
    $P experiment $L --only lastfm --set output_dir=experiments/llara-lastfm "${X[@]}" \
        --set report_dir=docs/results/llara-candidates/lastfm
    $P experiment $L --only ml-100k --only sasrec --only prompt-facts --only zero-shot --only sft \
        --set datasets.ml-100k.prepare.n_train=600 --set datasets.ml-100k.prepare.n_valid=100 --set sft.epochs=1 \
        --set output_dir=experiments/llara-600 --set eval.generate=false "${X[@]}" \
        --set report_dir=docs/results/llara-candidates/ml-100k-600
    .venv/bin/python docs/results/llara-candidates/vs_sasrec.py
    ;;
  llara-pairwise)
    # issue 28, the pairwise task: text-only vs item-token SFT at 600 training samples, SASRec and prompt-facts
    # issue 40: with item-prior, so the report gives the floor and the prior-matched slice
    $P experiment configs/experiments/llara-pairwise.yaml --set output_dir=experiments/llara-pairwise \
        --set report_dir=docs/results/llara-pairwise --set train.model.dtype=bf16 --set eval.dtype=bf16 \
        --set "methods=[sasrec, prompt-facts, item-prior, sft, zero-shot]"
    .venv/bin/python docs/results/llara-pairwise/vs_sasrec.py
    ;;
  trunk-cache)
    # issue 39: one training step all-layer / top-N / top-N from the cache, then a whole grid end to end
    .venv/bin/python benchmarks/trunk_cache.py
    .venv/bin/python benchmarks/trunk_grid.py --layers 4 8 --work experiments/trunk-grid
    ;;
  *) echo "unknown part: $part" >&2; exit 2 ;;
esac
