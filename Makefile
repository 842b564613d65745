# The two commands a newcomer runs (see README.md). Both install what they need first.
.PHONY: setup demo test lint bench serve reliability

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint:
	bash scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

bench: setup
	.venv/bin/python benchmarks/durable_fanout.py

# Serve the app on this machine (the analogue of `func start`); `aib` finds it through .state/runtime.json.
serve: setup
	@test -f local.settings.json || { cp local.settings.example.json local.settings.json; echo "created local.settings.json from local.settings.example.json"; }
	.venv/bin/python -m local_runtime start . --state-dir .state

# The long reliability suite (chaos kills, concurrent builds, faults, API fuzzing) and RELIABILITY.md.
reliability:
	bash scripts/reliability.sh
