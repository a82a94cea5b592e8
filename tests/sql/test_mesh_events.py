"""record_mesh_events: what agents saw on the mesh, into nodes and guardian_alerts."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from tests.conftest import acting_as, register


def events(conn, tid, items):
    return conn.execute("select * from record_mesh_events(%s, %s)", (tid, json.dumps(items))).fetchone()


def ev(seq, kind, subject, observer="pi", at=None, **extra):
    return {"observer": observer, "seq": seq, "kind": kind, "subject": subject,
            "at": at or time.time(), **extra}


def test_membership_events_set_mesh_status_idempotently(conn):
    tid = register(conn, "home", "pi")
    now = time.time()
    batch = [ev(1, "joined", "cam", at=now - 3, incarnation=7), ev(2, "suspect", "cam", at=now - 2),
             ev(3, "dead", "cam", at=now - 1)]
    assert events(conn, tid, batch) == (3, 3, 0)
    assert events(conn, tid, batch) == (3, 0, 3)
    row = conn.execute("select mesh_status, mesh_reported_by from nodes where node_id = 'cam'").fetchone()
    assert row == ("dead", "pi")
    # an older observation from another member does not move it back
    events(conn, tid, [ev(1, "recovered", "cam", observer="laptop", at=now - 10)])
    assert conn.execute("select mesh_status from nodes where node_id = 'cam'").fetchone() == ("dead",)
    events(conn, tid, [ev(2, "recovered", "cam", observer="laptop", at=now)])
    assert conn.execute("select mesh_status from nodes where node_id = 'cam'").fetchone() == ("alive",)


def test_a_mesh_alert_reported_by_many_opens_one_guardian_alert(conn):
    tid = register(conn, "home", "pi")
    alert = {"priority": "critical", "alert": {"type": "intrusion", "zone": "gate"}, "message_id": 4}
    events(conn, tid, [ev(1, "alert", "cam", observer="pi", details=alert)])
    events(conn, tid, [ev(1, "alert", "cam", observer="laptop", details=alert)])
    rows = conn.execute("select alert_type, node_id, severity, details->>'reported_by' "
                        "from guardian_alerts").fetchall()
    assert rows == [("mesh-intrusion", "cam", "critical", "pi")]
    assert conn.execute("select count(*) from mesh_events where kind = 'alert'").fetchone() == (2,)


@pytest.mark.parametrize(("item", "message"), [
    ({"observer": "pi", "seq": 1, "kind": "exploded", "subject": "x", "at": 1.0e9}, "kind must be"),
    ({"observer": "pi", "seq": 0, "kind": "dead", "subject": "x", "at": 1.0e9}, "seq must be"),
    ({"observer": "", "seq": 1, "kind": "dead", "subject": "x", "at": 1.0e9}, "observer must be"),
    ({"observer": "pi", "seq": 1, "kind": "dead", "subject": "x"}, "at must be"),
    ({"observer": "pi", "seq": 1, "kind": "dead", "subject": "x", "at": 1.0e9, "details": []},
     "details must be"),
])
def test_bad_events_are_refused_whole(conn, item, message):
    tid = register(conn, "home", "pi")
    good = {"observer": "pi", "seq": 9, "kind": "joined", "subject": "y", "at": 1.0e9}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"batch element 1: {message}"):
        events(conn, tid, [good, item])
    assert conn.execute("select count(*) from mesh_events").fetchone() == (0,)


def test_only_vertices_write_and_read_their_events(conn):
    alice, mallory = uuid.uuid4(), uuid.uuid4()
    tid = register(conn, "home", "pi", alice)
    with acting_as(conn, "authenticated", alice):
        events(conn, tid, [ev(1, "joined", "cam")])
        assert conn.execute("select count(*) from mesh_events").fetchone() == (1,)
    with acting_as(conn, "authenticated", mallory):
        assert conn.execute("select count(*) from mesh_events").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            events(conn, tid, [ev(2, "dead", "cam")])
    with acting_as(conn, "anon"), pytest.raises(psycopg.errors.InsufficientPrivilege):
        events(conn, tid, [ev(3, "dead", "cam")])
