#!/usr/bin/env bash
# The long reliability suite and its report: chaos kills across real builds, concurrent builds, injected
# faults and API fuzzing (tests/reliability, IMAGEBUILDER_RELIABILITY=long), then RELIABILITY.md from the
# figures. Took 14 min on 2 shared cores (load 6, 2026-12-06). The short suite is part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
results=$(mktemp /tmp/reliability-XXXXXX.jsonl)
set +e
IMAGEBUILDER_RELIABILITY=long IMAGEBUILDER_RELIABILITY_RESULTS="$results" \
  .venv/bin/python -m pytest tests/reliability -m reliability -p no:cacheprovider "$@"
rc=$?
set -e
.venv/bin/python scripts/reliability_report.py "$results" > RELIABILITY.md
echo "RELIABILITY.md written from $results (pytest exit $rc)"
exit $rc
