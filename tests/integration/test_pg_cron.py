"""Schedules on a real pg_cron: Debian's PostgreSQL 15 with postgresql-15-cron.

The test starts its own cluster as the postgres system user (PostgreSQL
refuses root), socket-only, with pg_cron preloaded, cron.database_name set
to the database under test, and background workers (a socket-only server has
no localhost for pg_cron's default libpq connection). It applies FlowMesh's
migrations there (no pgvector on this server), installs a schedule through
the CLI and waits (bounded: until the next minute, when pg_cron 1.4 runs jobs)
for the job to run and the alert to appear. `make test` installs the packages;
without them, or without root, the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from flowmesh import migrations, schedule
from tests.conftest import wait_for

PG15 = Path("/usr/lib/postgresql/15")
DATABASE = "flowmesh_cron"
pytestmark = pytest.mark.slow


def as_postgres(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def cron_server():
    if not (PG15 / "bin" / "postgres").exists() or not (PG15 / "lib" / "pg_cron.so").exists():
        pytest.skip("needs Debian's postgresql-15 and postgresql-15-cron (make test installs them)")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root (and runuser) to run PostgreSQL as the postgres user")
    base = Path(tempfile.mkdtemp(prefix="flowmesh-pg15-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    # no TCP at all (listen_addresses = ''): the port only names the socket file
    # in this cluster's own directory, so the default cannot collide
    port = 5432
    try:
        as_postgres(str(PG15 / "bin" / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                    "--encoding=UTF8")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"""
listen_addresses = ''
unix_socket_directories = '{base}'
port = {port}
shared_preload_libraries = 'pg_cron'
cron.database_name = '{DATABASE}'
cron.use_background_workers = on
max_worker_processes = 20
""")
        as_postgres(str(PG15 / "bin" / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                    "start")
        admin = f"postgresql://postgres@/postgres?host={base}&port={port}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"create database {DATABASE}")
        yield f"postgresql://postgres@/{DATABASE}?host={base}&port={port}"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG15 / "bin" / "pg_ctl"), "-D",
                        str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def flowmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flowmesh"), *args],
                          capture_output=True, text=True, timeout=60)


def test_migrations_apply_on_postgres_15_without_pgvector(cron_server):
    migrations.upgrade(cron_server)
    with psycopg.connect(cron_server) as conn:
        version = conn.execute("show server_version_num").fetchone()[0]
        assert version.startswith("15")
        assert conn.execute("select count(*) from pg_available_extensions where name = 'vector'"
                            ).fetchone() == (0,)
        assert migrations.current_revision(conn) == migrations.head_revision()
        # the registry's functions exist, and say what is missing
        (tid,) = conn.execute("select register_node('home', 'cam')").fetchone()
        for call in ("select * from register_hashes(%s, '[]')", "select * from search_hashes(%s, '[1, 2]')",
                     "select * from hashes(%s)"):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match=r"extension vector \(pgvector\)"):
                conn.execute(call, (tid,))
            conn.rollback()


def seconds_to_next_minute() -> float:
    return 60 - time.time() % 60


def test_schedule_runs_the_check_in_the_database(cron_server):
    migrations.upgrade(cron_server)
    with psycopg.connect(cron_server, autocommit=True) as conn:
        conn.execute("select register_node('silent-site', 'cam')")  # never sends a heartbeat
    installed = flowmesh("schedule", "install", "--every", "1m", "--threshold-minutes", "0",
                         "--retention-days", "40", "--database-url", cron_server)
    assert installed.returncode == 0, installed.stderr
    assert "flowmesh-checks" in installed.stdout and "* * * * *" in installed.stdout
    listed = flowmesh("schedule", "list", "--database-url", cron_server)
    assert "flowmesh-checks" in listed.stdout
    assert "flowmesh-retention" in listed.stdout and "15 3 * * *" in listed.stdout
    try:
        with psycopg.connect(cron_server, autocommit=True) as conn:
            # the jobs run the very SQL the fallback loop runs, with the arguments given
            commands = dict(conn.execute("select jobname, command from cron.job"))
            assert commands == {
                schedule.CHECKS_JOB: schedule.command(conn, schedule.checks_call(0, 30)),
                schedule.RETENTION_JOB: schedule.command(conn, schedule.retention_call(40)),
            }
            assert "run_scheduled_checks(threshold_minutes => 0, window_size => 30)" in \
                commands[schedule.CHECKS_JOB]
            # pg_cron 1.4 runs jobs at the top of each minute: wait for the next one
            wait_for(lambda: conn.execute(
                "select count(*) from guardian_alerts where alert_type = 'mesh-degrading'"
            ).fetchone()[0] == 1, timeout=seconds_to_next_minute() + 20, interval=0.5)
            wait_for(lambda: conn.execute(
                "select count(*) from cron.job_run_details where end_time is not null").fetchone()[0],
                timeout=10, interval=0.2)
            runs = conn.execute("select j.jobname, d.status from cron.job_run_details d "
                                "join cron.job j using (jobid) order by d.end_time").fetchall()
        assert (schedule.CHECKS_JOB, "succeeded") in runs
        assert all(status == "succeeded" for _, status in runs), runs
    finally:
        removed = flowmesh("schedule", "remove", "--database-url", cron_server)
    assert removed.returncode == 0 and "removed 2 jobs" in removed.stdout
    assert "(none)" in flowmesh("schedule", "list", "--database-url", cron_server).stdout


def test_without_pg_cron_the_fallback_is_named(db_url):
    result = flowmesh("schedule", "install", "--every", "5m", "--database-url", db_url)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "python -m monitors.mesh_health --threshold-minutes 60 --every 5m" in result.stderr


def test_fallback_loop_runs_the_same_sql_and_stops_on_a_signal(conn, db_url):
    conn.execute("select register_node('silent-site', 'cam')")
    proc = subprocess.Popen([sys.executable, "-m", "monitors.mesh_health", "--threshold-minutes", "0",
                             "--every", "1s", "--retention-days", "40", "--window", "20",
                             "--database-url", db_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: conn.execute("select count(*) from guardian_alerts").fetchone()[0] == 1,
                 timeout=20)
        # at least one more cycle (each records its check): still one alert
        wait_for(lambda: conn.execute("select count(*) from check_runs").fetchone()[0] >= 2,
                 timeout=20)
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) >= 2 and all("CRITICAL: 1 of 1 stale" in line for line in lines)
    assert "1 alerts opened" in lines[0] and "0 alerts opened" in lines[-1]
    # retention ran in the first cycle only (at most once a UTC day)
    assert "partitions" in lines[0] and not any("partitions" in line for line in lines[1:])
    assert conn.execute("select count(*) from guardian_alerts").fetchone() == (1,)
    assert conn.execute("select distinct threshold_minutes from check_runs").fetchall() == [(0,)]
