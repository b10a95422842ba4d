# One command to run the live demo, one to run every check.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-test test-deps demo test lint

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)
	$(PIP) install --quiet -e '.[lab]'

install-test: $(PY) test-deps
	$(PIP) install --quiet -e '.[lab,test]'

# Debian packages the tests use: Chromium for the browser tests (Playwright's own browser
# download cannot work here) and shellcheck for the deploy script.
test-deps:
	@(test -x /usr/bin/chromium && command -v shellcheck >/dev/null) || \
		(apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-core shellcheck)

demo: install
	$(VENV)/bin/drivendata demo

lint: install-test
	$(VENV)/bin/ruff check drivendata tests benchmarks
	$(VENV)/bin/ruff format --check drivendata tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q
