"""`flowmesh devices add/list/revoke` as an operator runs them, and an agent
running on the URL it prints: real processes, real sockets, real database."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from flowmesh_edge.outbox import Outbox
from flowmesh_edge.shipper import Rejected, Shipper
from tests.acceptance.test_cli import run, script
from tests.conftest import db_name, session_ended, wait_for


@pytest.fixture
def admin_url(db_url, proxy, device_auth, device_roles_dropped):
    """The operator's URL, over loopback TCP, so device URLs built from it are TCP too."""
    return proxy.url(db_name(db_url))


def flowmesh(*args: str) -> subprocess.CompletedProcess:
    return run([*script("flowmesh"), *args])


def password_of(url: str) -> str:
    return unquote(urlsplit(url).password)


def test_add_prints_a_url_that_connects_as_the_device_only(admin_url):
    add = flowmesh("devices", "add", "home", "pi", "--role", "sensor", "--database-url", admin_url)
    assert add.returncode == 0, add.stderr
    url = add.stdout.strip()
    assert len(add.stdout.splitlines()) == 1 and url.startswith("postgresql://flowmesh_dev_pi_")
    assert urlsplit(url).hostname == "127.0.0.1" and urlsplit(url).port == urlsplit(admin_url).port
    with psycopg.connect(url, autocommit=True) as dev:
        (tid,) = dev.execute("select register_node('home', 'pi')").fetchone()
        dev.execute("select record_mesh_heartbeat(%s, 'pi', '{}')", (tid,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dev.execute("select record_mesh_heartbeat(%s, 'cam', '{}')", (tid,))
    with psycopg.connect(admin_url) as conn:
        assert conn.execute("select role from nodes where node_id = 'pi'").fetchone() == ("sensor",)

    again = flowmesh("devices", "add", "home", "pi", "--database-url", admin_url)
    assert again.returncode == 1 and "already has a device credential" in again.stderr
    assert len(again.stderr.splitlines()) == 1

    listing = flowmesh("devices", "list", "--database-url", admin_url)
    as_json = flowmesh("devices", "list", "home", "--json", "--database-url", admin_url)
    assert listing.returncode == 0 and as_json.returncode == 0, listing.stderr + as_json.stderr
    assert password_of(url) not in listing.stdout + as_json.stdout
    [device] = json.loads(as_json.stdout)
    assert (device["tetrahedron"], device["node_id"], device["role"]) == (
        "home", "pi", urlsplit(url).username)
    assert device["last_heartbeat_at"] and device["last_used_at"] and device["created_at"]
    assert json.loads(flowmesh("devices", "list", "elsewhere", "--json",
                               "--database-url", admin_url).stdout) == []


def test_output_writes_a_0600_file_and_refuses_to_overwrite(admin_url, tmp_path):
    target = tmp_path / "pi.url"
    add = flowmesh("devices", "add", "home", "pi", "--output", str(target), "--database-url", admin_url)
    assert add.returncode == 0, add.stderr
    url = target.read_text().strip()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert password_of(url) not in add.stdout + add.stderr and str(target) in add.stdout
    with psycopg.connect(url) as dev:
        assert dev.execute("select current_user").fetchone()[0] == urlsplit(url).username

    # an existing file is refused before anything changes, in one line
    refused = flowmesh("devices", "add", "home", "cam", "--output", str(target),
                       "--database-url", admin_url)
    assert refused.returncode == 1 and refused.stderr.strip().endswith(
        f"{target} exists; pass --force to overwrite it")
    assert len(refused.stderr.splitlines()) == 1 and target.read_text().strip() == url
    with psycopg.connect(admin_url) as conn:
        assert conn.execute("select count(*) from tetrahedron_vertices where node_id = 'cam'"
                            ).fetchone() == (0,)
    other = tmp_path / "loose.url"
    other.write_text("old")
    other.chmod(0o644)
    forced = flowmesh("devices", "add", "home", "cam", "--output", str(other), "--force", "--direct",
                      "--database-url", admin_url)
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(other.stat().st_mode) == 0o600
    assert other.read_text().startswith("postgresql://flowmesh_dev_cam_")

    # a failed add leaves no file behind
    failed = tmp_path / "failed.url"
    bad = flowmesh("devices", "add", "home", "", "--output", str(failed), "--database-url", admin_url)
    assert bad.returncode == 1 and not failed.exists()


def test_revoke_ends_the_devices_session_and_it_cannot_connect_again(admin_url):
    url = flowmesh("devices", "add", "home", "pi", "--database-url", admin_url).stdout.strip()
    dev = psycopg.connect(url, autocommit=True)
    try:
        revoke = flowmesh("devices", "revoke", "home", "pi", "--database-url", admin_url)
        assert revoke.returncode == 0, revoke.stderr
        assert "ended 1 session(s)" in revoke.stdout
        wait_for(lambda: session_ended(dev), timeout=10)
    finally:
        dev.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=10)
    again = flowmesh("devices", "revoke", "home", "pi", "--database-url", admin_url)
    assert again.returncode == 1
    assert again.stderr.strip() == ("flowmesh: error: no device credential for node 'pi' "
                                    "of tetrahedron 'home'")


def test_the_agent_ships_with_its_device_url(admin_url, tmp_path):
    url = flowmesh("devices", "add", "home", "pi", "--database-url", admin_url).stdout.strip()
    outbox = tmp_path / "pi.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "FLOWMESH_DATABASE_URL"}
    proc = subprocess.Popen(
        [*script("flowmesh-edge"), "run", "--database-url", url, "--node-id", "pi",
         "--tetrahedron", "home", "--interval", "0.2", "--outbox", str(outbox)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            wait_for(lambda: conn.execute(
                "select count(*) >= 3 from mesh_heartbeats where source = 'pi'").fetchone()[0],
                timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert password_of(url) not in err


def test_a_device_claiming_another_node_is_refused_and_keeps_its_outbox(admin_url, tmp_path):
    url = flowmesh("devices", "add", "home", "pi", "--database-url", admin_url).stdout.strip()
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        for _ in range(5):
            box.put("home", "cam", {})  # pi's credential, claiming to be cam
        shipper = Shipper(box, url)
        try:
            with pytest.raises(Rejected, match="may not write as cam") as refused:
                shipper.flush()
        finally:
            shipper.close()
        assert refused.value.sqlstate == "42501"
        assert box.pending() == 5 and box.dead_letters() == []
        assert password_of(url) not in str(refused.value)
    with psycopg.connect(admin_url) as conn:
        assert conn.execute("select count(*) from mesh_heartbeats").fetchone() == (0,)
        assert conn.execute("select count(*) from tetrahedron_vertices where node_id = 'cam'"
                            ).fetchone() == (0,)
