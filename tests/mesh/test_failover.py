"""The connection train on real sockets: UDP on loopback beside a relay the test runs.

The UDP path is cut (CuttableTransport: the socket stays open, nothing gets
through, both ways) while one member sends a numbered stream to the other: it
moves to the relay within 3 s, every message arrives exactly once, and it
moves back to UDP when the cut ends.
"""

from __future__ import annotations

import asyncio

import pytest

from flowmesh_edge import MeshNode, MessageType
from flowmesh_edge.mesh.security import mesh_id_of
from flowmesh_edge.mesh.transports.lossy import CuttableTransport
from flowmesh_edge.mesh.transports.relay import RelayTransport
from flowmesh_edge.mesh.transports.udp import UdpTransport
from flowmesh_edge.relay.server import Relay
from tests.conftest import until

KEY = "failover-test-mesh-key-0123456789"
TOKEN = "failover-relay-token-0123456789"


@pytest.fixture
async def relay():
    server = Relay("127.0.0.1", 0, [TOKEN])
    await server.start()
    yield server
    await server.close()


async def member(name: str, relay: Relay, peers=()) -> tuple[MeshNode, CuttableTransport]:
    lan = CuttableTransport(UdpTransport("127.0.0.1", 0))
    node = MeshNode(name, mesh_key=KEY, peers=list(peers),
                    transport=[lan, RelayTransport(name, mesh_id_of(KEY), [(relay.url, TOKEN)])])
    await node.start()
    return node, lan


def confirmed_both_ways(a: MeshNode, b: MeshNode) -> bool:
    for node, other in ((a, b.node_id), (b, a.node_id)):
        states = sorted(e["state"] for e in node.stats().paths.get(other, {}).get("endpoints", []))
        if states != ["active", "standby"]:
            return False
    return True


async def test_a_cut_lan_moves_to_the_relay_within_3s_and_back_with_every_message_once(relay):
    loop = asyncio.get_running_loop()
    a, a_lan = await member("a", relay)
    b, _ = await member("b", relay, [a.address])
    try:
        await until(lambda: confirmed_both_ways(a, b), 20)
        assert a.stats().paths["b"]["transport"] == "udp"
        received: list[int] = []
        b.on(MessageType.DIRECT, lambda m: received.append(m.payload["n"]))
        switches: list[tuple[float, str]] = []
        a.on_path(lambda peer, address, previous, rtt: switches.append((loop.time(), address.transport)))
        deaths: list[str] = []
        for node in (a, b):
            node.on_member(lambda e, p: deaths.append(e.node_id) if e.kind in ("dead", "suspect") else None)
        total, cut_at, restored_at = 200, None, None
        for n in range(total):  # 10 s at 20 messages a second
            if n == 40:
                a_lan.cut()
                cut_at = loop.time()
            if n == 120:
                a_lan.restore()
                restored_at = loop.time()
            await a.send("b", {"n": n})
            await asyncio.sleep(0.05)
        await until(lambda: len(set(received)) == total, 10)
        await asyncio.sleep(0.5)
        assert sorted(received) == list(range(total)), "a message was lost or delivered twice"
        to_relay = [t - cut_at for t, transport in switches if transport == "relay" and t >= cut_at]
        assert to_relay and to_relay[0] <= 3.0, switches
        await until(lambda: a.stats().paths["b"]["transport"] == "udp", 10)
        back = [t - restored_at for t, transport in switches if transport == "udp" and t >= restored_at]
        assert back, switches
        assert "b" not in deaths and "a" not in deaths
    finally:
        await a.stop()
        await b.stop()


async def test_members_that_share_only_a_relay_find_each_other_through_it(relay):
    """No peers configured and UDP on loopback without broadcast: the relay's peer
    list is the only way they learn of each other."""
    a, _ = await member("a", relay)
    b, _ = await member("b", relay)
    try:
        await until(lambda: "b" in a.peers() and a.peers()["b"].status == "alive", 15)
        await until(lambda: "a" in b.peers() and b.peers()["a"].status == "alive", 15)
    finally:
        await a.stop()
        await b.stop()
