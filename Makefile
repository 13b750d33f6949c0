# cloudseg: set-up, demo, tests and packaging on Debian 12 (bookworm).
#   make demo   installs everything missing, then segments a real Sentinel-2 chip
#   make test   installs everything missing, then runs lint and all tests

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV          ?= .venv
PY            := $(VENV)/bin/python
SYSTEM_PYTHON := /usr/bin/python3
APT_PACKAGES  := qgis python3-qgis qgis-providers python3-rasterio python3-gdal python3-venv xvfb \
                 chromium chromium-driver
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP         := $(VENV)/.cloudseg-installed
CLOUDSEG_REAL_DATA ?= $(abspath ../shared/data/real)
QGIS_PROFILE  ?= default
QGIS_PLUGINS_DIR ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/$(QGIS_PROFILE)/python/plugins
export CLOUDSEG_REAL_DATA


.PHONY: help install lock system-deps demo test test-fast test-backend test-plugin test-gui lint format deploy package wheel clean qgis screenshot

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP) ## system packages (QGIS 3.22, rasterio), .venv, torch, the project (editable)

system-deps: ## apt-get install the Debian packages that are missing
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "Installing Debian packages:" $$missing; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

LOCK := resources/locks/all.txt

# The venv holds exactly the lock: every version pinned, every file checked by its hash;
# the project itself goes in editable, without dependencies (they are the lock's).
$(STAMP): $(LOCK) pyproject.toml setup.py | system-deps
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

lock: install ## refresh resources/locks from backend/dependencies.py (uv), on purpose
	$(PY) scripts/lock.py

demo: install ## segment a real Sentinel-2 chip from ../shared/data/real
	$(PY) scripts/demo.py --data "$(CLOUDSEG_REAL_DATA)" --out demo_output

test: install lint test-backend test-plugin test-gui ## lint, then all tests

test-fast: install ## the inner loop: lint, then every test not marked slow (no desktop QGIS)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -p no:qgis -q -m "not slow" tests/backend tests/training tests/reliability tests/serve tests/packaging
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest -q -m "not slow" tests/plugin

test-backend: install ## backend, training, reliability, server and packaging tests (QGIS never imported)
	$(VENV)/bin/pytest -p no:qgis tests/backend tests/training tests/reliability tests/serve tests/packaging

test-plugin: install ## plugin tests with pytest-qgis, offscreen
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/pytest tests/plugin

test-gui: install ## the real QGIS desktop under Xvfb, driven as a user would (tests/gui)
	$(VENV)/bin/pytest -p no:qgis tests/gui

lint: install ## ruff check and format check; import-linter's architecture contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

deploy: ## link this folder into a QGIS profile as the plugin "cloudseg"
	@mkdir -p "$(QGIS_PLUGINS_DIR)"
	@if [ -e "$(QGIS_PLUGINS_DIR)/cloudseg" ] && [ ! -L "$(QGIS_PLUGINS_DIR)/cloudseg" ]; then \
	    echo "$(QGIS_PLUGINS_DIR)/cloudseg exists and is not a link; remove it first"; exit 1; fi
	ln -sfn "$(CURDIR)" "$(QGIS_PLUGINS_DIR)/cloudseg"
	@echo "Linked. Restart QGIS and enable cloudseg in Plugins > Manage and Install Plugins."

PACKAGE_DIR ?= dist
package: ## build dist/cloudseg-VERSION.zip for "Install from ZIP"
	$(SYSTEM_PYTHON) scripts/package_plugin.py --output-dir "$(PACKAGE_DIR)"

wheel: install ## build dist/cloudseg-VERSION-py3-none-any.whl for "pip install"
	rm -rf build  # setuptools would ship modules left in build/lib by an earlier build
	$(PY) -m pip wheel --no-deps --no-build-isolation --no-index -q -w "$(PACKAGE_DIR)" .

clean: ## remove build outputs and caches (keeps .venv)
	rm -rf dist build demo_output .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

QGIS_PLUGIN_LINK := $(CURDIR)/.qgis-plugins
SITE_PACKAGES = $(shell $(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

$(QGIS_PLUGIN_LINK)/cloudseg:
	mkdir -p $(QGIS_PLUGIN_LINK) && ln -sfn $(CURDIR) $@

qgis: install $(QGIS_PLUGIN_LINK)/cloudseg ## start QGIS with this checkout as plugin and the venv's packages
	PYTHONPATH=$(SITE_PACKAGES) QGIS_PLUGINPATH=$(QGIS_PLUGIN_LINK) qgis

screenshot: install $(QGIS_PLUGIN_LINK)/cloudseg ## docs/qgis*.png: QGIS under Xvfb (the dock after a run, the results, the dialog, the label dock, the dock run on a server, the install dialog of a fresh QGIS); docs/dashboard.png and docs/serve.png in headless Chromium
	rm -rf .qgis-screenshot-profile && mkdir -p .qgis-screenshot-profile/profiles/default/QGIS
	printf '[PythonPlugins]\ncloudseg=true\n' > .qgis-screenshot-profile/profiles/default/QGIS/QGIS3.ini
	PYTHONPATH=$(SITE_PACKAGES) QGIS_PLUGINPATH=$(QGIS_PLUGIN_LINK) \
	    CLOUDSEG_SCREENSHOT=$(CURDIR)/docs/qgis.png CLOUDSEG_SCREENSHOT_LOG=$(CURDIR)/.qgis-screenshot-profile/log.txt \
	    CLOUDSEG_MODELS_DIR=$(CURDIR)/.qgis-screenshot-profile/models \
	    xvfb-run -a -s "-screen 0 1600x1000x24" \
	    timeout 300 qgis --nologo --noversioncheck \
	        --profiles-path $(CURDIR)/.qgis-screenshot-profile \
	        --code $(CURDIR)/scripts/screenshot_qgis.py
	test -s docs/qgis.png && test -s docs/qgis-results.png && test -s docs/qgis-dialog.png && test -s docs/qgis-labels.png && test -s docs/qgis-review.png && test -s docs/qgis-server.png
	rm -rf .qgis-install-home && mkdir -p .qgis-install-home/.local/share/QGIS/QGIS3/profiles/default/QGIS
	printf '[PythonPlugins]\ncloudseg=true\n' > .qgis-install-home/.local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini
	env -i HOME=$(CURDIR)/.qgis-install-home PATH=/usr/bin:/bin LANG=C.UTF-8 \
	    QGIS_PLUGINPATH=$(QGIS_PLUGIN_LINK) CLOUDSEG_SCREENSHOT=$(CURDIR)/docs/qgis-install.png \
	    xvfb-run -a -s "-screen 0 1600x1000x24" \
	    timeout 300 qgis --nologo --noversioncheck --code $(CURDIR)/scripts/screenshot_install.py
	test -s docs/qgis-install.png
	$(PY) scripts/screenshot_dashboard.py --data "$(CLOUDSEG_REAL_DATA)" --out docs/dashboard.png
	$(PY) scripts/screenshot_serve.py --data "$(CLOUDSEG_REAL_DATA)" --out docs/serve.png
