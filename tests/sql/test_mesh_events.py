"""record_mesh_events: what agents saw on the mesh, into nodes and guardian_alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from flowmesh.queries import query
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


def path(seq, subject, transport, observer="pi", at=None, **details):
    return ev(seq, "path", subject, observer=observer, at=at, details={"transport": transport, **details})


def transport_of(conn, node_id):
    return conn.execute("select mesh_transport, mesh_transport_rtt_ms, "
                        "extract(epoch from mesh_transport_at), mesh_transport_reported_by "
                        "from nodes where node_id = %s", (node_id,)).fetchone()


def test_path_events_set_the_transport_idempotently_and_only_forward(conn):
    tid = register(conn, "home", "pi")
    now = round(time.time() - 60)
    batch = [path(1, "cam", "udp", at=now - 3, address="udp:192.0.2.7:9999", previous=None, rtt_ms=4.5),
             path(2, "cam", "relay", at=now - 1, address="relay:cam@203.0.113.5:8765",
                  previous="udp:192.0.2.7:9999", rtt_ms=71.9)]
    assert events(conn, tid, batch) == (2, 2, 0)
    assert events(conn, tid, batch) == (2, 0, 2)
    assert transport_of(conn, "cam") == ("relay", 71.9, now - 1, "pi")
    # the whole path is kept in the log
    assert conn.execute("select details from mesh_events where seq = 2").fetchone()[0] == batch[1]["details"]
    # an older switch reported late, by another member, does not move it back
    assert events(conn, tid, [path(1, "cam", "udp", observer="laptop", at=now - 30, rtt_ms=2.0)]) == (1, 1, 0)
    assert transport_of(conn, "cam") == ("relay", 71.9, now - 1, "pi")
    # a newer one does, whoever saw it; no round trip yet reads as null
    events(conn, tid, [path(2, "cam", "ws", observer="laptop", at=now, rtt_ms=None)])
    assert transport_of(conn, "cam") == ("ws", None, now, "laptop")
    # within one batch the newest wins, whatever the order of the elements
    events(conn, tid, [path(3, "door", "ble", at=now - 1), path(4, "door", "udp", at=now - 5, rtt_ms=0)])
    assert transport_of(conn, "door")[:3] == ("ble", None, now - 1)


def test_a_path_event_leaves_mesh_status_alone(conn):
    tid = register(conn, "home", "pi")
    now = round(time.time() - 60)
    events(conn, tid, [ev(1, "dead", "cam", at=now - 10)])
    # newer than the death, yet it says nothing about membership
    events(conn, tid, [path(2, "cam", "relay", at=now, rtt_ms=80)])
    assert conn.execute("select mesh_status, extract(epoch from mesh_status_at), mesh_transport "
                        "from nodes where node_id = 'cam'").fetchone() == ("dead", now - 10, "relay")
    # nor does a membership event touch the path
    events(conn, tid, [ev(3, "recovered", "cam", at=now + 1)])
    assert conn.execute("select mesh_status, mesh_transport from nodes where node_id = 'cam'"
                        ).fetchone() == ("alive", "relay")
    # a path about a node nobody reported on yet: known to the mesh by its path only
    events(conn, tid, [path(4, "door", "ble", at=now)])
    assert conn.execute("select mesh_status, mesh_transport from nodes where node_id = 'door'"
                        ).fetchone() == (None, "ble")


def test_flowmesh_nodes_shows_a_member_alive_but_on_the_relay(conn, db_url):
    tid = register(conn, "home", "pi")
    now = time.time() - 60
    events(conn, tid, [ev(1, "joined", "cam", at=now - 1), path(2, "cam", "relay", at=now, rtt_ms=71.9)])
    cur = conn.execute(query("list_nodes"), {"tetrahedron": "home"})
    names = [c.name for c in cur.description]
    assert {r[names.index("node_id")]: (r[names.index("mesh_status")], r[names.index("mesh_transport")])
            for r in cur} == {"pi": (None, None), "cam": ("alive", "relay")}
    # the command's table: a mesh_transport column, cam's row reading relay under it
    flowmesh = Path(sys.executable).parent / "flowmesh"
    out = subprocess.run([str(flowmesh), "nodes", "--database-url", db_url],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    column = out[0].index("mesh_transport")
    cam = next(line for line in out[1:] if line.split()[1] == "cam")
    assert cam[column:].split()[0] == "relay"


BAD_PATH_DETAILS = [
    (None, "details of a path event must be"),
    ({}, "details.transport must be"),
    ({"transport": None}, "details.transport must be"),
    ({"transport": 7}, "details.transport must be"),
    ({"transport": ""}, "details.transport must be"),
    ({"transport": "UDP"}, "details.transport must be"),
    ({"transport": "9p"}, "details.transport must be"),
    ({"transport": "udp\n"}, "details.transport must be"),
    ({"transport": "a" * 17}, "details.transport must be"),
    ({"transport": "relay", "rtt_ms": -0.1}, "details.rtt_ms must be"),
    ({"transport": "relay", "rtt_ms": "71"}, "details.rtt_ms must be"),
    ({"transport": "relay", "rtt_ms": 1e400}, "details.rtt_ms must be"),
    ({"transport": "relay", "address": 5}, "details.address must be"),
    ({"transport": "relay", "address": "x" * 301}, "details.address must be"),
    ({"transport": "relay", "previous": ["udp"]}, "details.previous must be"),
    ({"transport": "relay", "previous": "x" * 301}, "details.previous must be"),
]


@pytest.mark.parametrize(("details", "message"), BAD_PATH_DETAILS)
def test_bad_path_events_are_refused_whole(conn, details, message):
    tid = register(conn, "home", "pi")
    good = path(1, "cam", "udp", rtt_ms=3)
    item = {"observer": "pi", "seq": 2, "kind": "path", "subject": "cam", "at": 1.0e9}
    if details is not None:
        item["details"] = details
    # 1e400 is JSON, but too large for a double: json.dumps would write it as Infinity
    batch = json.dumps([good, item]).replace("Infinity", "1e400")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"batch element 1: {message}"):
        conn.execute("select * from record_mesh_events(%s, %s)", (tid, batch))
    assert conn.execute("select count(*) from mesh_events").fetchone() == (0,)
    assert transport_of(conn, "cam") is None


def test_the_limits_of_a_path_are_accepted(conn):
    tid = register(conn, "home", "pi")
    details = {"transport": "a" + "-0" * 7 + "z", "rtt_ms": 86400000, "address": "x" * 300,
               "previous": "y" * 300, "hops": 2}
    assert events(conn, tid, [ev(1, "path", "cam", details=details),
                              path(2, "door", "relay", rtt_ms=0, address=None, previous=None)]) == (2, 2, 0)
    assert transport_of(conn, "cam")[:2] == ("a-0-0-0-0-0-0-0z", 86400000.0)


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
