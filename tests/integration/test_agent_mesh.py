"""Agents on the mesh report what they see into Postgres, through their outboxes."""

from __future__ import annotations

import asyncio

import psycopg

from flowmesh_edge import Agent, AgentConfig, MeshNode, Outbox, Shipper
from tests.conftest import until

KEY = "agent-mesh-test-key-0123456789"




def query(url: str, sql: str):
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchall()


async def test_agents_record_membership_and_alerts(db_url, tmp_path):
    agents, stops, tasks, boxes = [], [], [], []
    first_address = None
    for name in ("pi", "cam", "laptop"):
        config = AgentConfig(node_id=name, tetrahedron="home", interval_s=0.2,
                             backoff_initial_s=0.05, backoff_max_s=0.2)
        box = Outbox(tmp_path / f"{name}.sqlite3")
        mesh = MeshNode(name, port=0, mesh_key=KEY, bind="127.0.0.1",
                        peers=[first_address] if first_address else [], meta={"tetrahedron": "home"})
        agent = Agent(config, box, Shipper(box, db_url), sample=lambda: {"cpu_percent": 3.0}, mesh=mesh)
        stop = asyncio.Event()
        tasks.append(asyncio.create_task(agent.run(stop)))
        await until(lambda m=mesh: m._running)
        first_address = first_address or mesh.address
        agents.append(agent)
        stops.append(stop)
        boxes.append(box)
    try:
        await until(lambda: len(query(db_url, "select 1 from mesh_events where kind = 'joined'")) >= 6)
        statuses = dict(query(db_url, "select node_id, mesh_status from nodes"))
        assert statuses == {"pi": "alive", "cam": "alive", "laptop": "alive"}
        # an alert from cam, recorded by the members that received it
        report = await agents[1].mesh.broadcast_alert({"type": "intrusion"}, priority="critical")
        assert report.complete
        await until(lambda: query(
            db_url, "select 1 from guardian_alerts where alert_type = 'mesh-intrusion'"))
        # laptop crashes (no goodbye): the others record its death
        await agents[2].mesh.stop(leave=False)
        await until(lambda: query(db_url, "select 1 from nodes where node_id = 'laptop' "
                                          "and mesh_status = 'dead'"), timeout=20)
        reporters = {r[0] for r in query(db_url, "select observer from mesh_events "
                                                 "where kind = 'dead' and subject = 'laptop'")}
        assert reporters <= {"pi", "cam"} and reporters
        payload = query(db_url, "select payload from mesh_heartbeats where source = 'pi' "
                                "order by created_at desc limit 1")[0][0]
        assert payload["mesh"]["alive"] >= 1
        assert agents[2].mesh.peers() is not None
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        for box in boxes:
            box.close()
