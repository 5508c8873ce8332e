#!/usr/bin/env bash
# The GPU measurements (issues 18 and 44), in order of value, in one command with one time limit, everything under
# one folder ($OUT). On a machine with an NVIDIA GPU and PyPI reachable (the models are the offline ones of DESIGN
# §2; the data come from ../shared/data, the cache, or a fetch):
#   1. trunk   the trunk-cache benchmark in bf16 with MFU (benchmarks/trunk_cache.py --device cuda)
#   2. trl     the packed preference step against TRL's DPOTrainer in bf16, with TRL's best GPU settings beside
#              its defaults: precompute_ref_log_probs (the `cached` rows), padding_free and Liger kernels where
#              liger-kernel installs (`--trl-fast`)
#   3. vllm    vLLM generation against transformers' greedy answers: tests/test_vllm_generate.py (the same answers),
#              then `prefrec eval` on 200 candidates samples with each backend (time and answers side by side)
#   4. curve   a short ML-1M learning-curve point: 1,000 training samples, zero-shot / SFT / SFT+DMPO on the trunk
#              cache (configs/experiments/ml1m-curve.yaml), resumable
#   5. fsdp    FSDP2 (configs/accelerate/fsdp.yaml) on one GPU against a plain single-process run of the same config
#   6. packing the packed tree against one sequence per response in bf16 (benchmarks/packing.py), peak memory, MFU
#
#   bash benchmarks/gpu.sh                       # all parts, 60 minutes in all, results under benchmarks/results/gpu
#   LIMIT_MIN=20 PARTS="trunk fsdp" bash benchmarks/gpu.sh
#   SETUP=0 bash benchmarks/gpu.sh               # .venv is ready (CUDA torch, the bench extra): install nothing
#   VLLM=1 bash benchmarks/gpu.sh                # also pip install vllm (it pins its own torch: use a spare .venv)
# Each part runs under the time left and is skipped, saying why, when its dependency is missing or the time is
# spent; $OUT/parts.tsv records each part's status (exit code or the reason) and seconds, $OUT/gpu.log the output.
set -uo pipefail  # no -e: a part that fails is recorded and the next one still runs
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
LIMIT_MIN=${LIMIT_MIN:-60}
PARTS=${PARTS:-"trunk trl vllm curve fsdp packing"}
PY=.venv/bin/python
DEADLINE=$(( $(date +%s) + LIMIT_MIN * 60 ))
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
: > "$OUT/parts.tsv"

skip() { echo "gpu.sh: $1 skipped: $2"; printf '%s\tskipped: %s\t0\n' "$1" "$2" >> "$OUT/parts.tsv"; }
have() { $PY -c "import $1" >/dev/null 2>&1; }
# part NAME COMMAND...: run it under the time left (at least a minute), record its exit code and seconds
part() {
  local name=$1 left=$(( DEADLINE - $(date +%s) )) t0 rc
  shift
  if (( left < 60 )); then skip "$name" "the ${LIMIT_MIN}-minute limit is spent"; return; fi
  echo "== gpu.sh: $name ($(( left / 60 )) min left)"
  t0=$(date +%s)
  timeout "$left" bash -c "$*"  # the parts are functions, exported below, run in a child bash under timeout
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/parts.tsv"
}
# the folder of a dataset's original files (../shared/data, the cache, or a fetch), or nothing
source_of() { $PY -c "from prefrec.data.fetch import ensure_dataset; print(ensure_dataset('$1'))" 2>/dev/null; }

if [ "${SETUP:-1}" = 1 ]; then
  PREFREC_TORCH=${PREFREC_TORCH:-torch} bash scripts/setup.sh
  $PY -m pip install -q -e ".[bench]" || echo "gpu.sh: the bench extra (TRL) did not install"
  $PY -m pip install -q liger-kernel || echo "gpu.sh: liger-kernel did not install; TRL runs without it"
  if [ "${VLLM:-0}" = 1 ]; then $PY -m pip install -q vllm || echo "gpu.sh: vllm did not install"; fi
fi
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, sys; print('cuda', torch.cuda.is_available(), torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); sys.exit(0 if torch.cuda.is_available() else 3)" \
  | tee "$OUT/torch.txt" || { echo "gpu.sh: torch sees no CUDA device; nothing run" >&2; exit 3; }

trunk() {
  $PY benchmarks/trunk_cache.py --device cuda --dtypes bf16 --threads 4 --samples 8 --layers 2 4 8 \
    --out-dir "$OUT" --name trunk_cache-bf16
}

