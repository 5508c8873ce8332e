#!/usr/bin/env bash
# Create .venv and install prefrec into it. torch is installed first, pinned to the CPU build that pip finds on CPU
# machines, so that resolving the other dependencies never pulls multi-GB CUDA wheels. On a GPU machine set
# PREFREC_TORCH="torch" (or a CUDA build) to choose your own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "${PREFREC_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
