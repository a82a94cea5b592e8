"""Check runs are recorded; analyst views answer the common questions."""

from __future__ import annotations

import json

from tests.conftest import acting_as, register


def test_every_check_run_is_recorded_with_its_duration_and_caller(conn):
    tid = register(conn, "home", "pi")
    conn.execute("select check_mesh_heartbeats_and_alert(60)")
    with acting_as(conn, "service_role"):
        conn.execute("select check_mesh_heartbeats_and_alert(60, %s)", (tid,))
    runs = conn.execute("select tetrahedron_id, alerts_opened, duration_ms >= 0, run_by "
                        "from check_runs order by id").fetchall()
    assert runs == [(None, 1, True, "postgres"), (tid, 0, True, "service_role")]


def test_analyst_views(conn):
    tid = register(conn, "home", "pi")
    register(conn, "shed", "cam")
    for metrics in ({"cpu_percent": 10}, {"cpu_percent": 10, "battery_percent": 5}):
        conn.execute("select record_mesh_heartbeat(%s, 'pi', %s)", (tid, json.dumps({"metrics": metrics})))
    conn.execute("select check_mesh_heartbeats_and_alert(60)")
    per_minute = conn.execute(
        "select name, sum(heartbeats) from heartbeats_per_minute() group by 1").fetchall()
    assert per_minute == [("home", 2)]
    timeline = conn.execute("select status, until is null from node_status_timeline "
                            "where node_id = 'pi' order by since").fetchall()
    assert timeline == [("online", False), ("degraded", True)]
    by_status = dict(conn.execute("select tetrahedron || '/' || status, nodes from nodes_by_status"
                                  ).fetchall())
    assert by_status == {"home/degraded": 1, "shed/online": 1}
    silent = conn.execute("select name, alerted from silent_tetrahedrons").fetchall()
    assert silent == [("shed", True)]
    history = conn.execute("select tetrahedron, alert_type, open_for > interval '0' "
                           "from alert_history").fetchall()
    assert history == [("shed", "mesh-degrading", True)]


def test_views_respect_row_level_security(conn):
    import uuid

    alice = uuid.uuid4()
    register(conn, "home", "pi", alice)
    register(conn, "shed", "cam")
    conn.execute("select check_mesh_heartbeats_and_alert(0)")
    with acting_as(conn, "authenticated", alice):
        assert {r[0] for r in conn.execute("select tetrahedron from alert_history")} == {"home"}
        assert {r[0] for r in conn.execute("select name from mesh_summary")} == {"home"}
        assert {r[0] for r in conn.execute("select tetrahedron from nodes_by_status")} == {"home"}
