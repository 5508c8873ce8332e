#!/usr/bin/env bash
# The README's main command: set up .venv, then run the quickstart (ML-100K -> SFT -> eval against zero-shot -> report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prefrec quickstart "$@"
