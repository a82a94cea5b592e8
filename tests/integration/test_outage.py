"""A database outage loses no heartbeat: the agent keeps sampling into its
outbox while the link is cut, then ships everything exactly once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from flowmesh_edge import Agent, AgentConfig, Outbox, Shipper
from tests.conftest import db_name, until

#: Every test here runs twice: directly, and through PgBouncer in transaction mode.
pytestmark = pytest.mark.pooler


async def test_outage_loses_and_duplicates_nothing(db_url, proxy, tmp_path):
    url = proxy.url(db_name(db_url))
    config = AgentConfig(node_id="pi", tetrahedron="home", interval_s=0.05,
                         backoff_initial_s=0.05, backoff_max_s=0.3, flush_timeout_s=5)

    def stored() -> int:
        with psycopg.connect(db_url) as c:
            return c.execute("select count(*) from mesh_heartbeats").fetchone()[0]

    with Outbox(tmp_path / "outbox.sqlite3") as box:
        agent = Agent(config, box, Shipper(box, url), sample=lambda: {"cpu_percent": 5.0})
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: stored() >= 5, blocking=True)
            proxy.down()
            during = agent.stats.sampled
            await until(lambda: agent.stats.sampled >= during + 20 and agent.stats.failures >= 2)
            assert await asyncio.to_thread(box.pending) >= 10  # queued, not lost
            proxy.up()
            await until(lambda: box.pending() == 0 and agent.stats.last_error is None, blocking=True)
        finally:
            stop.set()
            stats = await asyncio.wait_for(task, timeout=15)

    assert box.path.exists()
    with psycopg.connect(db_url) as c:
        total, distinct, seqs = c.execute(
            "select count(*), count(distinct seq), array_agg(seq order by seq) from mesh_heartbeats"
        ).fetchone()
    assert total == distinct == stats.sampled
    assert seqs == sorted(set(seqs))
    assert stats.failures >= 2


async def test_stop_with_database_away_keeps_the_outbox(proxy, db_url, tmp_path):
    proxy.down()
    url = proxy.url(db_name(db_url))
    config = AgentConfig(node_id="pi", interval_s=0.05, backoff_initial_s=0.05,
                         backoff_max_s=0.2, flush_timeout_s=0.5)
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as box:
        agent = Agent(config, box, Shipper(box, url), sample=lambda: {})
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await until(lambda: agent.stats.sampled >= 5)
        stop.set()
        stats = await asyncio.wait_for(task, timeout=10)
    with Outbox(path) as box:
        assert box.pending() == stats.sampled
    # the next start ships them
    proxy.up()
    with Outbox(path) as box:
        shipper = Shipper(box, url)
        report = shipper.flush()
        shipper.close()
    assert report.inserted == stats.sampled
