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


class EventStream:
    """A client of /api/events, read in a thread: ``next(event, timeout)`` waits for the
    next event of that name (``None``: any), failing after ``timeout`` seconds.

        with EventStream(base_url, headers) as events:
            events.next("database", 5)  # {"reachable": True}
    """

    def __init__(self, base_url: str, headers: dict | None = None):
        import queue

        import httpx

        self._client = httpx.Client(base_url=base_url, headers=headers or {},
                                    timeout=httpx.Timeout(10, read=None))
        self._events: queue.Queue = queue.Queue()
        self._request = self._client.build_request("GET", "/api/events")
        self.response = self._client.send(self._request, stream=True)
        self.status_code = self.response.status_code
        self._thread = threading.Thread(target=self._read, name="event-stream", daemon=True)
        if self.status_code == 200:
            self._thread.start()

    def _read(self) -> None:
        import json

        event, data = None, []
        try:
            for line in self.response.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").strip())
                elif line == "" and event is not None:
                    self._events.put((event, json.loads("\n".join(data)) if data else None))
                    event, data = None, []
        except Exception:  # closed by close(), or by the server
            pass
        self._events.put(("closed", None))

    def next(self, event: str | None, timeout: float) -> dict | None:
        """The data of the next event named ``event``, skipping others."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                name, data = self._events.get(timeout=max(left, 0))
            except queue.Empty:
                raise AssertionError(f"no {event or 'event'} event within {timeout}s") from None
            if name == "closed" and event != "closed":
                raise AssertionError(f"the stream closed while waiting for {event}")
            if event is None or name == event:
                return data

    def quiet(self, event: str, seconds: float) -> list:
        """Every ``event`` received during ``seconds`` (the test expects none, or few)."""
        import queue

        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, data = self._events.get(timeout=left)
            except queue.Empty:
                break
            if name == event:
                got.append(data)
        return got

    def close(self) -> None:
        self.response.close()
        self._client.close()
        if self._thread.is_alive():  # it wakes at the next keep-alive, or when the server stops
            self._thread.join(5)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
