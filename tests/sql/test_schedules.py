"""The scheduled work is defined once: run_scheduled_checks and
maintain_heartbeat_partitions, which pg_cron's jobs and the fallback loop both
call (the pg_cron test runs them for real)."""

from __future__ import annotations

import json
import time

from flowmesh import schedule
from flowmesh.cli import schedule_install
from monitors.mesh_health import main as mesh_health_main
from monitors.mesh_health import run_scheduled
from tests.conftest import register
from tests.sql.test_status import registered_long_ago


def defaults(command) -> dict:
    return {p.name: p.default for p in command.params}


def test_one_set_of_defaults_in_sql_and_on_every_command_line(conn):
    args = dict(conn.execute(
        "select proname, pg_get_function_arguments(oid) from pg_proc "
        "where proname in ('run_scheduled_checks', 'maintain_heartbeat_partitions')"))
    assert args["run_scheduled_checks"] == (
        f"threshold_minutes integer DEFAULT {schedule.DEFAULT_THRESHOLD_MINUTES}, "
        f"window_size integer DEFAULT {schedule.DEFAULT_WINDOW_SIZE}")
    assert args["maintain_heartbeat_partitions"].startswith(
        f"retention interval DEFAULT '{schedule.DEFAULT_RETENTION_DAYS} days'::interval")
    install = defaults(schedule_install)
    assert (install["threshold_minutes"], install["window_size"], install["retention_days"]) == (
        schedule.DEFAULT_THRESHOLD_MINUTES, schedule.DEFAULT_WINDOW_SIZE, schedule.DEFAULT_RETENTION_DAYS)
    loop = defaults(mesh_health_main)
    assert (loop["threshold_minutes"], loop["window_size"], loop["retention_days"]) == (
        schedule.DEFAULT_THRESHOLD_MINUTES, schedule.DEFAULT_WINDOW_SIZE, schedule.DEFAULT_RETENTION_DAYS)


def test_the_pg_cron_commands_are_the_loops_sql_with_its_arguments(conn):
    checks = schedule.command(conn, schedule.checks_call(15, 20))
    assert checks == ("select * from public.run_scheduled_checks(threshold_minutes => 15, "
                      "window_size => 20)")
    retention = schedule.command(conn, schedule.retention_call(90))
    assert "public.maintain_heartbeat_partitions(make_interval(days => 90))" in retention
    # the loop executes the same text with the arguments bound by the server
    assert schedule.checks_call(15, 20)[0].replace("%(threshold_minutes)s", "15") \
        .replace("%(window_size)s", "20") == checks


def test_one_cycle_checks_predicts_logs_offline_and_closes_decisions(conn):
    tid = registered_long_ago(conn, "home", "pi")
    register(conn, "shed", "cam")  # never heard from, but only just registered
    item = {"src": "pi", "seq": 1, "at": time.time() - 600, "payload": {"metrics": {"cpu_percent": 5}}}
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([item])))  # then silent
    cycle = run_scheduled(conn, threshold_minutes=5, window_size=10, retention_days=30)
    assert {k: cycle[k] for k in ("checked", "stale", "alerts_opened", "nodes_scored", "marked_offline")} \
        == {"checked": 2, "stale": 2, "alerts_opened": 2, "nodes_scored": 1, "marked_offline": 1}
    assert cycle["partitions"]["created"] == 0  # the migration made the week ahead
    again = run_scheduled(conn, threshold_minutes=5)
    assert (again["alerts_opened"], again["marked_offline"], "partitions" in again) == (0, 0, False)
    assert conn.execute("select threshold_minutes from check_runs order by id").fetchall() == [(5,), (5,)]


def test_the_fallback_hint_names_every_non_default_argument():
    assert schedule.fallback_hint("5m", 60) == \
        "python -m monitors.mesh_health --threshold-minutes 60 --every 5m"
    assert schedule.fallback_hint("1h", 15, 90, 20) == (
        "python -m monitors.mesh_health --threshold-minutes 15 --every 1h --window 20 --retention-days 90")
