"""`flowmesh db up --pooler`, `db url --pooled`, `db stop`, and the connection
slots kept for operators, driven as a user drives them, each in its own data
directory (its own embedded server)."""

from __future__ import annotations

import os
import stat

import psutil
import psycopg
import pytest

from flowmesh import embedded, pooler
from flowmesh.cli import main
from tests.acceptance.test_cli import UNREACHABLE, run, script

pytestmark = pytest.mark.slow


def flowmesh(*args: str, env: dict, timeout: float = 120):
    return run([*script("flowmesh"), *args], env=env, timeout=timeout)


def test_db_up_pooler_serves_agents_and_db_stop_stops_it(tmp_path):
    if pooler.binary() is None:
        pytest.skip(pooler.INSTALL_HINT)
    data = tmp_path / "data"
    env = {"FLOWMESH_DATA_DIR": str(data)}
    try:
        up = flowmesh("db", "up", "--pooler", env=env)
        assert up.returncode == 0, up.stderr
        pooled = up.stdout.strip()
        assert pooled.endswith(f"port={pooler.Pooler(data / 'pgbouncer').port()}")
        assert "restarted the embedded PostgreSQL" in up.stderr  # reserved_connections, once
        assert flowmesh("db", "url", "--pooled", env=env).stdout.strip() == pooled
        pid = pooler.Pooler(data / "pgbouncer").pid()
        assert pid is not None

        # an agent ships through it
        beat = run([*script("flowmesh-edge"), "beat", "laptop", "--cpu-percent", "5",
                    "--database-url", pooled], env=env)
        assert beat.returncode == 0, beat.stderr
        with psycopg.connect(pooled, prepare_threshold=None) as conn:
            assert conn.execute("select count(*) from mesh_heartbeats").fetchone() == (1,)
            assert conn.execute("show reserved_connections").fetchone() == (
                str(embedded.RESERVED_CONNECTIONS),)

        # a device's credential goes through it, by password over TCP
        device_url = flowmesh("devices", "add", "home", "pi", env=env).stdout.strip()
        port = pooler.Pooler(data / "pgbouncer").port()
        assert device_url.startswith("postgresql://flowmesh_dev_pi_") and f"@127.0.0.1:{port}/" in device_url
        device_beat = run([*script("flowmesh-edge"), "beat", "pi", "--tetrahedron", "home",
                           "--database-url", device_url], env=env)
        assert device_beat.returncode == 0, device_beat.stderr
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(device_url, password="wrong", connect_timeout=10).close()
        direct = flowmesh("devices", "add", "home", "cam", "--direct", env=env).stdout.strip()
        assert "@127.0.0.1" not in direct and "host=" in direct  # the server's own socket

        # a second `db up --pooler` reuses both: no restart, same PgBouncer, same URL
        again = flowmesh("db", "up", "--pooler", env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == pooled and "restarted" not in again.stderr
        assert pooler.Pooler(data / "pgbouncer").pid() == pid

        status = flowmesh("db", "status", env=env)
        assert f"PgBouncer running, pid {pid}" in status.stdout, status.stdout + status.stderr

        directory = data / "pgbouncer"
        for secret in ("userlist.txt", "role-password"):
            assert stat.S_IMODE((directory / secret).stat().st_mode) == 0o600
        assert stat.S_IMODE((directory / "socket").stat().st_mode) == 0o700
        ini = (directory / "pgbouncer.ini").read_text()
        assert "pool_mode = transaction" in ini and "max_client_conn = 10000" in ini
        if os.geteuid() == 0:  # PgBouncer refuses root: it runs as the server's user
            assert psutil.Process(pid).username() == "embedded_postgres"
            assert (directory / "userlist.txt").owner() == "embedded_postgres"
    finally:
        stop = flowmesh("db", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
    assert "stopped PgBouncer" in stop.stdout and "stopped the embedded PostgreSQL" in stop.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    gone = flowmesh("db", "url", "--pooled", env=env)
    assert gone.returncode == 3 and "db up --pooler" in gone.stderr and gone.stderr.count("\n") == 1


def test_operators_get_in_when_devices_fill_every_other_slot(tmp_path):
    env = {"FLOWMESH_DATA_DIR": str(tmp_path / "data")}
    device, operator = "slot_filler", "slot_operator"
    fillers: list[psycopg.Connection] = []
    url = None
    try:
        up = flowmesh("db", "up", env=env)
        assert up.returncode == 0, up.stderr
        url = up.stdout.strip()
        with psycopg.connect(url, autocommit=True) as admin:
            max_connections, superuser_reserved, reserved = (int(v) for v in admin.execute(
                "select current_setting('max_connections'), "
                "current_setting('superuser_reserved_connections'), "
                "current_setting('reserved_connections')").fetchone())
            admin.execute(f"create role {device} login")
            admin.execute(f"create role {operator} login in role pg_use_reserved_connections")
        assert reserved == embedded.RESERVED_CONNECTIONS
        refusal = None
        for _ in range(max_connections):  # bounded: the server refuses before that
            try:
                fillers.append(psycopg.connect(url.replace("postgres:@", f"{device}:@")))
            except psycopg.OperationalError as exc:
                refusal = str(exc)
                break
        assert refusal is not None and "pg_use_reserved_connections" in refusal
        assert len(fillers) == max_connections - superuser_reserved - reserved
        with psycopg.connect(url.replace("postgres:@", f"{operator}:@")) as conn:
            assert conn.execute("select current_user").fetchone() == (operator,)
        with psycopg.connect(url) as conn:  # the superuser, on its own slots
            assert conn.execute("select current_user").fetchone() == ("postgres",)
    finally:
        for conn in fillers:
            conn.close()
        if url:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f"drop role if exists {device}")
                admin.execute(f"drop role if exists {operator}")
        stop = flowmesh("db", "stop", env=env)
        assert stop.returncode == 0, stop.stderr


def test_pooler_is_refused_for_a_server_given_by_url():
    refused = flowmesh("db", "up", "--pooler", "--database-url", UNREACHABLE, env={})
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "Supavisor" in refused.stderr
    pooled = flowmesh("db", "url", "--pooled", "--database-url", UNREACHABLE, env={})
    assert pooled.returncode == 1 and pooled.stderr.count("\n") == 1


def test_db_up_pooler_without_pgbouncer_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWMESH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(pooler, "binary", lambda: None)
    with pytest.raises(SystemExit) as exited:
        main.main(["db", "up", "--pooler"])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.count("\n") == 1 and "apt-get install pgbouncer" in err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_db_up_pooler_listens_where_told_and_device_urls_name_it(tmp_path):
    if pooler.binary() is None:
        pytest.skip(pooler.INSTALL_HINT)
    data = tmp_path / "data"
    env = {"FLOWMESH_DATA_DIR": str(data)}
    wildcard = flowmesh("db", "up", "--pooler", "--listen", "0.0.0.0", env=env)
    assert wildcard.returncode == 1 and wildcard.stderr.count("\n") == 1
    assert "devices reach" in wildcard.stderr and not data.exists()  # refused before anything started
    alone = flowmesh("db", "up", "--listen", "127.0.0.2", env=env)
    assert alone.returncode == 1 and "with --pooler" in alone.stderr
    try:
        up = flowmesh("db", "up", "--pooler", "--listen", "127.0.0.2", env=env)
        assert up.returncode == 0, up.stderr
        assert "listening on 127.0.0.2:" in up.stderr
        device_url = flowmesh("devices", "add", "home", "cam", env=env).stdout.strip()
        assert "@127.0.0.2:" in device_url
        beat = run([*script("flowmesh-edge"), "beat", "cam", "--tetrahedron", "home",
                    "--database-url", device_url], env=env)
        assert beat.returncode == 0, beat.stderr
        # remembered: a later `db up --pooler` keeps the address
        again = flowmesh("db", "up", "--pooler", env=env)
        assert again.returncode == 0 and "listening on 127.0.0.2:" in again.stderr
        port = pooler.Pooler(data / "pgbouncer").port()
        with pytest.raises(psycopg.OperationalError):  # not on loopback's usual address
            psycopg.connect(device_url.replace("@127.0.0.2:", "@127.0.0.1:"), connect_timeout=5).close()
        assert f"127.0.0.2:{port}" in flowmesh("db", "status", env=env).stdout
        # devices on other machines come from other addresses: by password from any,
        # trust only on the unix socket
        rules = [line.split() for line in (data / "pgbouncer" / "pg_hba.conf").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"] in rules
        assert [r for r in rules if r[-1] == "trust"] == [["local", "all", "all", "trust"]]
    finally:
        stop = flowmesh("db", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
