"""The dashboard served for a test: uvicorn in a thread on 127.0.0.1, a port the kernel picks.

    with running_dashboard(db_url) as base_url:      # "http://127.0.0.1:PORT"
        httpx.get(f"{base_url}/api/fleet")

or the ``dashboard_url`` fixture (import it into a test module or conftest).
Options are create_app's (token, jwt_secret, pool_timeout_s, keepalive_s, ...).
Stopping ends the open event streams first, so it never waits on a client.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from monitors.dashboard.app import create_app
from monitors.dashboard.server import DashboardServer

#: Seconds the server may take to start, and to stop.
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 10


@contextlib.contextmanager
def running_dashboard(db_url: str, **options) -> Iterator[str]:
    """Serve the dashboard for ``db_url``; yields its base URL, stops it afterwards."""
    app = create_app(db_url, **options)
    server = DashboardServer(app, "127.0.0.1", 0)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # SystemExit when uvicorn cannot start
            failed.append(exc)

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if failed or not thread.is_alive():
            raise AssertionError(f"the dashboard did not start: {failed}")
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the dashboard did not start within {START_TIMEOUT_S}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        thread.join(STOP_TIMEOUT_S)
        assert not thread.is_alive(), f"the dashboard did not stop within {STOP_TIMEOUT_S}s"
        assert not failed, failed


@pytest.fixture
def dashboard_url(db_url) -> Iterator[str]:
    """The base URL of a dashboard on this test's database (loopback, no token)."""
    with running_dashboard(db_url) as url:
        yield url
