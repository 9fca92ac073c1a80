# The two commands that matter: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint fleet clean

# The hot path compiled with mypyc (relay/hot_path.py), again whenever its sources change;
# without a C compiler it stays interpreted.
install: $(STAMP)
	@$(BIN)/python scripts/compile_hot_path.py --if-stale

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/python -m pip install --quiet -e '.[server,test]'
	@touch $(STAMP)

run: install
	$(BIN)/relay serve

test: install lint
	@sh scripts/ensure-test-deps.sh  # PowerDNS, Chromium and promtool for the DNS, browser and deploy tests (apt, once)
	$(BIN)/python -m pytest -q
	@# The same unit tests on the interpreted sources: what runs without a C compiler, or
	@# when a hot-path module changed since its build (relay/hot_path.py).
	RELAY_COMPILED=0 $(BIN)/python -m pytest -q tests/unit

bench: install  # one table of the performance goals; `make bench BENCH_ARGS=--quick` for a smoke run
	@command -v wrk >/dev/null && command -v haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk haproxy)
	@sh scripts/ensure-test-deps.sh  # PowerDNS for the DNS rows (apt, once)
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)

fleet: install  # three relays on one Valkey behind relay edge, one host and agent; Ctrl-C stops it
	$(BIN)/python scripts/fleet.py

lint: install
	$(BIN)/ruff check relay directory tests loadtest scripts
	$(BIN)/ruff format --check relay directory tests loadtest scripts
	$(BIN)/mypy --strict relay directory

clean:
	rm -rf $(VENV) .relay .relay-fleet .pytest_cache .mypy_cache .ruff_cache relay/_compiled
