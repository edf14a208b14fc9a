# The two commands a new user needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
AGENTS ?= 3

.PHONY: setup setup-test demo test lint bench clean

# The virtualenv with every extra, and mosquitto (apt-get where missing).
setup:
	@VENV=$(VENV) scripts/setup.sh

# The same, plus what only the tests need: chromium and a local PostgreSQL.
setup-test:
	@VENV=$(VENV) EDGEFLEET_TEST_SERVICES=1 scripts/setup.sh

demo: setup
	$(BIN)/edgefleet demo --agents $(AGENTS)

# Two workers, one per core; a test file stays on one worker so its module fixtures are
# set up once.
test: setup-test
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .edgefleet .pytest_cache .mypy_cache .ruff_cache
