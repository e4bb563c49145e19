# Two entry points for a fresh machine; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test
demo: $(VENV)/.installed
	bash demo.sh

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@
