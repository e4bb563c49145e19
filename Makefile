# Three entry points for a fresh machine; each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APP_FLAGS ?=

.PHONY: demo test app
demo: $(VENV)/.installed
	bash demo.sh

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

# the web page on http://127.0.0.1:7860 (make app APP_FLAGS="--port 8080")
app: $(VENV)/.installed
	$(PY) app.py $(APP_FLAGS)

$(VENV)/.installed: requirements.txt requirements-app.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-app.txt
	touch $@