trl() {
  $PY benchmarks/vs_trl.py --dtype bf16 --ks 1 15 --repeats 10 --trl-fast --out-dir "$OUT" --name vs_trl-bf16
}

vllm() {
  local src data="$OUT/data/ml100k-candidates"
  $PY -m pytest -q -p no:cacheprovider tests/test_vllm_generate.py | tee "$OUT/vllm-test.txt"
  src=$(source_of ml-100k) || { echo "gpu.sh: vllm timing skipped: no ML-100K source"; return 0; }
  [ -f "$data/stats.json" ] || .venv/bin/prefrec data prepare --dataset ml-100k --source "$src" --task candidates \
    --out "$data"
  for backend in transformers vllm; do
    SECONDS=0
    .venv/bin/prefrec eval embedded --samples "$data" --limit 200 --dtype bf16 --gen-backend "$backend" \
      --out "$OUT/vllm-eval-$backend" || return
    echo "$backend $SECONDS s" > "$OUT/vllm-$backend.time"
  done
  $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {b: [json.loads(x) for x in (out / f"vllm-eval-{b}" / "per_sample.jsonl").read_text().splitlines()]
        for b in ("transformers", "vllm")}
keys = [k for k in rows["vllm"][0] if "generat" in k or "answer" in k]
same = sum(all(a.get(k) == b.get(k) for k in keys) for a, b in zip(rows["transformers"], rows["vllm"]))
times = {b: (out / f"vllm-{b}.time").read_text().strip() for b in rows}
text = f"{same} of {len(rows['vllm'])} samples answer alike ({', '.join(keys)}); {times}\n"
(out / "vllm-compare.txt").write_text(text)
print(text, end="")
EOF
}

curve() {
  source_of ml-1m >/dev/null || { echo "gpu.sh: curve skipped: no ML-1M source"; return 0; }
  .venv/bin/prefrec experiment configs/experiments/ml1m-curve.yaml --only ml-1m-text-title --only zero-shot \
    --only sft --only dmpo --set "shots=[1000]" --set "output_dir=$OUT/ml1m-curve" \
    --set "report_dir=$OUT/ml1m-curve-report"
}

fsdp() {
  local src data="$OUT/data/ml100k-pairwise-k3" run
  src=$(source_of ml-100k) || { echo "gpu.sh: fsdp skipped: no ML-100K source"; return 0; }
  [ -f "$data/stats.json" ] || .venv/bin/prefrec data prepare --dataset ml-100k --source "$src" --task pairwise \
    --negatives 3 --out "$data"
  rm -rf "$OUT/fsdp-1gpu" "$OUT/plain-1gpu"
  # the same config twice, LoRA dropout off (masks are the only randomness the two paths could draw differently)
  set -- configs/ml100k-sft-dmpo-k3.yaml --set "data.dir=$data" --set lora.dropout=0.0
  .venv/bin/prefrec train "$@" --set "output_dir=$OUT/plain-1gpu" || return
  $PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
    --mixed_precision no -m prefrec train "$@" --set "output_dir=$OUT/fsdp-1gpu" || return
  $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {r: [json.loads(x) for x in (out / f"{r}-1gpu" / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["split"] == "train"] for r in ("plain", "fsdp")}
worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["plain"], rows["fsdp"]))
info = json.loads((out / "fsdp-1gpu" / "run.json").read_text())
text = (f"FSDP on one GPU ({info.get('distributed')}): {len(rows['fsdp'])} steps, largest loss difference from the "
        f"plain run {worst:.2e}\n")
(out / "fsdp-compare.txt").write_text(text)
print(text, end="")
EOF
}

export OUT PY
export -f source_of trunk trl vllm curve fsdp packing
packing() {
  $PY benchmarks/packing.py --device cuda --dtype bf16 --ks 1 3 15 63 --repeats 5 --out-dir "$OUT" --name packing-bf16
}

for name in $PARTS; do
  case $name in
    trunk) part trunk trunk ;;
    trl) if have trl; then part trl trl; else skip trl "TRL is not installed (pip install -e '.[bench]')"; fi ;;
    vllm) if have vllm; then part vllm vllm; else skip vllm "vLLM is not installed (VLLM=1 installs it)"; fi ;;
    curve) part curve curve ;;
    fsdp) part fsdp fsdp ;;
    packing) part packing packing ;;
    *) echo "gpu.sh: unknown part $name (expected trunk trl vllm curve fsdp packing)" >&2; exit 2 ;;
  esac
done
cat "$OUT/parts.tsv"
