"""What the dashboard reads: the fleet summary and its badge rule, who hears
whom, the health heatmap, one node's series, gossip counters, and the change
notifications that make pages live."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from tests.conftest import acting_as, register
from tests.support.seed import beat, beats, event, mesh_events

HEALTHY = {"latency_ms": 20, "packet_loss": 0, "cpu_percent": 30, "battery_percent": 90}
SICK = {"latency_ms": 480, "packet_loss": 0.18, "cpu_percent": 99, "battery_percent": 5}


def summary(conn, name):
    return conn.execute("select online, degraded, offline, nodes, open_alerts, status "
                        "from mesh_summary where name = %s", (name,)).fetchone()


def test_the_badge_says_up_late_or_down_from_the_node_statuses_and_alerts(conn):
    now = time.time()
    tid = register(conn, "home", "pi")
    register(conn, "home", "cam")
    register(conn, "empty", "ghost")
    conn.execute("update tetrahedrons set node_timeout_seconds = 60 where name = 'empty'")
    beats(conn, tid, [beat("pi", 1, now, HEALTHY), beat("cam", 1, now, HEALTHY)])
    assert summary(conn, "home") == (2, 0, 0, 2, 0, "up")

    beats(conn, tid, [beat("cam", 2, now, SICK)])
    assert summary(conn, "home") == (1, 1, 0, 2, 0, "late")

    beats(conn, tid, [beat("cam", 3, now, HEALTHY)])
    conn.execute("insert into guardian_alerts (tetrahedron_id, alert_type, message) "
                 "values (%s, 'mesh-degrading', 'quiet')", (tid,))
    assert summary(conn, "home") == (2, 0, 0, 2, 1, "late")

    # a registered node never heard from goes offline after the timeout: nothing is up
    conn.execute("update flowmesh.node_records set created_at = now() - interval '2 minutes' "
                 "where node_id = 'ghost'")
    assert summary(conn, "empty") == (0, 0, 1, 1, 0, "down")
    conn.execute("insert into tetrahedrons (name) values ('nobody')")
    assert summary(conn, "nobody") == (0, 0, 0, 0, 0, "down")


def links(conn, tid):
    return conn.execute("select observer, subject, state, transport, rtt_ms from mesh_links "
                        "where tetrahedron_id = %s order by 1, 2", (tid,)).fetchall()


def test_mesh_links_follow_each_members_newest_observation(conn):
    now = time.time()
    tid = register(conn, "home", "pi")
    mesh_events(conn, tid, [event(1, "joined", "cam", "pi", now - 10),
                            event(2, "path", "cam", "pi", now - 9, transport="udp",
                                  address="udp:10.0.0.2:7946", rtt_ms=1.5),
                            event(1, "joined", "pi", "cam", now - 10)])
    assert links(conn, tid) == [("cam", "pi", "alive", None, None), ("pi", "cam", "alive", "udp", 1.5)]

    # the LAN is cut: pi reaches cam over the relay, then suspects it
    mesh_events(conn, tid, [event(3, "path", "cam", "pi", now - 5, transport="relay", rtt_ms=71.9),
                            event(4, "suspect", "cam", "pi", now - 4)])
    assert links(conn, tid)[1] == ("pi", "cam", "suspect", "relay", 71.9)
    # an older observation arriving late moves nothing back
    mesh_events(conn, tid, [event(5, "path", "cam", "pi", now - 8, transport="ble", rtt_ms=40)])
    assert links(conn, tid)[1] == ("pi", "cam", "suspect", "relay", 71.9)
    # dead: the edge goes; a member's own events about itself are no edge
    mesh_events(conn, tid, [event(6, "dead", "cam", "pi", now - 1), event(2, "joined", "cam", "cam", now)])
    assert links(conn, tid) == [("cam", "pi", "alive", None, None)]

    outsider = uuid.uuid4()
    with acting_as(conn, "authenticated", outsider):
        assert conn.execute("select count(*) from mesh_links").fetchone() == (0,)


def test_a_gone_member_has_no_edges_and_a_big_batch_costs_no_look_up_per_event(conn):
    now = time.time()
    tid = register(conn, "home", "pi")
    # 40 members, each reporting a path to every other one, in one batch of 1,560 events
    members = [f"m{i:02d}" for i in range(40)]
    batch = [event(k + 1, "path", b, a, now - 5, transport="udp", rtt_ms=1.0)
             for a in members for k, b in enumerate(m for m in members if m != a)]
    mesh_events(conn, tid, batch)
    assert conn.execute("select count(*) from mesh_links where tetrahedron_id = %s",
                        (tid,)).fetchone() == (40 * 39,)
    # m00 dies (as m01 reports it) and m02 goes silent past its timeout: what they saw last is no edge
    mesh_events(conn, tid, [event(100, "dead", "m00", "m01", now)])
    conn.execute("select register_node('home', 'm02')")
    conn.execute("update flowmesh.node_records set created_at = now() - interval '1 hour' "
                 "where node_id = 'm02'")
    observers = {r[0] for r in conn.execute("select distinct observer from mesh_links")}
    assert "m00" not in observers and "m02" not in observers and len(observers) == 38
    # m01 no longer hears m00; everyone else still does until they say otherwise
    assert conn.execute("select count(*) from mesh_links where subject = 'm00'").fetchone() == (37,)


def test_a_silent_node_opens_one_offline_alert_that_its_next_heartbeat_resolves(conn):
    tid = register(conn, "home", "pi")
    conn.execute("update flowmesh.node_records set created_at = now() - interval '1 hour' "
                 "where node_id = 'pi'")
    assert conn.execute("select record_offline_transitions()").fetchone() == (1,)
    conn.execute("select record_offline_transitions()")  # idempotent: still one alert
    rows = conn.execute("select alert_type, node_id, severity, message from guardian_alerts "
                        "where resolved_at is null").fetchall()
    assert rows == [("node-offline", "pi", "warning", "pi is offline: no heartbeat for more than 300 s")]
    beats(conn, tid, [beat("pi", 1, time.time(), HEALTHY)])
    conn.execute("select record_offline_transitions()")
    assert conn.execute("select count(*) from guardian_alerts where resolved_at is null").fetchone() == (0,)
    assert conn.execute("select count(*) from guardian_alerts where alert_type = 'node-offline'").fetchone() \
        == (1,)


def test_the_heatmap_buckets_each_nodes_health_and_refuses_bad_buckets(conn):
    tid = register(conn, "home", "pi")
    (bucket_now,) = conn.execute(
        "select extract(epoch from date_bin('1 hour', now(), timestamptz '1970-01-01'))").fetchone()
    # two heartbeats in the current hour's bucket, one three buckets back, one too old to show
    beats(conn, tid, [beat("pi", 1, float(bucket_now) + 1, HEALTHY),
                      beat("cam", 1, float(bucket_now) + 2, SICK),
                      beat("cam", 2, float(bucket_now) - 3 * 3600 + 5, HEALTHY),
                      beat("cam", 3, float(bucket_now) - 5 * 3600 + 5, HEALTHY)])
    rows = conn.execute(
        "select node_id, extract(epoch from bucket_start)::bigint, heartbeats, health_score, "
        "min_health_score from node_health_heatmap(%s, '1 hour', 4)", (tid,)).fetchall()
    (pi_score,) = conn.execute("select health_score(%s)", (json.dumps(HEALTHY),)).fetchone()
    (sick_score,) = conn.execute("select health_score(%s)", (json.dumps(SICK),)).fetchone()
    assert rows == [("cam", int(bucket_now) - 3 * 3600, 1, pytest.approx(pi_score), pytest.approx(pi_score)),
                    ("cam", int(bucket_now), 1, pytest.approx(sick_score), pytest.approx(sick_score)),
                    ("pi", int(bucket_now), 1, pytest.approx(pi_score), pytest.approx(pi_score))]
    starts = [int(r[0]) for r in conn.execute(
        "select extract(epoch from bucket_start) from heatmap_buckets('1 hour', 4)")]
    assert starts == [int(bucket_now) - 3 * 3600, int(bucket_now) - 2 * 3600, int(bucket_now) - 3600,
                      int(bucket_now)]
    for bucket, count, reason in [("30 seconds", 40, "between 1 minute and 1 day"),
                                  ("2 days", 40, "between 1 minute and 1 day"),
                                  ("1 hour", 0, "between 1 and 1000"),
                                  ("1 hour", 1001, "between 1 and 1000")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=reason):
            conn.execute("select * from node_health_heatmap(%s, %s, %s)", (tid, bucket, count))


def test_a_nodes_series_averages_each_metric_and_gives_the_risk_as_of_then(conn):
    now = time.time()
    tid = register(conn, "home", "cam")
    # an hour of heartbeats a minute apart, the battery draining in the last 20 minutes
    items = [beat("cam", k + 1, now - (60 - k) * 60 + 30,
                  {**HEALTHY, "battery_percent": 90 if k < 40 else 90 - 4 * (k - 40),
                   "temperature_c": 45})
             for k in range(60)]
    beats(conn, tid, items)
    rows = conn.execute("select heartbeats, battery_percent, temperature_c, health_score, predicted_risk "
                        "from node_metric_series(%s, 'cam', '1 hour', 6)", (tid,)).fetchall()
    assert sum(r[0] for r in rows) == 60
    assert all(r[2] == 45 for r in rows)
    assert rows[0][1] == 90 and rows[-1][1] <= 50
    assert rows[-1][3] < rows[0][3]
    # the model's answer at the last bucket is the stored prediction's rule as of now
    (risk_now,) = conn.execute("select risk from predict_node_risk(%s, 'cam')", (tid,)).fetchone()
    assert rows[-1][4] == pytest.approx(risk_now) and rows[0][4] < rows[-1][4]
    assert conn.execute("select count(*) from node_metric_series(%s, 'nobody')", (tid,)).fetchone() == (0,)
    for since, count, reason in [("10 seconds", 60, "between 1 minute and 400 days"),
                                 ("1 hour", 5000, "between 1 and 1000")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=reason):
            conn.execute("select * from node_metric_series(%s, 'cam', %s, %s)", (tid, since, count))


def test_gossip_summary_reads_each_members_newest_counters(conn):
    now = time.time()
    tid = register(conn, "home", "pi")
    beats(conn, tid, [beat("pi", 1, now - 2, HEALTHY, mesh={"gossip": {"seen": 1, "duplicates": 0,
                                                                         "propagated": 1}}),
                      beat("pi", 2, now - 1, HEALTHY, mesh={"gossip": {"seen": 9, "duplicates": 3,
                                                                         "propagated": 7}}),
                      beat("cam", 1, now - 1, HEALTHY)])
    assert conn.execute("select node_id, seen, duplicates, propagated from gossip_summary(%s)",
                        (tid,)).fetchall() == [("pi", 9, 3, 7)]
    # a device's nonsense reads as null and breaks nobody else's counters
    beats(conn, tid, [beat("cam", 2, now, HEALTHY, mesh={"gossip": {"seen": "lots", "duplicates": 2.7}})])
    assert conn.execute("select node_id, seen, duplicates, propagated from gossip_summary(%s)",
                        (tid,)).fetchall() == [("cam", None, 2, None), ("pi", 9, 3, 7)]


def notifications(listener, seconds=2.0):
    return [json.loads(n.payload) for n in listener.notifies(timeout=seconds, stop_after=20)
            if n.channel == "flowmesh_changes"]


def test_writes_that_change_a_page_notify_once_per_statement_and_only_on_commit(conn, db_url):
    tid = register(conn, "home", "pi")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen flowmesh_changes")
        beats(conn, tid, [beat("pi", 1, time.time(), HEALTHY), beat("cam", 1, time.time(), HEALTHY)])
        got = notifications(listener, 1.0)
        assert {"kind": "heartbeat", "tetrahedrons": [str(tid)]} in got
        assert sum(1 for n in got if n["kind"] == "heartbeat") == 1

        beats(conn, tid, [beat("cam", 2, time.time(), SICK)])
        kinds = {n["kind"] for n in notifications(listener, 1.0)}
        assert {"heartbeat", "status"} <= kinds

        mesh_events(conn, tid, [event(1, "dead", "cam", "pi", time.time())])
        assert {"kind": "mesh_event", "tetrahedrons": [str(tid)]} in notifications(listener, 1.0)

        with conn.transaction(force_rollback=True):
            beats(conn, tid, [beat("pi", 2, time.time(), HEALTHY)])
        assert notifications(listener, 0.5) == []
