# Strongroom. `make run` starts the demo, `make test` runs every check; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test check lint typecheck pytest bench sysdeps venv clean

sysdeps:
	@scripts/sysdeps.sh

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@touch $@

# sslyze (the TLS scanner of tests/apache) pins cryptography below the project's pin: its own venv.
SSLYZE_VENV := .venv-sslyze
$(SSLYZE_VENV)/.stamp: tests/apache/requirements-sslyze.txt
	@test -x $(SSLYZE_VENV)/bin/python || $(PYTHON) -m venv $(SSLYZE_VENV)
	@$(SSLYZE_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/apache/requirements-sslyze.txt
	@touch $@

venv: $(VENV)/.stamp $(SSLYZE_VENV)/.stamp

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
pytest: sysdeps venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

test: sysdeps venv lint typecheck pytest

# `make run APACHE=1`: the demo behind a private Apache (mod_ssl + ModSecurity), as in production.
APACHE ?= 0

run: sysdeps venv
	@DEMO_APACHE=$(APACHE) scripts/run-demo.sh

bench: sysdeps venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
