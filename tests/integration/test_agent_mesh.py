"""Agents on the mesh report what they see into Postgres, through their outboxes.

Every database read goes through a worker thread: a blocking call on the
event loop would stall the mesh under test (its probes, its acks).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from flowmesh_edge import Agent, AgentConfig, MeshNode, Outbox, Shipper
from tests.conftest import until

#: Every test here runs twice: directly, and through PgBouncer in transaction mode.
pytestmark = pytest.mark.pooler

KEY = "agent-mesh-test-key-0123456789"
NAMES = ("pi", "cam", "laptop")


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchall()


async def settle(url: str, sql: str, want, shape=set, timeout: float = 20.0):
    """Poll ``sql`` (in a thread) until ``shape(rows) == want``; fail showing the last rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = shape(await asyncio.to_thread(query, url, sql))
        if got == want:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"{sql!r}: wanted {want!r}, still {got!r} after {timeout}s")
        await asyncio.sleep(0.05)


async def test_agents_record_membership_and_alerts(db_url, tmp_path):
    agents, stops, tasks, boxes = [], [], [], []
    first_address = None
    for name in NAMES:
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
    pi, cam, laptop = (a.mesh for a in agents)
    try:
        # each member records each other joining, once
        pairs = {(o, s) for o in NAMES for s in NAMES if o != s}
        await settle(db_url, "select observer, subject from mesh_events where kind = 'joined'", pairs)
        joined = await asyncio.to_thread(query, db_url, "select 1 from mesh_events where kind = 'joined'")
        assert len(joined) == 6
        statuses = dict(await asyncio.to_thread(query, db_url, "select node_id, mesh_status from nodes"))
        assert statuses == {"pi": "alive", "cam": "alive", "laptop": "alive"}

        # an alert from cam, recorded by the two members that received it, opens one guardian alert
        report = await cam.broadcast_alert({"type": "intrusion"}, priority="critical")
        assert report.complete and report.acked == {"pi", "laptop"}
        await settle(db_url, "select observer, subject from mesh_events where kind = 'alert'",
                     {("pi", "cam"), ("laptop", "cam")})
        await settle(db_url, "select alert_type, node_id, severity from guardian_alerts "
                             "where resolved_at is null", [("mesh-intrusion", "cam", "critical")], list)

        # laptop crashes (no goodbye): both others record its death
        assert {k: p.status for k, p in laptop.peers().items()} == {"pi": "alive", "cam": "alive"}
        await laptop.stop(leave=False)
        await settle(db_url, "select observer from mesh_events where kind = 'dead' and subject = 'laptop'",
                     {("pi",), ("cam",)})
        await settle(db_url, "select node_id, mesh_status from nodes",
                     {("pi", "alive"), ("cam", "alive"), ("laptop", "dead")})
        # and pi's heartbeats say what it sees: cam alive, laptop dead (and its gossip counters,
        # the alert among what it has seen)
        await settle(db_url, "select (payload -> 'mesh') - 'gossip'::text from mesh_heartbeats "
                             "where source = 'pi' order by created_at desc limit 1",
                     {"alive": 1, "suspect": 0, "dead": 1, "incarnation": pi.incarnation},
                     lambda rows: rows[0][0] if rows else None)
        (gossip,) = (await asyncio.to_thread(query, db_url, "select payload -> 'mesh' -> 'gossip' from "
                     "mesh_heartbeats where source = 'pi' order by created_at desc limit 1"))[0]
        assert set(gossip) == {"seen", "duplicates", "propagated"} and gossip["seen"] >= 1
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        for box in boxes:
            box.close()


async def test_a_member_reached_over_the_relay_shows_in_nodes_as_alive_on_the_relay(db_url, tmp_path):
    """cam's LAN is cut: pi fails over to the relay, and Postgres says so (a path event,
    nodes.mesh_transport) while cam stays alive."""
    from flowmesh_edge.mesh.security import mesh_id_of
    from flowmesh_edge.mesh.transports.lossy import CuttableTransport
    from flowmesh_edge.mesh.transports.relay import RelayTransport
    from flowmesh_edge.mesh.transports.udp import UdpTransport
    from flowmesh_edge.relay.server import Relay

    token = "agent-mesh-relay-token-0123456789"
    relay = Relay("127.0.0.1", 0, [token])
    await relay.start()
    stops, tasks, boxes, lans = [], [], [], {}
    try:
        for name in ("pi", "cam"):
            config = AgentConfig(node_id=name, tetrahedron="home", interval_s=0.2,
                                 backoff_initial_s=0.05, backoff_max_s=0.2)
            box = Outbox(tmp_path / f"{name}.sqlite3")
            lans[name] = CuttableTransport(UdpTransport("127.0.0.1", 0))
            mesh = MeshNode(name, mesh_key=KEY, meta={"tetrahedron": "home"}, transport=[
                lans[name], RelayTransport(name, mesh_id_of(KEY), [(relay.url, token)])])
            stop = asyncio.Event()
            tasks.append(asyncio.create_task(
                Agent(config, box, Shipper(box, db_url), sample=lambda: {}, mesh=mesh).run(stop)))
            stops.append(stop)
            boxes.append(box)
        # they find each other through the relay, then prefer UDP
        await settle(db_url, "select node_id, mesh_transport from nodes",
                     {("pi", "udp"), ("cam", "udp")}, timeout=30)
        lans["cam"].cut()
        await settle(db_url, "select node_id, mesh_status, mesh_transport from nodes where node_id = 'cam'",
                     {("cam", "alive", "relay")}, timeout=30)
        switch = await asyncio.to_thread(query, db_url, "select details ->> 'previous', details -> 'rtt_ms' "
                                         "from mesh_events where kind = 'path' and observer = 'pi' "
                                         "and details ->> 'transport' = 'relay'")
        assert switch and switch[0][0].startswith("udp:") and switch[0][1] is not None
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        for box in boxes:
            box.close()
        await relay.close()
