"""The monitor as an operator runs it: exit codes, and the --every loop through
a real database outage (a loopback proxy in front of the test server is cut)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from tests.acceptance.test_cli import monitor
from tests.conftest import db_name, register
from tests.support.lines import Lines


def test_unknown_but_well_formed_tetrahedron_is_unknown(conn, db_url):
    register(conn, "home", "pi")
    missing = str(uuid.uuid4())
    result = monitor("--threshold-minutes", "60", "--tetrahedron-id", missing, "--database-url", db_url)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.startswith("MESH HEALTH UNKNOWN - ")
    assert f"tetrahedron {missing} does not exist" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stdout == ""


def test_every_loop_carries_on_through_an_outage_and_stops_on_sigint(conn, db_url, proxy):
    register(conn, "home", "pi")
    env = {k: v for k, v in os.environ.items() if k != "FLOWMESH_DATABASE_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitors.mesh_health", "--threshold-minutes", "60", "--every", "1s",
         "--database-url", proxy.url(db_name(db_url))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = Lines(proc.stdout)
    try:
        # no heartbeat ever: every cycle that reaches the database finds home stale
        out.wait_for(lambda line: "CRITICAL" in line)
        proxy.down()
        out.wait_for(lambda line: "UNKNOWN" in line and "cannot reach the database" in line)
        assert proc.poll() is None, "the loop stopped at the outage"
        proxy.up()
        out.wait_for(lambda line: "CRITICAL" in line)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        out.close()
    # the cycles that ran opened the alert once
    assert conn.execute("select count(*) from guardian_alerts where alert_type = 'mesh-degrading'"
                        ).fetchone() == (1,)

