# FlowMesh: the targets a newcomer would guess.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

#: Debian packages the tests use: PostgreSQL 15 with pg_cron (the schedule tests),
#: iproute2 (network namespaces for the LAN discovery test), pgbouncer (the
#: connection pooler beside the embedded server: `flowmesh db up --pooler` and
#: the agent tests run through it), dbus-daemon (a private system bus with BlueZ
#: mocked, for the BLE tests) with the headers python-dbusmock's dbus-python builds with,
#: and chromium (the dashboard's browser tests drive it headless through Playwright).
SYSTEM_PACKAGES := postgresql-15 postgresql-15-cron iproute2 pgbouncer dbus-daemon \
                   libdbus-1-dev libglib2.0-dev chromium
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test system-deps db-up db-stop bench bench-deps lint clean supabase-migrations

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# after system-deps: python-dbusmock builds dbus-python against Debian's headers
$(TEST_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

## run: the whole product on the embedded database until Ctrl-C (flowmesh up): the database and
## its pooler, this device's agent, the scheduled checks and the dashboard, whose URL comes first;
## `make run DEMO=1` adds a simulated fleet (flowmesh demo)
run: $(STAMP)
	@$(VENV)/bin/flowmesh up$(if $(DEMO), --demo)

## test: install what the tests need and run them
test: system-deps $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## system-deps: Debian's PostgreSQL 15, pg_cron, iproute2, pgbouncer and dbus, through apt-get (as root)
system-deps:
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  echo "disabling the system-wide pgbouncer service the package starts: FlowMesh runs its own"; \
	  systemctl disable --now pgbouncer >/dev/null 2>&1 || true; \
	else echo "not installing $(SYSTEM_PACKAGES) (needs root and apt-get): the pg_cron, network namespace and pooler tests will be skipped"; fi

db-up: $(STAMP)
	$(VENV)/bin/flowmesh db up

db-stop: $(STAMP)
	$(VENV)/bin/flowmesh db stop

## bench: ingest, server CPU per heartbeat, agent footprint, mesh (beside Serf), fleet-scale check,
## fleet size, relay round trip, path failover, dashboard and hash registry benchmarks
bench: $(STAMP) bench-deps
	@# numpy generates the registry benchmark's vectors (the bench extra)
	$(PY) -m pip install --quiet -e '.[bench]'
	@# compiled once, as an installed package is: with PYTHONDONTWRITEBYTECODE set,
	@# every mesh member process would otherwise compile the package at start
	$(PY) -m compileall -q flowmesh flowmesh_edge bench
	$(PY) bench/ingest.py
	$(PY) bench/heartbeat_cost.py
	$(PY) bench/agent_footprint.py
	$(PY) bench/mesh.py
	$(PY) bench/check.py
	$(PY) bench/fleet.py --direct
	$(PY) bench/relay.py
	$(PY) bench/failover.py
	$(PY) bench/dashboard.py
	$(PY) bench/registry.py

## bench-deps: Debian's serf (the mesh benchmark's comparison), nftables (its datagram
## counters) and pgbouncer (the fleet benchmark's pooler, started by the benchmark itself:
## the service the package starts is stopped), through apt-get (as root)
BENCH_PACKAGES := serf nftables pgbouncer
bench-deps:
	@if dpkg -s $(BENCH_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(BENCH_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(BENCH_PACKAGES) >/dev/null; \
	  service pgbouncer stop >/dev/null 2>&1 || true; \
	else echo "not installing $(BENCH_PACKAGES) (needs root and apt-get): the mesh benchmark runs without Serf, the fleet benchmark without a pooler"; fi

lint: $(STAMP)
	$(PY) -m pip install --quiet 'ruff>=0.5'
	$(VENV)/bin/ruff check .

## supabase-migrations: copy sql/ to supabase/migrations/ under the CLI's names
supabase-migrations: $(STAMP)
	$(PY) -m flowmesh.supabase_sync

clean:
	rm -rf $(VENV) .pytest_cache
