# convo: `make run` starts everything; `make test` runs every check CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck schema pytest clean-data

$(BIN)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m convo.launcher

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy .

schema: install
	DJANGO_SETTINGS_MODULE=convo.settings.test $(BIN)/python manage.py makemigrations --check --dry-run
	DJANGO_SETTINGS_MODULE=convo.settings.test $(BIN)/python manage.py spectacular --validate --fail-on-warn --file $(VENV)/openapi.yaml

pytest: install
	$(BIN)/python -m pytest

test: lint typecheck schema pytest

clean-data:
	rm -rf .data
