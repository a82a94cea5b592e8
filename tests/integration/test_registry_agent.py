"""Hash registry entries added on an agent's mesh node reach Postgres through its
outbox (register_hashes), and a database outage loses none of them."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from flowmesh import migrations
from flowmesh.limits import EMBEDDING_DIMENSIONS
from flowmesh_edge import Agent, AgentConfig, MeshNode, Outbox, Shipper
from flowmesh_edge.outbox import HASH
from tests.conftest import db_name, until
from tests.integration.test_pg_cron import cron_server  # noqa: F401 (PostgreSQL 15, no pgvector)

KEY = "registry-agent-test-key-0123456789"


def basis(i: int, weight: float = 1.0) -> list[float]:
    vec = [0.0] * EMBEDDING_DIMENSIONS
    vec[i] = weight
    return vec


def registry_rows(url: str) -> dict[str, tuple]:
    with psycopg.connect(url) as c:
        rows = c.execute("select hash, data_type, node_id, version, confidence, metadata, "
                         "embedding::text from hash_registry").fetchall()
    return {h: (t, n, v, c, m, json.loads(e)) for h, t, n, v, c, m, e in rows}


def nearest(url: str, embedding: list[float]) -> list[tuple]:
    with psycopg.connect(url) as c:
        (t_uuid,) = c.execute("select id from tetrahedrons where name = 'home'").fetchone()
        return c.execute("select hash, node_id, version from search_hashes(%s, %s::extensions.vector, 3)",
                         (t_uuid, json.dumps(embedding))).fetchall()


async def test_entries_added_on_an_agent_reach_postgres_across_an_outage(db_url, proxy, tmp_path):
    url = proxy.url(db_name(db_url))
    config = AgentConfig(node_id="cam", tetrahedron="home", interval_s=0.1,
                         backoff_initial_s=0.05, backoff_max_s=0.3, flush_timeout_s=5)
    mesh = MeshNode("cam", port=0, mesh_key=KEY, bind="127.0.0.1")
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        agent = Agent(config, box, Shipper(box, url), sample=lambda: {"cpu_percent": 5.0}, mesh=mesh)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: mesh.running, 10)
            mesh.add_hash("face_1", "person", basis(0), {"person_id": "p001"}, confidence=0.9)
            await until(lambda: "face_1" in registry_rows(db_url), 15, blocking=True)

            proxy.down()
            await until(lambda: agent.stats.failures >= 1, 15)
            mesh.add_hash("face_1", "person", basis(1), {"person_id": "p001", "seen": 2})  # version 2
            mesh.add_hash("car_7", "vehicle", basis(2, 3.0))
            await until(lambda: box.depth.get("hash") == 2, 10)  # queued, not lost
            assert set(await asyncio.to_thread(registry_rows, db_url)) == {"face_1"}
            proxy.up()
            await until(lambda: box.depth.get("hash") == 0 and agent.stats.last_error is None, 20)
        finally:
            stop.set()
            stats = await asyncio.wait_for(task, timeout=15)

    assert stats.hashes == 3
    rows = registry_rows(db_url)
    assert rows == {
        "face_1": ("person", "cam", 2, None, {"person_id": "p001", "seen": 2}, basis(1)),
        "car_7": ("vehicle", "cam", 1, None, {}, basis(2, 3.0)),
    }
    assert nearest(db_url, basis(1)) == [("face_1", "cam", 2), ("car_7", "cam", 1)]


@pytest.mark.slow
def test_without_pgvector_entries_are_dead_lettered_and_heartbeats_still_ship(cron_server, tmp_path):  # noqa: F811
    migrations.upgrade(cron_server)
    entry = {"hash": "face_1", "data_type": "person", "node": "cam", "embedding": basis(0), "version": 1}
    with Outbox(tmp_path / "outbox.sqlite3") as box:
        box.put("home", "cam", entry, kind=HASH)
        box.put("home", "cam", {"cpu_percent": 1.0})
        box.put("home", "cam", {**entry, "hash": "face_2"}, kind=HASH)
        box.put("home", "cam", {"cpu_percent": 2.0})
        shipper = Shipper(box, cron_server)
        try:
            report = shipper.flush()
        finally:
            shipper.close()
        assert (report.inserted, report.dead_lettered, box.pending()) == (2, 2, 0)
        letters = box.dead_letters()
    assert [sqlstate for _, _, sqlstate, _ in letters] == ["0A000", "0A000"]
    assert all("pgvector" in error for *_, error in letters)
    with psycopg.connect(cron_server) as c:
        assert c.execute("select count(*) from mesh_heartbeats").fetchone() == (2,)
