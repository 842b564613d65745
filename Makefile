# The two commands a newcomer runs (see README.md). Both install what they need first.
.PHONY: setup demo test lint bench

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
