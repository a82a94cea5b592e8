"""One status rule: a node's status as of now is defined once in SQL
(flowmesh.node_status, read through public.nodes), so every reader gives the
same answer without any pass having run, and the history tells the same story."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from flowmesh.queries import query
from monitors.exporter import FlowMeshCollector
from tests.conftest import register

TIMEOUT_S = 300  # the default node_timeout_seconds


def heartbeat(conn, tid, node, seconds_ago=0.0, seq=None, **metrics):
    """A heartbeat sampled seconds_ago (an agent's batch carries its sample time)."""
    item = {"src": node, "seq": seq or int(time.time() * 1000), "at": time.time() - seconds_ago,
            "payload": {"metrics": metrics}}
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([item])))


def registered_long_ago(conn, tetrahedron, node):
    """Register a node as if an hour ago (its creation and first status with it)."""
    tid = register(conn, tetrahedron, node)
    conn.execute("update flowmesh.node_records set created_at = now() - interval '1 hour', "
                 "health_status_since = now() - interval '1 hour' where node_id = %s", (node,))
    conn.execute("update node_status_history set changed_at = now() - interval '1 hour' "
                 "where node_id = %s", (node,))
    return tid


def history(conn, node):
    return conn.execute("select status, previous, changed_at from node_status_history "
                        "where node_id = %s order by changed_at, id", (node,)).fetchall()


def current_periods(conn):
    return dict(conn.execute("select node_id, status from node_status_timeline where until is null"))


