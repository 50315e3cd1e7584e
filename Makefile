# Two commands for a fresh clone: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FLASK := $(VENV)/bin/flask --app wsgi
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)
DEMO_PORT ?= 5000
STRIPE_PORT ?= 8420
DEMO_INSTANCE ?= instance
PYTEST_ARGS ?= -n auto

.PHONY: demo test install lint format bench clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## make demo: install, migrate and seed the SQLite database, start the Stripe simulator, the mailer
## and the portal, and print sign-in links once every part answers (scripts/demo.py)
demo: install
	@$(PY) scripts/demo.py --port $(DEMO_PORT) --stripe-port $(STRIPE_PORT) --instance $(DEMO_INSTANCE)

## make test: install the dev tools and run the whole suite (SQLite and, when reachable, PostgreSQL)
test: install
	@start=$$(date +%s); \
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s"; exit $$status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench

clean-demo:
	rm -f instance/portal.sqlite3 instance/portal.sqlite3-*
