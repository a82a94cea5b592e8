"""`flowmesh demo` against the test database, five times faster than a newcomer
sees it: every stage it announces is there in SQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.lines import Lines

#: Scenario seconds pass this many times faster: the Pi fails after 7 s, is
#: offline 4 s later, and a prediction pass runs every second.
SPEED = "5"


def demo(db_url: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FLOWMESH_DATABASE_URL"}
    env["FLOWMESH_DEMO_SPEED"] = SPEED
    return subprocess.Popen([sys.executable, "-m", "flowmesh.cli", "demo", "--database-url", db_url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_the_demo_shows_a_mesh_a_degrading_node_a_prediction_and_a_failed_device(conn, db_url):
    # a previous run's tetrahedron: removed on start, a new one made
    (previous,) = conn.execute("select register_node('demo', 'phone', 'sensor')").fetchone()
    proc = demo(db_url)
    out = Lines(proc.stdout)
    try:
        out.wait_for(lambda line: line == "mesh: phone, pi and laptop hear each other over UDP on 127.0.0.1")
        out.wait_for(lambda line: line.startswith("pi stopped: "))
        out.wait_for(lambda line: line.startswith("every stage shown"), timeout=25)
        nodes = dict(conn.execute(
            "select n.node_id, n.status from nodes n join tetrahedrons t on t.id = n.tetrahedron_id"
            " where t.name = 'demo'").fetchall())
        assert set(nodes) == {"phone", "pi", "laptop"}
        assert conn.execute("select id from tetrahedrons where name = 'demo'").fetchone() != (previous,)
        assert nodes["phone"] == "degraded" and nodes["laptop"] == "online" and nodes["pi"] == "offline"
        risks = dict(conn.execute(
            "select node_id, predicted_risk from nodes where predicted_risk is not null").fetchall())
        assert risks["phone"] >= 0.7 and risks["pi"] >= 0.7 and risks["laptop"] < 0.7, risks
        # the mesh: every member heard the two others, then the survivors declared the Pi dead,
        # so no edge of the map leads to it any more, nor from it (a dead member's last view
        # is no edge)
        pairs = conn.execute("select count(distinct (observer, subject)) from mesh_events"
                             " where kind = 'path'").fetchone()[0]
        assert pairs == 6
        assert conn.execute("select mesh_status from nodes where node_id = 'pi'").fetchone() == ("dead",)
        links = set(conn.execute("select observer, subject, transport from mesh_links").fetchall())
        assert {("laptop", "phone", "udp"), ("phone", "laptop", "udp")} <= links
        assert not {link for link in links if "pi" in link[:2]}, links
        # the Pi's offline period is logged, and its alerts are open: predicted, then offline
        assert conn.execute("select count(*) from node_status_history"
                            " where node_id = 'pi' and status = 'offline'").fetchone() == (1,)
        open_alerts = conn.execute("select node_id, alert_type from guardian_alerts"
                                   " where resolved_at is null order by node_id, alert_type").fetchall()
        assert open_alerts == [("phone", "node-failure-predicted"), ("pi", "node-failure-predicted"),
                               ("pi", "node-offline")]
        assert proc.poll() is None, "the demo ended by itself"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        text = out.close()
    assert "demo stopped" in text, text
    # the demo stays for the dashboard after a stop; --reset removes it and all of its rows
    assert conn.execute("select count(*) from tetrahedrons where name = 'demo'").fetchone() == (1,)
    for expected in ("removed the demo tetrahedron", "no demo tetrahedron to remove"):
        reset = subprocess.run([sys.executable, "-m", "flowmesh.cli", "demo", "--reset",
                                "--database-url", db_url], capture_output=True, text=True, timeout=30)
        assert (reset.returncode, reset.stdout.strip()) == (0, expected), reset.stderr
    assert conn.execute("select count(*) from tetrahedrons").fetchone() == (0,)
    assert conn.execute("select count(*) from mesh_heartbeats").fetchone() == (0,)


def test_the_demo_never_removes_a_tetrahedron_with_devices_it_does_not_make(conn, db_url):
    conn.execute("select register_node('demo', 'front-door-camera', null)")
    conn.execute("select register_node('demo', 'pi', null)")
    for args in (("--reset",), ()):
        refused = demo(db_url, *args)
        out, _ = refused.communicate(timeout=30)
        assert refused.returncode == 1, out
        assert out.strip() == ("flowmesh: error: tetrahedron 'demo' has devices the demo does not make "
                               "(front-door-camera): not removing it; run the demo under another name "
                               "with --tetrahedron NAME")
    assert conn.execute("select count(*) from nodes").fetchone() == (2,)
    other = demo(db_url, "--reset", "--tetrahedron", "demo-2")
    said = other.communicate(timeout=30)[0].strip()
    assert (said, other.returncode) == ("no demo-2 tetrahedron to remove", 0)
