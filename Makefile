# Two commands do everything on a fresh Debian machine, as root: `make run` and `make test`.
# Setup is idempotent: system packages are checked by command, the venv is rebuilt only
# when pyproject.toml changes.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup sysdeps run test lint bench clean

setup: sysdeps $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: setup
	@bash examples/demo.sh

lint: setup
	$(VENV)/bin/ruff check corral tests bench
	$(VENV)/bin/mypy corral/

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: setup
	@bash bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info
