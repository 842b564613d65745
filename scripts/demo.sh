#!/usr/bin/env bash
# The main job: set everything up, start the local runtime, and build a real image from an example
# template through the HTTP API, printing progress per phase and the run outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
