"""Health scores, status and its history, from rules that live in a table."""

from __future__ import annotations

import json

import pytest

from tests.conftest import register
from tests.sql.test_status import heartbeat, registered_long_ago

SEED_METRICS = {"latency_ms": 28, "packet_loss": 0.02, "cpu_percent": 23, "battery_percent": 82}


def beat(conn, tid, src, **metrics):
    conn.execute("select record_mesh_heartbeat(%s, %s, %s)", (tid, src, json.dumps({"metrics": metrics})))


def node(conn, src):
    return conn.execute("select status, health_score from nodes where node_id = %s", (src,)).fetchone()


def test_seed_example_scores_high_and_bad_metrics_score_low(conn):
    (good,) = conn.execute("select health_score(%s)", (json.dumps(SEED_METRICS),)).fetchone()
    assert 0.9 < good <= 1.0
    bad = {"latency_ms": 500, "packet_loss": 0.2, "cpu_percent": 100, "battery_percent": 0,
           "temperature_c": 95}
    assert conn.execute("select health_score(%s)", (json.dumps(bad),)).fetchone() == (0.0,)
    assert conn.execute("select health_score('{}')").fetchone() == (None,)
    # metrics a device does not have are left out, not counted as zero
    (mains,) = conn.execute("select health_score('{\"cpu_percent\": 10}')").fetchone()
    assert mains == 1.0


@pytest.mark.parametrize(("metrics", "problems"), [
    ({"battery_percent": 9}, ["battery_percent"]),
    ({"packet_loss": 0.15, "temperature_c": 85}, ["packet_loss", "temperature_c"]),
    (SEED_METRICS, []),
])
def test_problems_name_the_metrics_past_their_threshold(conn, metrics, problems):
    assert conn.execute("select health_problems(%s)", (json.dumps(metrics),)).fetchone() == (problems,)


def test_heartbeats_set_status_and_history_records_changes(conn):
    tid = register(conn, "home", "phone")
    beat(conn, tid, "phone", **SEED_METRICS)
    assert node(conn, "phone")[0] == "online"
    beat(conn, tid, "phone", **{**SEED_METRICS, "battery_percent": 9})
    assert node(conn, "phone")[0] == "degraded"
    beat(conn, tid, "phone", **SEED_METRICS)
    history = conn.execute("select previous, status from node_status_history "
                           "where node_id = 'phone' order by id").fetchall()
    assert history == [(None, "online"), ("online", "degraded"), ("degraded", "online")]


def test_rules_change_without_code(conn):
    tid = register(conn, "home", "pi")
    beat(conn, tid, "pi", **{**SEED_METRICS, "cpu_percent": 90})
    assert node(conn, "pi")[0] == "online"
    conn.execute("update health_rules set degraded_at = 80 where name = 'cpu_percent'")
    beat(conn, tid, "pi", **{**SEED_METRICS, "cpu_percent": 90})
    assert node(conn, "pi")[0] == "degraded"
    conn.execute("update health_rules set degraded_at = 0.99 where name = 'health_score'")
    beat(conn, tid, "pi", **{**SEED_METRICS, "cpu_percent": 60})  # scores 0.93: below the raised bar
    assert node(conn, "pi") == ("degraded", pytest.approx(0.93, abs=0.01))
    conn.execute("update health_rules set weight = 0 where name = 'cpu_percent'")
    beat(conn, tid, "pi", **{**SEED_METRICS, "cpu_percent": 60})
    assert node(conn, "pi")[1] == pytest.approx(0.965, abs=0.01)  # cpu no longer counts


def test_silent_nodes_go_offline_and_come_back(conn):
    tid = registered_long_ago(conn, "home", "cam")
    heartbeat(conn, tid, "cam", seconds_ago=10 * 60, cpu_percent=10)  # silent since
    assert node(conn, "cam")[0] == "offline"  # as of now, before anything ran
    assert conn.execute("select record_offline_transitions()").fetchone() == (1,)
    assert conn.execute("select record_offline_transitions()").fetchone() == (0,)
    assert node(conn, "cam")[0] == "offline"
    conn.execute("update tetrahedrons set node_timeout_seconds = 3600")
    assert node(conn, "cam")[0] == "online"  # the timeout applies at once
    beat(conn, tid, "cam", cpu_percent=10)
    assert node(conn, "cam")[0] == "online"
    statuses = [r[0] for r in conn.execute(
        "select status from node_status_history where node_id = 'cam' order by changed_at, id")]
    # registered an hour ago and silent until 10 minutes ago; then silent past
    # the timeout (logged by the pass, kept when the timeout changed); then back
    assert statuses == ["online", "offline", "online", "offline", "online"]
