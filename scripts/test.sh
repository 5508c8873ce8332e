#!/usr/bin/env bash
# The README's test command: set up .venv, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The serving page's browser test (tests/test_page.py) drives Debian's chromium through its driver; where they are
# missing and apt can install them (root), install them; elsewhere that one test is skipped, saying why.
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
    >/dev/null 2>&1 || echo "scripts/test.sh: chromium could not be installed; the page's browser test will be skipped"
fi
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, never a silent pass.
exit $rc
