# Strongroom. `make run` starts the demo, `make test` runs every check; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test test-cluster check lint typecheck pytest bench sysdeps venv axe lock audit clean

sysdeps:
	@scripts/sysdeps.sh

# Every package comes from a hash lock (docs/supply-chain.md): pip refuses any file whose hash differs.
# requirements-dev.txt holds the runtime tree too, at requirements.txt's versions. Wheels only: an sdist
# would be built with build tools fetched without a hash check.
PIP_INSTALL := -m pip install -q --disable-pip-version-check --require-hashes
$(VENV)/.stamp: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) $(PIP_INSTALL) --only-binary=:all: -r requirements-dev.txt
	@touch $@

# sslyze (the TLS scanner of tests/apache) pins cryptography below the project's pin: its own venv.
# sslyze publishes only an sdist: its build tools come first, from their own hash lock, and build it
# without build isolation (which would fetch them unchecked).
SSLYZE_VENV := .venv-sslyze
SSLYZE_LOCKS := tests/apache/requirements-sslyze-build.txt tests/apache/requirements-sslyze.txt
$(SSLYZE_VENV)/.stamp: $(SSLYZE_LOCKS)
	@test -x $(SSLYZE_VENV)/bin/python || $(PYTHON) -m venv $(SSLYZE_VENV)
	@$(SSLYZE_VENV)/bin/python $(PIP_INSTALL) --only-binary=:all: -r tests/apache/requirements-sslyze-build.txt
	@$(SSLYZE_VENV)/bin/python $(PIP_INSTALL) --only-binary=:all: --no-binary=sslyze --no-build-isolation \
		-r tests/apache/requirements-sslyze.txt
	@touch $@

venv: $(VENV)/.stamp $(SSLYZE_VENV)/.stamp

# axe-core, the accessibility engine the real-browser tests inject into every page
# (tests/e2e/test_console_browser.py): from npm, by `npm ci` from the committed lock (integrity hashes
# checked), with no install scripts run. nodejs and npm come from scripts/debian-packages.txt.
AXE := tests/e2e/axe
$(AXE)/node_modules/.stamp: $(AXE)/package.json $(AXE)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: \`make sysdeps\` as root installs it" >&2; exit 1; }
	@cd $(AXE) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

axe: sysdeps $(AXE)/node_modules/.stamp

# Recompile the hash locks from the *.in files, keeping every pin that still fits (scripts/lock.py).
# Upgrade with `make lock UPGRADE="--upgrade-package cryptography"` (or UPGRADE=--upgrade: everything).
lock: $(VENV)/.stamp
	$(PY) scripts/lock.py $(UPGRADE)

# No locked release has a known advisory: pip-audit against the vendored PyPA advisory data, served on
# loopback as an OSV API (scripts/audit.py; refresh the data with scripts/advisories.py refresh CLONE).
audit: $(VENV)/.stamp
	$(PY) scripts/audit.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
run_pytest = @$(PY) -m pytest $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

# The whole suite runs as four pytest processes side by side (scripts/pytest-tracks.sh says why and
# how it is split); `make pytest PYTEST_ARGS="tests/keyd -x"` runs just those tests, in one process.
pytest: sysdeps venv axe
ifeq ($(strip $(PYTEST_ARGS)),)
	@scripts/pytest-tracks.sh $(PY)
else
	$(call run_pytest,$(PYTEST_ARGS))
endif

test: sysdeps venv lint typecheck pytest

# The multi-node deployment alone (docs/scaling.md): three Galera nodes, HAProxy and two web nodes in
# network namespaces, with machines failing under load (about 3 minutes; `make test` runs it too).
test-cluster: sysdeps venv
	$(call run_pytest,-m cluster tests/cluster $(PYTEST_ARGS))

# `make run APACHE=1`: the demo behind a private Apache (mod_ssl + ModSecurity), as in production.
APACHE ?= 0

run: sysdeps venv
	@DEMO_APACHE=$(APACHE) scripts/run-demo.sh

bench: sysdeps venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) $(AXE)/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
