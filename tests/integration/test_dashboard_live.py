"""Live updates: a commit reaches /api/events within 2 s, only for those who may see it."""

from __future__ import annotations

import json
import time
import uuid

import jwt

from tests.conftest import register
from tests.support.dashboard import EventStream, running_dashboard

SECRET = "jwt-secret-for-the-live-tests-" + uuid.uuid4().hex
#: Seconds between keep-alives in these tests (15 s in service), so readers wake often.
KEEPALIVE_S = 0.5


def user_jwt(user_id) -> str:
    return jwt.encode({"sub": str(user_id), "role": "authenticated", "exp": int(time.time() + 300)},
                      SECRET, algorithm="HS256")


def heartbeat(conn, tetrahedron_id, node: str, seq: int) -> float:
    """Commit one heartbeat; the time it committed (monotonic)."""
    batch = [{"src": node, "seq": seq, "at": time.time(), "payload": {"metrics": {"cpu_percent": 10}}}]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tetrahedron_id, json.dumps(batch)))
    return time.monotonic()


def test_a_heartbeat_reaches_the_stream_within_two_seconds(db_url, conn):
    home = register(conn, "home", "pi")
    with running_dashboard(db_url, keepalive_s=KEEPALIVE_S) as base, EventStream(base) as events:
        assert events.status_code == 200
        assert events.response.headers["content-type"].startswith("text/event-stream")
        assert events.next("database", 10) == {"reachable": True}
        waits = []
        for seq in range(1, 4):
            committed = heartbeat(conn, home, "pi", seq)
            change = events.next("change", 2)
            waits.append(time.monotonic() - committed)
            assert change["kind"] == "heartbeat"
            assert change["tetrahedrons"] == ["home"] and change["ids"] == [str(home)]
        assert max(waits) < 2, waits


def test_an_outsiders_stream_gets_no_event_of_other_tetrahedrons(db_url, conn):
    owner, outsider = uuid.uuid4(), uuid.uuid4()
    home = register(conn, "home", "pi", user_id=owner)
    shed = register(conn, "shed", "cam", user_id=outsider)
    with running_dashboard(db_url, jwt_secret=SECRET, keepalive_s=KEEPALIVE_S) as base, \
            EventStream(base, {"Authorization": f"Bearer {user_jwt(owner)}"}) as owners, \
            EventStream(base, {"Authorization": f"Bearer {user_jwt(outsider)}"}) as outsiders:
        owners.next("database", 10)
        outsiders.next("database", 10)
        heartbeat(conn, home, "pi", 1)
        assert owners.next("change", 2)["tetrahedrons"] == ["home"]
        assert outsiders.quiet("change", 1.0) == []
        # the outsider's own tetrahedron does reach them, and only them
        heartbeat(conn, shed, "cam", 1)
        assert outsiders.next("change", 2)["tetrahedrons"] == ["shed"]
        assert owners.quiet("change", 0.5) == []
        # "too many to list" goes to everyone, as it came
        conn.execute("select pg_notify('flowmesh_changes', %s)",
                     (json.dumps({"kind": "alert", "tetrahedrons": None}),))
        assert owners.next("change", 2) == {"kind": "alert", "tetrahedrons": None, "ids": None}
        assert outsiders.next("change", 2) == {"kind": "alert", "tetrahedrons": None, "ids": None}


def test_a_tetrahedron_created_after_the_client_connected_is_seen(db_url, conn):
    with running_dashboard(db_url, keepalive_s=KEEPALIVE_S) as base, EventStream(base) as events:
        events.next("database", 10)
        fresh = register(conn, "fresh", "pi")
        heartbeat(conn, fresh, "pi", 1)
        names = set()
        deadline = time.monotonic() + 3
        while "fresh" not in names and time.monotonic() < deadline:
            names.update(events.next("change", 3)["tetrahedrons"] or [])
        assert "fresh" in names


def test_the_stream_keeps_alive_and_says_when_to_retry(db_url):
    import httpx

    with running_dashboard(db_url, keepalive_s=0.2) as base, \
            httpx.stream("GET", f"{base}/api/events", timeout=5) as response:
        seen, deadline = [], time.monotonic() + 5
        for line in response.iter_lines():
            seen.append(line)
            if line.startswith(":") or time.monotonic() > deadline:
                break
    assert seen[0] == "retry: 2000"
    assert any(line.startswith(": keep-alive") for line in seen)


def test_a_jwts_stream_ends_when_the_jwt_expires(db_url, conn):
    register(conn, "home", "pi", user_id=(owner := uuid.uuid4()))
    token = jwt.encode({"sub": str(owner), "role": "authenticated", "exp": int(time.time()) + 2},
                       SECRET, algorithm="HS256")
    with running_dashboard(db_url, jwt_secret=SECRET, keepalive_s=KEEPALIVE_S) as base, \
            EventStream(base, {"Authorization": f"Bearer {token}"}) as events:
        events.next("database", 10)
        started = time.time()
        events.next("closed", 5)  # the browser reconnects, and is asked to log in again
    assert time.time() - started < 4
