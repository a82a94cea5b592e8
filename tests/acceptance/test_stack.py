"""`flowmesh up` as `make run` runs it: a real supervisor process with real children
against the test database, stopped by a real signal, or by a child dying."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import psycopg

from flowmesh import pooler
from tests.conftest import server_directory, wait_for
from tests.support.lines import Lines

STARTED = re.compile(r"^started (\w+) \(pid (\d+)\): ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_up(db_url: str, tmp_path, *args: str) -> tuple[subprocess.Popen, Lines, int]:
    """`flowmesh up ARGS` on free loopback ports (an argument ``PORT``: another free one)."""
    port = free_port()
    args = tuple(str(free_port()) if a == "PORT" else a for a in args)
    env = {k: v for k, v in os.environ.items() if k != "FLOWMESH_DATABASE_URL"}
    # the agent's outbox and the demo's scratch files stay in the test's directory
    env.update(FLOWMESH_DATA_DIR=str(tmp_path / "data"), FLOWMESH_DEMO_SPEED="5")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowmesh.cli", "up", "--database-url", db_url, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, Lines(proc.stdout), port


def started(out: Lines, names: set[str]) -> dict[str, int]:
    """Wait for every child of ``names`` to be started; their pids."""
    pids: dict[str, int] = {}
    while set(pids) != names:
        match = STARTED.match(out.wait_for(lambda line: STARTED.match(line) is not None, timeout=20))
        pids[match.group(1)] = int(match.group(2))
    return pids


def lines_matching(out: Lines, *patterns: str, timeout: float = 20) -> None:
    """Wait for a line matching each pattern, in any order (the children run side by side)."""
    left = [re.compile(p) for p in patterns]
    deadline = time.monotonic() + timeout
    while left:
        wanted = list(left)
        line = out.wait_for(lambda line, wanted=wanted: any(p.match(line) for p in wanted),
                            timeout=max(0.1, deadline - time.monotonic()))
        left = [p for p in left if not p.match(line)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def expected_children(demo: bool) -> set[str]:
    # the test server has no pg_cron: the scheduled checks run as the --every loop
    names = {"agent", "checks", "dashboard"}
    return names | ({"demo"} if demo else set())


def test_up_prints_the_dashboard_first_runs_every_part_and_stops_them_all_on_sigint(db_url, tmp_path):
    proc, out, port = start_up(db_url, tmp_path, "--demo", "--agent-http-port", "PORT")
    pids: dict[str, int] = {}
    try:
        first = out.wait_for(lambda line: True, timeout=20)
        assert first == f"dashboard: http://127.0.0.1:{port}/"
        endpoints = out.wait_for(lambda line: line.startswith("agent endpoints: "))
        pids = started(out, expected_children(demo=True))
        # every part works, its lines prefixed with its name
        lines_matching(out, r"checks +\| .* OK: ", r"demo +\| mesh: phone, pi and laptop")
        with psycopg.connect(db_url, autocommit=True) as conn:
            wait_for(lambda: conn.execute(
                "select count(*) from nodes n join tetrahedrons t on t.id = n.tetrahedron_id"
                " where t.name = 'default' and n.last_heartbeat_at is not null").fetchone()[0] == 1,
                timeout=20)
        map_url = endpoints.removeprefix("agent endpoints: ")
        wait_for(lambda: answers(map_url.removesuffix("/map") + "/health"), timeout=20)
        wait_for(lambda: answers(first.removeprefix("dashboard: ") + "api/health"), timeout=20)
        assert all(not gone(pid) for pid in pids.values())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=25) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        text = out.close()
    assert "SIGINT received: stopping" in text, text
    for name in pids:
        assert f"{name} stopped (exit code 0)" in text, text
    wait_for(lambda: all(gone(pid) for pid in pids.values()), timeout=5)
    # the agent flushed and said so on its way out: it was stopped, not killed
    assert re.search(r"^agent +\| .* stopped: \d+ heartbeats sampled", text, re.MULTILINE), text


def test_a_child_that_dies_stops_the_others_and_the_exit_code_says_so(db_url, tmp_path):
    proc, out, _ = start_up(db_url, tmp_path)
    pids: dict[str, int] = {}
    try:
        pids = started(out, expected_children(demo=False))
        out.wait_for(lambda line: re.match(r"checks +\| .* OK: ", line) is not None)
        began = time.monotonic()
        os.kill(pids["agent"], signal.SIGKILL)
        code = proc.wait(timeout=25)
        stopped_in = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        text = out.close()
    assert code == 1, text
    assert "agent exited with code -9: stopping the others" in text, text
    assert "checks stopped (exit code 0)" in text, text
    assert stopped_in < 20, text
    wait_for(lambda: all(gone(pid) for pid in pids.values()), timeout=5)


def test_children_do_not_outlive_a_killed_supervisor(db_url, tmp_path):
    proc, out, _ = start_up(db_url, tmp_path)
    pids: dict[str, int] = {}
    try:
        pids = started(out, expected_children(demo=False))
        proc.kill()  # no chance to stop anything: the kernel tells the children (Linux)
        proc.wait(timeout=10)
        wait_for(lambda: all(gone(pid) for pid in pids.values()), timeout=20)
    finally:
        for pid in pids.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        out.close()


def test_up_on_the_embedded_default_leaves_the_database_running(tmp_path):
    """What `make run` does: no URL, so the embedded server (and its PgBouncer when
    installed) is started; the agent ships through the pooler; after Ctrl-C the
    server is still up, and the output says how to stop it."""
    with server_directory("flowmesh-test-up-") as base:
        env = {k: v for k, v in os.environ.items() if k != "FLOWMESH_DATABASE_URL"}
        env["FLOWMESH_DATA_DIR"] = str(base / "data")
        proc = subprocess.Popen([sys.executable, "-m", "flowmesh.cli", "up", "--port", str(free_port())],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out = Lines(proc.stdout)
        try:
            assert out.wait_for(lambda line: True, timeout=20).startswith("dashboard: ")
            database = out.wait_for(lambda line: line.startswith("database: "), timeout=60)
            assert database.endswith("(embedded; it keeps running after this stops: "
                                     "`flowmesh db stop` stops it)")
            started(out, expected_children(demo=False))
            via = re.compile(rf"agent +\| .* database postgresql://\S+host=\S+/"
                             rf"{'pgbouncer/socket' if pooler.binary() else 'postgres'}\b")
            out.wait_for(lambda line: via.match(line) is not None)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=25)
            text = out.close()
            assert code == 0, text
            last = text.splitlines()[-1]
            assert last == "the embedded database is still running (`flowmesh db stop` stops it)", text
            status = subprocess.run([sys.executable, "-m", "flowmesh.cli", "db", "status"], env=env,
                                    capture_output=True, text=True, timeout=30)
            assert "embedded server: running" in status.stdout, status.stdout + status.stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            out.close()
            subprocess.run([sys.executable, "-m", "flowmesh.cli", "db", "stop"], env=env,
                           capture_output=True, timeout=60)
