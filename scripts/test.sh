#!/usr/bin/env bash
# The test command: quality gates first (fast), then the whole pytest suite. Fails on any failure and
# passes pytest's exit code through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff check";         ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy";               mypy
echo "== lint-imports";       lint-imports
echo "== pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
exit $rc
