#!/usr/bin/env bash
# The learning curve at full size on a GPU machine that has only this repository and PyPI (no hub, no datasets
# beyond ../shared or the recbole wheel): every cell of configs/experiments/learning-curve.yaml on the embedded model,
# resumable (re-run to continue). Results go to $OUT (default benchmarks/results/gpu/).
#   bash benchmarks/gpu.sh                      # the whole curve
#   bash benchmarks/gpu.sh --only ml-100k       # pairwise only (extra arguments go to `prefrec experiment`)
# Not yet here (issue 18): the packing benchmark in bf16 and MFU on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PREFREC_TORCH=${PREFREC_TORCH:-torch} bash scripts/setup.sh
mkdir -p "$OUT"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
.venv/bin/python -c "import torch; print('cuda', torch.cuda.is_available(), torch.__version__)" | tee "$OUT/torch.txt"
exec .venv/bin/prefrec experiment configs/experiments/learning-curve.yaml \
  --set "output_dir=$OUT/learning-curve" --set "report_dir=$OUT/learning-curve-report" "$@"