def test_every_reader_sees_a_silent_node_offline_without_any_pass(conn, db_url):
    tid = register(conn, "site", "pi")
    heartbeat(conn, tid, "pi", cpu_percent=20)                       # fresh
    heartbeat(conn, tid, "cam", seconds_ago=10 * 60, cpu_percent=20)  # silent for 10 minutes
    nothing_ran = "select (select count(*) from check_runs), (select count(*) from node_status_history " \
                  "where status = 'offline')"
    assert conn.execute(nothing_ran).fetchone() == (0, 0)

    expected = {"pi": "online", "cam": "offline"}
    # the view every reader reads, and an analyst's select * from nodes
    assert dict(conn.execute("select node_id, status from nodes")) == expected
    (silent_since,) = conn.execute("select status_since from nodes where node_id = 'cam'").fetchone()
    (last,) = conn.execute("select last_heartbeat_at from nodes where node_id = 'cam'").fetchone()
    assert (silent_since - last).total_seconds() == TIMEOUT_S
    # flowmesh nodes
    cur = conn.execute(query("list_nodes"), {"tetrahedron": None})
    names = [c.name for c in cur.description]
    assert {r[names.index("node_id")]: r[names.index("status")] for r in cur} == expected
    # flowmesh status
    summary = conn.execute(query("mesh_summary"), {"tetrahedron": "site"}).fetchone()
    assert summary[1:4] == (1, 0, 1)
    # the exporter: its query, and the metric family it builds from it
    assert sorted(conn.execute(query("metrics_nodes_by_status")).fetchall()) == \
        [("site", "offline", 1), ("site", "online", 1)]
    families = {f.name: f for f in FlowMeshCollector(pool=None)._families(conn)}
    assert {(s.labels["status"], s.value) for s in families["flowmesh_nodes"].samples} == \
        {("offline", 1), ("online", 1)}
    # the analyst views
    assert sorted(conn.execute("select status, nodes from nodes_by_status")) == \
        [("offline", 1), ("online", 1)]
    assert current_periods(conn) == expected
    (since,) = conn.execute("select since from node_status_timeline "
                            "where node_id = 'cam' and until is null").fetchone()
    assert since == silent_since
    # the prediction pass (and the schedules through it) logs what the view showed
    assert conn.execute("select marked_offline from run_prediction_pass()").fetchone() == (1,)
    assert history(conn, "cam")[-1][:2] == ("offline", "online")
    assert history(conn, "cam")[-1][2] == silent_since
    assert current_periods(conn) == expected
    assert conn.execute("select count(*) from node_status_timeline where node_id = 'cam'").fetchone() == (2,)
    # flowmesh nodes, the command, prints the status column
    flowmesh = Path(sys.executable).parent / "flowmesh"
    out = subprocess.run([str(flowmesh), "nodes", "--json", "--database-url", db_url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert {n["node_id"]: n["status"] for n in json.loads(out)} == expected


def test_no_stored_status_can_go_stale(conn):
    columns = {r[0] for r in conn.execute(
        "select attname from pg_attribute where attrelid = 'flowmesh.node_records'::regclass "
        "and attnum > 0 and not attisdropped")}
    assert "status" not in columns and {"health_status", "offline_at"} <= columns
    (kind,) = conn.execute("select relkind from pg_class where oid = 'public.nodes'::regclass").fetchone()
    assert kind == "v"


def test_a_silent_node_that_comes_back_logs_its_offline_period_without_any_pass(conn):
    tid = registered_long_ago(conn, "site", "cam")
    heartbeat(conn, tid, "cam", seconds_ago=20 * 60, seq=1, cpu_percent=20)
    (last,) = conn.execute("select last_heartbeat_at from nodes").fetchone()
    heartbeat(conn, tid, "cam", seq=2, cpu_percent=20)
    statuses = history(conn, "cam")
    assert [s[:2] for s in statuses][-2:] == [("offline", "online"), ("online", "offline")]
    assert (statuses[-2][2] - last).total_seconds() == TIMEOUT_S  # when it really went offline
    assert conn.execute("select status from nodes").fetchone() == ("online",)
    periods = conn.execute("select status, until - since from node_status_timeline "
                           "where since >= %s order by since", (last,)).fetchall()
    assert [p[0] for p in periods] == ["online", "offline", "online"]
    assert abs(periods[1][1].total_seconds() - (20 * 60 - TIMEOUT_S)) < 5
    assert conn.execute("select record_offline_transitions()").fetchone() == (0,)


def test_the_pass_and_the_returning_heartbeat_log_one_offline_period(conn):
    tid = registered_long_ago(conn, "site", "cam")
    heartbeat(conn, tid, "cam", seconds_ago=20 * 60, seq=1)
    assert conn.execute("select record_offline_transitions()").fetchone() == (1,)
    assert conn.execute("select record_offline_transitions()").fetchone() == (0,)
    heartbeat(conn, tid, "cam", seq=2)
    offline = [s for s in history(conn, "cam") if s[0] == "offline"]
    assert len(offline) == 2  # the hour-old registration's, and this silence's: once
    assert conn.execute("select status from nodes").fetchone() == ("online",)


def test_heartbeats_arriving_late_undo_an_offline_period_that_never_was(conn):
    tid = registered_long_ago(conn, "site", "cam")
    heartbeat(conn, tid, "cam", seconds_ago=12 * 60, seq=1)
    assert conn.execute("select record_offline_transitions()").fetchone() == (1,)
    # the agent could not reach the database; its outbox held a heartbeat a minute
    now = time.time()
    backlog = [{"src": "cam", "seq": 1 + k, "at": now - (12 - k) * 60, "payload": {}} for k in range(1, 13)]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(backlog)))
    assert [s[0] for s in history(conn, "cam")][-1] == "online"
    (last_offline,) = conn.execute("select max(changed_at) from node_status_history "
                                   "where status = 'offline'").fetchone()
    assert last_offline < conn.execute("select now() - interval '12 minutes'").fetchone()[0]
    assert current_periods(conn) == {"cam": "online"}


def test_a_new_timeout_applies_at_once(conn):
    tid = register(conn, "site", "cam")
    heartbeat(conn, tid, "cam", seconds_ago=10 * 60)
    assert conn.execute("select status from nodes").fetchone() == ("offline",)
    conn.execute("update tetrahedrons set node_timeout_seconds = 3600")
    assert conn.execute("select status, offline_at - last_heartbeat_at from nodes").fetchone() == \
        ("online", __import__("datetime").timedelta(hours=1))
    assert current_periods(conn) == {"cam": "online"}


def test_degraded_and_back_is_logged_at_the_heartbeat_time(conn):
    tid = registered_long_ago(conn, "site", "phone")
    heartbeat(conn, tid, "phone", seconds_ago=60, seq=1, battery_percent=9)
    heartbeat(conn, tid, "phone", seconds_ago=30, seq=2, battery_percent=80)
    rows = conn.execute("select status, previous from node_status_history order by changed_at, id").fetchall()
    # registered an hour ago and never heard from until a minute ago: offline in between
    assert rows == [("online", None), ("offline", "online"), ("degraded", "offline"), ("online", "degraded")]
    assert conn.execute("select status, status_since = last_heartbeat_at from nodes").fetchone() == \
        ("online", True)
