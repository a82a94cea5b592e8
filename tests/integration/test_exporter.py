"""The Prometheus exporter, scraped over loopback and parsed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import register, wait_for
from tests.support.lines import Lines

#: The exporter says where it listens; port 0 lets the kernel pick a free one.
SERVING = re.compile(r"serving FlowMesh metrics on (http://127\.0\.0\.1:\d+/metrics)")


@pytest.fixture
def exporter():
    procs, logs = [], []

    def start(url: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "monitors.exporter", "--port", "0",
                                 "--bind", "127.0.0.1", "--database-url", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        logs.append(Lines(proc.stderr))
        endpoint = SERVING.search(logs[-1].wait_for(SERVING.search, 30)).group(1)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(endpoint, timeout=10):  # a scrape may wait 5 s for the db
                    return True
            except OSError:
                return False

        wait_for(ready, timeout=30, interval=0.1)
        return endpoint

    yield start
    for proc, log in zip(procs, logs, strict=True):
        proc.terminate()
        assert proc.wait(timeout=15) == 0, log.close()
        log.close()


def scrape(endpoint: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(endpoint, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_reflect_the_database(conn, db_url, exporter):
    home = register(conn, "home", "pi")
    register(conn, "shed", "cam")
    for metrics in ({"cpu_percent": 20}, {"cpu_percent": 30}, {"cpu_percent": 60, "battery_percent": 9}):
        conn.execute("select record_mesh_heartbeat(%s, 'pi', %s)", (home, json.dumps({"metrics": metrics})))
    conn.execute("select check_mesh_heartbeats_and_alert(60)")  # shed is silent
    conn.execute("select run_prediction_pass()")
    # a node silent past its timeout is offline as of now, with no pass since
    old = [{"src": "cam", "seq": 1, "at": time.time() - 600, "payload": {}}]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (home, json.dumps(old)))
    m = scrape(exporter(db_url))
    assert m[("flowmesh_up", ())] == 1
    assert m[("flowmesh_heartbeats_per_minute", (("tetrahedron", "home"),))] == 3
    assert m[("flowmesh_heartbeats_per_minute", (("tetrahedron", "shed"),))] == 0
    assert m[("flowmesh_nodes", (("status", "degraded"), ("tetrahedron", "home")))] == 1
    assert m[("flowmesh_nodes", (("status", "offline"), ("tetrahedron", "home")))] == 1
    assert m[("flowmesh_open_alerts", (("severity", "warning"), ("type", "mesh-degrading")))] == 1
    score = m[("flowmesh_node_health_score", (("node", "pi"), ("tetrahedron", "home")))]
    assert 0 < score < 1
    assert ("flowmesh_node_predicted_risk", (("node", "pi"), ("tetrahedron", "home"))) in m
    assert 0 < m[("flowmesh_last_check_duration_seconds", ())] < 5
    assert m[("flowmesh_last_check_timestamp_seconds", ())] > 1.7e9


def test_an_unreachable_database_is_up_0_not_an_error(exporter):
    m = scrape(exporter("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"))
    assert m[("flowmesh_up", ())] == 0
