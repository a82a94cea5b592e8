"""Failure prediction on replayed histories: a known trend is caught before
the node fails; a flat history raises nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import register

STEP_S = 30
STEPS = 60


def replay(conn, tid, node, metrics_at):
    """Send STEPS heartbeats 30 s apart (ending now), running the prediction pass after each;
    return per step: (alert open?, status, risk)."""
    start = time.time() - STEPS * STEP_S
    timeline = []
    for k in range(STEPS):
        item = {"src": node, "seq": k + 1, "at": start + k * STEP_S, "payload": {"metrics": metrics_at(k)}}
        conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([item])))
        conn.execute("select run_prediction_pass()")
        alert, status, risk = conn.execute(
            "select exists (select 1 from guardian_alerts where node_id = %s and resolved_at is null "
            "and alert_type = 'node-failure-predicted'), status, predicted_risk "
            "from nodes where node_id = %s", (node, node)).fetchone()
        timeline.append((alert, status, risk))
    return timeline


def degrading(k: int) -> dict:
    """Healthy for 10 minutes, then latency climbs, loss creeps up and the battery drains."""
    drift = max(0, k - 20) * STEP_S / 60  # minutes since the trouble began
    return {"latency_ms": 30 + 12 * drift, "packet_loss": 0.01 + 0.004 * drift,
            "battery_percent": 70 - 2.0 * drift, "cpu_percent": 30, "temperature_c": 45 + drift}


def flat(k: int) -> dict:
    return {"latency_ms": 30 + (k % 3), "packet_loss": 0.01, "battery_percent": 70,
            "cpu_percent": 30, "temperature_c": 45}


@pytest.fixture
def tid(conn):
    t = register(conn, "site", "cam")
    conn.execute("update tetrahedrons set node_timeout_seconds = 7200")  # replayed times are old
    return t


def test_a_degrading_node_is_predicted_before_it_fails(conn, tid):
    timeline = replay(conn, tid, "cam", degrading)
    first_alert = next(i for i, (alert, _, _) in enumerate(timeline) if alert)
    first_failure = next(i for i, (_, status, _) in enumerate(timeline) if status != "online")
    # the alert comes about ten minutes before the node degrades (the README's
    # figures: at 18.5 minutes, against 28.5), while it still looks healthy
    assert (first_alert * STEP_S / 60, first_failure * STEP_S / 60) == (18.5, 28.5)
    assert (first_failure - first_alert) * STEP_S >= 8 * 60, (first_alert, first_failure)
    assert timeline[first_alert][1] == "online"
    assert timeline[19][2] < 0.2  # before the trend began, risk stayed low
    details = conn.execute("select severity, details from guardian_alerts "
                           "where alert_type = 'node-failure-predicted'").fetchall()
    assert len(details) == 1  # one alert, however many passes saw the risk
    (risk, signals), = conn.execute("select * from predict_node_risk(%s, 'cam')", (tid,)).fetchall()
    assert risk >= 0.7 and signals["latency"] > 0 and signals["battery"] > 0


def test_a_flat_history_raises_nothing(conn, tid):
    timeline = replay(conn, tid, "cam", flat)
    assert not any(alert for alert, _, _ in timeline)
    assert max(risk for _, _, risk in timeline) < 0.3
    assert conn.execute("select count(*) from guardian_alerts").fetchone() == (0,)


def test_the_alert_resolves_when_the_risk_falls(conn, tid):
    replay(conn, tid, "cam", degrading)
    conn.execute("update health_rules set degraded_at = 1.01 where name = 'predicted_risk'")
    _, _, resolved, _ = conn.execute("select * from run_prediction_pass()").fetchone()
    assert resolved == 1
    assert conn.execute("select count(*) from guardian_alerts where resolved_at is null").fetchone() == (0,)


def test_summary_has_the_seed_shape(conn, tid):
    beat = {"src": "cam", "seq": 1, "at": time.time(), "payload": {"metrics": flat(0)}}
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([beat])))
    conn.execute("select register_node('site', 'phone')")  # never heard from, registered long ago
    conn.execute("update nodes set created_at = now() - interval '3 hours' where node_id = 'phone'")
    conn.execute("select run_prediction_pass()")
    row = conn.execute("select online, degraded, offline, average_health, last_prediction "
                       "from mesh_summary where name = 'site'").fetchone()
    assert row[:3] == (1, 0, 1) and 0.9 < row[3] <= 1 and row[4] is not None


def test_window_must_be_sane(conn):
    import psycopg

    with pytest.raises(psycopg.errors.InvalidParameterValue, match="window_size"):
        conn.execute("select run_prediction_pass(1)")
