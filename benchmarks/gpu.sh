#!/usr/bin/env bash
# Issue 18's GPU path: on a machine with an NVIDIA GPU, this repository and PyPI only (no hub: the models are the
# offline ones of DESIGN §2, converted from PyPI wheels), run
#   1. the packing benchmark in bf16 with MFU (useful FLOPs over the measured bf16 matmul rate),
#   2. prefrec beside TRL's DPOTrainer in bf16 (k = 1 and 15),
#   3. one learning-curve point at full size (1,000 training samples = 3,000 pairs; zero-shot, SFT, SFT+DPO,
#      SFT+DMPO; the whole 702-user test split) on both offline models, resumable: re-run to continue.
#   bash benchmarks/gpu.sh                     # all three, results under $OUT (default benchmarks/results/gpu)
#   STEPS="1 2" bash benchmarks/gpu.sh          # only the benchmarks
#   SHOTS=333 bash benchmarks/gpu.sh            # another curve point
# Expected on one H100/H200-class GPU: setup 3-5 min (torch CUDA wheel), 1 ~5 min, 2 ~3 min, 3 about an hour
# (eval of 702 users x 3 comparisons per method and model dominates). Each step writes its own result files, so a
# time limit that stops step 3 keeps 1 and 2.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
STEPS=${STEPS:-"1 2 3"}
SHOTS=${SHOTS:-1000}
PREFREC_TORCH=${PREFREC_TORCH:-torch} bash scripts/setup.sh
.venv/bin/python -m pip install -q -e ".[bench]"
mkdir -p "$OUT"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
.venv/bin/python -c "import torch, sys; print('cuda', torch.cuda.is_available(), torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); sys.exit(0 if torch.cuda.is_available() else 3)" \
  | tee "$OUT/torch.txt" || { echo "gpu.sh: torch sees no CUDA device; nothing run" >&2; exit 3; }
for step in $STEPS; do
  case $step in
    1) .venv/bin/python benchmarks/packing.py --device cuda --dtype bf16 --ks 1 3 15 63 --repeats 5 \
         --out-dir "$OUT" --name packing-bf16 ;;
    2) .venv/bin/python benchmarks/vs_trl.py --dtype bf16 --ks 1 15 --repeats 10 --out-dir "$OUT" --name vs_trl-bf16 ;;
    3) .venv/bin/prefrec experiment configs/experiments/learning-curve.yaml --only ml-100k \
         --set "models=[embedded,gemma3-270m]" --set "shots=[$SHOTS]" \
         --set "output_dir=$OUT/learning-curve" --set "report_dir=$OUT/learning-curve-report" ;;
    *) echo "gpu.sh: unknown step $step (expected 1, 2 or 3)" >&2; exit 2 ;;
  esac
done
