"""Browser tests: Debian's Chromium, headless, driven through Playwright.

One browser for the package (launched once, a fresh context per test). The
browser is /usr/bin/chromium with the flags a closed network needs; Playwright
gives it a fresh temporary profile (user data dir) of its own. Nothing here
downloads a browser: without /usr/bin/chromium the tests are skipped with the
reason (a failure under FLOWMESH_NO_SKIP, as everywhere).

Every page a test opens records the requests it makes and the script errors it
raises; the ``page`` fixture fails the test on a script error or on a request
to anything but the dashboard's own origin.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.conftest import register

CHROMIUM = Path(os.environ.get("FLOWMESH_CHROMIUM", "/usr/bin/chromium"))
#: The flags the brief requires for a headless Chromium on a machine with no network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Longest wait for anything a page should show, in ms (every wait is bounded).
WAIT_MS = 10_000


@pytest.fixture(scope="package")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
                                             headless=True, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Recorder:
    """What a page did: every request's URL, every script error and console error."""

    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not (u.startswith(self.origin + "/") or u.startswith("data:"))]


@pytest.fixture
def open_page(browser, tmp_path):
    """open_page(base_url, headers=None) -> (page, recorder): a page in a fresh context
    (its own cookies; ``headers`` sent with every request, e.g. an Authorization).
    After the test: no script error, no request off the origin."""
    contexts, recorders = [], []

    def make(base_url: str, headers: dict[str, str] | None = None):
        context = browser.new_context(base_url=base_url, extra_http_headers=headers or {},
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(WAIT_MS)
        recorder = Recorder(origin=base_url.rstrip("/"))
        # anything off the origin is refused outright, and recorded
        context.route(lambda url: not url.startswith(recorder.origin + "/") and not url.startswith("data:"),
                      lambda route: route.abort())
        page = context.new_page()
        page.on("request", lambda request: recorder.requests.append(request.url))
        page.on("pageerror", lambda error: recorder.errors.append(f"script error: {error}"))
        contexts.append(context)
        recorders.append(recorder)
        return page, recorder

    yield make
    for context in contexts:
        context.close()
    for recorder in recorders:
        assert recorder.errors == []
        assert recorder.foreign() == []


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save the whole page as tmp_path/NAME.png (kept with the test's temporary files)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


# --- seeding through the RPCs the agents call -------------------------------------------

def heartbeat(conn, tid, node, seconds_ago: float = 0.0, **metrics):
    """One heartbeat from ``node`` sampled ``seconds_ago``, through record_mesh_heartbeats."""
    item = {"src": node, "seq": time.time_ns() // 1000, "at": time.time() - seconds_ago,
            "payload": {"metrics": metrics}}
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps([item])))


def mesh_events(conn, tid, events):
    conn.execute("select record_mesh_events(%s, %s)", (tid, json.dumps(events)))


HEALTHY = {"cpu_percent": 22.0, "battery_percent": 88.0, "temperature_c": 41.0, "latency_ms": 30.0,
           "packet_loss": 0.0}
#: past battery_percent's degraded_at (15) in health_rules: the node is degraded
LOW_BATTERY = {**HEALTHY, "battery_percent": 6.0}


@dataclass
class Fleet:
    ids: dict[str, uuid.UUID]
    owner: uuid.UUID  # the Supabase user who owns every vertex of "home"
    alert_message: str


def seed(conn: psycopg.Connection) -> Fleet:
    """Four tetrahedrons with nodes online, degraded and offline, a mesh with paths
    over several transports, and a mesh alert, all through the agents' RPCs."""
    owner = uuid.uuid4()
    ids = {}
    # home: phone and laptop online, pi degraded, cam silent for ten minutes (offline)
    for node in ("phone", "pi", "laptop", "cam"):
        ids["home"] = register(conn, "home", node, user_id=owner)
    for i in range(6):  # a little history for the charts and the heatmap
        heartbeat(conn, ids["home"], "phone", seconds_ago=300 - 50 * i,
                  **{**HEALTHY, "cpu_percent": 20.0 + 5 * i})
        heartbeat(conn, ids["home"], "laptop", seconds_ago=300 - 50 * i, **HEALTHY)
    heartbeat(conn, ids["home"], "pi", seconds_ago=120, **HEALTHY)
    heartbeat(conn, ids["home"], "pi", **LOW_BATTERY)
    heartbeat(conn, ids["home"], "cam", seconds_ago=600, **HEALTHY)
    now = time.time()

    def path(seq, observer, subject, transport, rtt):
        return {"observer": observer, "seq": seq, "kind": "path", "subject": subject, "at": now - 30 + seq,
                "details": {"transport": transport, "address": f"{transport}:{subject}", "rtt_ms": rtt}}

    mesh_events(conn, ids["home"], [
        path(1, "pi", "phone", "ble", 14.0), path(2, "phone", "pi", "ble", 15.0),
        path(3, "pi", "laptop", "udp", 3.2), path(4, "laptop", "pi", "udp", 3.4),
        path(5, "laptop", "phone", "relay", 70.5),
        {"observer": "laptop", "seq": 6, "kind": "alert", "subject": "cam", "at": now - 5,
         "details": {"priority": "critical", "alert": {"type": "intrusion", "zone": "gate"},
                     "message_id": 9}},
    ])
    # a guardian decision the mesh is voting on: quarantine the silent camera
    conn.execute("select propose_guardian_decision(%s, 'quarantine', 'cam', 'pi')", (ids["home"],))
    # shop: two online; farm: one online, two offline; lab: registered, never heard from
    ids["shop"] = register(conn, "shop", "till")
    register(conn, "shop", "door")
    heartbeat(conn, ids["shop"], "till", **HEALTHY)
    heartbeat(conn, ids["shop"], "door", **HEALTHY)
    ids["farm"] = register(conn, "farm", "barn")
    for node, ago in (("barn", 0), ("silo", 900), ("gate", 1200)):
        heartbeat(conn, ids["farm"], node, seconds_ago=ago, **HEALTHY)
    ids["lab"] = register(conn, "lab", "probe")
    (message,) = conn.execute("select message from guardian_alerts "
                              "where alert_type = 'mesh-intrusion'").fetchone()
    return Fleet(ids=ids, owner=owner, alert_message=message)


@pytest.fixture
def fleet(conn) -> Fleet:
    return seed(conn)


@pytest.fixture
def serve(db_url):
    """serve(url=db_url, **create_app options) -> the base URL of a dashboard on that
    database (tests/support/dashboard.py), stopped after the test."""
    from tests.support.dashboard import running_dashboard

    with contextlib.ExitStack() as stack:
        def start(url: str | None = None, **options) -> str:
            return stack.enter_context(running_dashboard(url or db_url, **options))

        yield start
