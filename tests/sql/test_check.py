"""check_mesh_heartbeats_and_alert: idempotent guardian alerts."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.conftest import register


def open_alerts(conn):
    return conn.execute(
        "select tetrahedron_id, alert_type from guardian_alerts where resolved_at is null "
        "order by tetrahedron_id"
    ).fetchall()


def age(conn, tid, minutes):
    conn.execute(
        "update tetrahedrons set last_heartbeat_at = now() - make_interval(mins => %s) "
        "where id = %s", (minutes, tid))


def test_opens_once_per_stale_tetrahedron_and_returns_what_it_created(conn):
    silent = register(conn, "silent", "a")  # never sent a heartbeat
    old = register(conn, "old", "b")
    fresh = register(conn, "fresh", "c")
    for tid, src in ((old, "b"), (fresh, "c")):
        conn.execute("select record_mesh_heartbeat(%s, %s, '{}')", (tid, src))
    age(conn, old, 90)
    created = conn.execute(
        "select tetrahedron_id, alert_type, message from check_mesh_heartbeats_and_alert(60)"
    ).fetchall()
    assert {r[0] for r in created} == {silent, old}
    assert all(r[1] == "mesh-degrading" for r in created)
    assert any("never sent a heartbeat" in r[2] for r in created)
    assert conn.execute("select * from check_mesh_heartbeats_and_alert(60)").fetchall() == []
    assert len(open_alerts(conn)) == 2


def test_resolves_when_heartbeats_return_and_reopens_later(conn):
    tid = register(conn, "home", "pi")
    assert len(conn.execute("select * from check_mesh_heartbeats_and_alert(60)").fetchall()) == 1
    conn.execute("select record_mesh_heartbeat(%s, 'pi', '{}')", (tid,))
    assert conn.execute("select * from check_mesh_heartbeats_and_alert(60)").fetchall() == []
    assert open_alerts(conn) == []
    resolved = conn.execute(
        "select resolved_at is not null, details->>'resolution' from guardian_alerts"
    ).fetchone()
    assert resolved == (True, "heartbeats resumed")
    age(conn, tid, 120)
    again = conn.execute("select tetrahedron_id from check_mesh_heartbeats_and_alert(60)").fetchall()
    assert again == [(tid,)]
    assert conn.execute("select count(*) from guardian_alerts").fetchone() == (2,)


def test_single_tetrahedron_form_touches_only_it(conn):
    a = register(conn, "a", "x")
    b = register(conn, "b", "y")
    created = conn.execute(
        "select tetrahedron_id from check_mesh_heartbeats_and_alert(0, %s)", (a,)
    ).fetchall()
    assert created == [(a,)]
    assert open_alerts(conn) == [(a, "mesh-degrading")]
    assert b not in {r[0] for r in open_alerts(conn)}
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="does not exist"):
        conn.execute("select check_mesh_heartbeats_and_alert(0, gen_random_uuid())")


@pytest.mark.parametrize(("value", "sqlstate"), [(-1, "22023"), (None, "22004")])
def test_bad_threshold(conn, value, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select check_mesh_heartbeats_and_alert(%s::int)", (value,))
    assert info.value.sqlstate == sqlstate


def test_concurrent_checkers_open_one_alert(conn, db_url):
    register(conn, "home", "pi")
    barrier = threading.Barrier(4)
    errors = []

    def check():
        try:
            with psycopg.connect(db_url) as c:  # each in its own transaction
                barrier.wait(timeout=10)
                c.execute("select * from check_mesh_heartbeats_and_alert(60)").fetchall()
                c.commit()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert conn.execute("select count(*) from guardian_alerts").fetchone() == (1,)
