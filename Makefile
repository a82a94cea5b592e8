# FlowMesh: the targets a newcomer would guess.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test db-up db-stop bench lint clean supabase-migrations

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: start the embedded database and run the edge agent on this machine
run: $(STAMP)
	$(VENV)/bin/flowmesh db up
	$(VENV)/bin/flowmesh-edge run

## test: install what the tests need and run them
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

db-up: $(STAMP)
	$(VENV)/bin/flowmesh db up

db-stop: $(STAMP)
	$(VENV)/bin/flowmesh db stop

## bench: ingest benchmark and agent footprint (prints figures and ratios)
bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/agent_footprint.py
	$(PY) bench/mesh.py

lint: $(STAMP)
	$(PY) -m pip install --quiet 'ruff>=0.5'
	$(VENV)/bin/ruff check .

## supabase-migrations: copy sql/ to supabase/migrations/ under the CLI's names
supabase-migrations: $(STAMP)
	$(PY) -m flowmesh.supabase_sync

clean:
	rm -rf $(VENV) .pytest_cache
