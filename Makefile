# The README's two commands.  `make run`: set up and run the main job on the embedded default.
# `make test`: set up and run the default test suite.
VENV ?= .venv
OUT ?= hwnas-out

.PHONY: setup run test test-slow bench
setup:
	bash scripts/setup.sh

run: setup
	$(VENV)/bin/hwnas run --out $(OUT)

test:
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=10

test-slow:
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m pytest -q -m slow
