# Two commands do everything on a fresh Debian machine, as root: `make run` and `make test`.
# Setup is idempotent: system packages are checked by command, the venv is rebuilt only
# when pyproject.toml changes (or when corral was installed with the import-hook finder).
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed
# corral is installed editable in setuptools' "compat" mode: a plain path entry (a .pth line
# naming this directory), so new modules in the tree import without reinstalling. The default
# mode installs an import-hook finder instead, which every corral process (each `corral run`)
# pays ~13 ms for at interpreter start. A venv that still has that finder (an older `make
# setup`, or a bare `pip install -e .`) is reinstalled by the next `make setup`.
EDITABLE := -e '.[dev]' --config-settings editable_mode=compat
OLD_FINDER := $(wildcard $(VENV)/lib/python3*/site-packages/__editable___corral_*_finder.py)

.PHONY: setup sysdeps web-assets run test lint bench clean FORCE

setup: sysdeps $(STAMP) web-assets

# The web UI's vendor files (npm ci into corral/server/web/assets-src; quick when done).
web-assets: sysdeps
	@bash scripts/web_assets.sh

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): pyproject.toml $(if $(OLD_FINDER),FORCE)
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check $(EDITABLE)
	@touch $(STAMP)

run: setup
	@bash examples/demo.sh

lint: setup
	$(VENV)/bin/ruff check corral tests bench
	$(VENV)/bin/mypy corral/
	$(VENV)/bin/lint-imports .importlinter

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: setup
	@bash bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info
