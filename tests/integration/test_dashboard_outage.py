"""A database outage: the API answers 503 with one line, the stream says so, and both
recover by themselves when the database is back; the server never dies."""

from __future__ import annotations

import time

import httpx

from tests.conftest import db_name, register
from tests.support.dashboard import EventStream, running_dashboard


def until_status(client: httpx.Client, path: str, status: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code == status:
            return response
        assert time.monotonic() < deadline, f"{path} still {response.status_code} after {timeout}s"
        time.sleep(0.1)


def test_an_outage_is_a_503_and_an_event_and_both_recover(db_url, conn, proxy):
    register(conn, "home", "pi")
    url = proxy.url(db_name(db_url))
    with running_dashboard(url, pool_timeout_s=0.5, keepalive_s=0.5, ping_s=0.5) as base, \
            httpx.Client(base_url=base, timeout=10) as client, EventStream(base) as events:
        assert events.next("database", 10) == {"reachable": True}
        assert client.get("/api/fleet").status_code == 200

        proxy.down()
        down = events.next("database", 5)
        assert down["reachable"] is False
        assert down["error"].startswith("database unreachable: ") and "\n" not in down["error"]
        for path in ("/api/fleet", "/api/tetrahedrons/home", "/api/health", "/badge/home.json"):
            response = until_status(client, path, 503, 5)
            body = response.json()
            assert body["error"].startswith("database unreachable: ") and "\n" not in body["error"], body
            assert body["error"] == down["error"]  # what the live connection saw, not "no connection"
        assert client.get("/api/health").json()["database"] == {"reachable": False}
        svg = client.get("/badge/home.svg")
        assert svg.status_code == 503 and svg.headers["content-type"].startswith("image/svg+xml")
        assert client.get("/").status_code == 200  # the pages still load, and say so themselves

        proxy.up()
        assert events.next("database", 10) == {"reachable": True}
        recovered = until_status(client, "/api/fleet", 200, 10)
        assert [t["name"] for t in recovered.json()["tetrahedrons"]] == ["home"]


def test_the_server_starts_while_the_database_is_down(db_url, conn, proxy):
    register(conn, "home", "pi")
    proxy.down()
    with running_dashboard(proxy.url(db_name(db_url)), pool_timeout_s=0.5, keepalive_s=0.5, ping_s=0.5) \
            as base, httpx.Client(base_url=base, timeout=10) as client, EventStream(base) as events:
        assert until_status(client, "/api/fleet", 503, 5).json()["sqlstate"] is None
        assert events.next("database", 5)["reachable"] is False
        proxy.up()
        assert events.next("database", 10) == {"reachable": True}
        until_status(client, "/api/fleet", 200, 10)


def test_a_path_gone_silent_is_noticed_and_replaced(db_url, conn, proxy):
    """No reset, just silence (a NAT entry dropped): the live connection's ping and the
    pool's check notice within their deadlines, and new connections take over."""
    register(conn, "home", "pi")
    with running_dashboard(proxy.url(db_name(db_url)), pool_timeout_s=5.0, keepalive_s=0.5, ping_s=0.5) \
            as base, httpx.Client(base_url=base, timeout=15) as client, EventStream(base) as events:
        assert events.next("database", 10) == {"reachable": True}
        assert client.get("/api/fleet").status_code == 200  # a pooled connection, now idle
        assert proxy.silent() >= 2  # the live connection and the pooled one
        down = events.next("database", 5)
        assert down == {"reachable": False,
                        "error": "database unreachable: no answer from the database within 1 s"}
        assert events.next("database", 10) == {"reachable": True}
        started = time.monotonic()
        response = client.get("/api/fleet")
        assert response.status_code == 200, response.text  # the silent pooled connection is replaced
        assert time.monotonic() - started < 4.5
