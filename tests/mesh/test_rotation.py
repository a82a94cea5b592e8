"""Key rotation over a running mesh (rotation.py), in virtual time on the in-memory network."""

from __future__ import annotations

import asyncio
import json

from flowmesh_edge.mesh import InMemoryNetwork, MessageType, wire
from flowmesh_edge.mesh.keyring import Keyring, key_id
from flowmesh_edge.mesh.simulation import (
    converge,
    crash,
    run_virtual,
    start_mesh,
    start_node,
    stop_all,
    virtual_wall_clock,
)
from flowmesh_edge.mesh.wire import Frame
from tests.conftest import until

OLD = b"simulation-mesh-key!"  # start_mesh's key
NEW = "the rotated mesh key, 16+ bytes"



def test_rotating_the_key_of_a_running_10_member_mesh_kills_nobody_and_loses_nothing():
    async def main():
        nodes = await start_mesh(10, InMemoryNetwork(seed=21))
        await converge(nodes)
        deaths: list[tuple[str, str]] = []
        got: dict[str, set[int]] = {n.node_id: set() for n in nodes}
        saved: dict[str, list] = {n.node_id: [] for n in nodes}
        for n in nodes:
            n.on_member(lambda e, _p, n=n: e.kind == "dead" and deaths.append((n.node_id, e.node_id)))
            n.on(MessageType.ROUTE_BROADCAST, lambda m, n=n: got[n.node_id].add(m.payload["seq"]))
            n.on_keyring(lambda version, keys, n=n: saved[n.node_id].append((version, keys)))
        sent = 0

        async def chatter():  # a member broadcasting all through the rotation
            nonlocal sent
            for seq in range(60):
                await nodes[3].broadcast({"seq": seq})
                sent += 1
                await asyncio.sleep(0.1)

        talking = asyncio.ensure_future(chatter())
        await asyncio.sleep(0.5)
        complete = await nodes[0].rotate_key(NEW)
        await talking
        await asyncio.sleep(5)  # gossip settles; probes carry on under the new key
        rings = {n.node_id: (n.rotation.version, tuple(n.keyring.ids())) for n in nodes}
        drops = {n.node_id: dict(n.stats()["dropped"]) for n in nodes}
        await stop_all(nodes)
        return complete, deaths, got, sent, rings, drops, saved

    complete, deaths, got, sent, rings, drops, saved = run_virtual(main())
    assert complete  # every step acknowledged by every member
    assert deaths == []
    # three steps: install, use, remove
    assert set(rings.values()) == {(3, (key_id(NEW),))}, rings
    for node_id, seqs in got.items():
        if node_id != "node-003":
            assert seqs == set(range(sent)), (node_id, sorted(set(range(sent)) - seqs))
    # not one datagram refused for its key at any member during the rotation
    for node_id, dropped in drops.items():
        assert not {"forged", "removed_key", "keyring_unsealed"} & set(dropped), (node_id, dropped)
    # every member was told each step, so that the agent saves it
    assert all([v for v, _ in steps] == [1, 2, 3] for steps in saved.values()), saved
    assert saved["node-005"][1][1] == [NEW, OLD.decode()]  # used, old key still accepted


def test_a_member_that_was_away_catches_up_when_it_talks_again():
    async def main():
        net = InMemoryNetwork(seed=5)
        nodes = await start_mesh(4, net)
        await converge(nodes)
        away = nodes[3]
        await crash(away)
        # install and use the new key while it is away; the old key is still accepted
        await nodes[0].change_keys([NEW, OLD])
        back = await start_node("node-003", net, peers=[nodes[0].address], seed=99)
        nodes[3] = back
        await converge(nodes, timeout=20)
        await until(lambda: back.keyring.primary.id == key_id(NEW), 10)
        ring = (back.rotation.version, back.keyring.ids())
        # now the old key can go: the member that was away holds the new one
        complete = await nodes[1].change_keys([NEW])
        await asyncio.sleep(3)
        alive = [sum(p.status == "alive" for p in n.peers().values()) for n in nodes]
        await stop_all(nodes)
        return ring, complete, alive, back.keyring.ids()

    ring, complete, alive, final = run_virtual(main())
    assert ring == (2, [key_id(NEW), key_id(OLD)])
    assert complete and alive == [3, 3, 3, 3]
    assert final == [key_id(NEW)]


def _crafted(sender: str, body: bytes, ring: Keyring, seal: bool, seq: int) -> bytes:
    frame = Frame(MessageType.KEYRING, sender, 1, seq, int(virtual_wall_clock()), body, (),
                  int(virtual_wall_clock() * 1e6))
    return wire.encode_frame(frame, ring.primary.seal if seal else ring.primary.tagged)


def test_forged_unsealed_stale_malformed_and_replayed_rotations_change_nothing():
    async def main():
        net = InMemoryNetwork(seed=8)
        nodes = await start_mesh(2, net)
        await converge(nodes)
        victim = nodes[0]
        mallory = net.transport()
        await mallory.start(lambda data, src: None)
        ours, theirs = Keyring(OLD), Keyring("mallory's own mesh key")
        takeover = json.dumps({"v": 99, "o": "mallory", "k": ["mallory's own mesh key"]}).encode()
        attempts = {
            # under a key the mesh does not hold
            "forged": _crafted("mallory", takeover, theirs, True, 1),
            # by a key holder, but the keys would cross the air in clear
            "keyring_unsealed": _crafted("mallory", takeover, ours, False, 2),
            "keyring_malformed": _crafted("mallory", b'{"v": 99, "o": "m", "k": ["short"]}', ours, True, 3),
        }
        before = victim.keyring.ids()
        for datagram in attempts.values():
            mallory.send(datagram, victim.address)
        await asyncio.sleep(0.5)
        unchanged = victim.keyring.ids() == before
        # a genuine rotation, captured and replayed
        ring = {"v": 1, "o": "node-001", "k": [OLD.decode(), NEW]}
        genuine = _crafted("node-777", json.dumps(ring).encode(), ours, True, 10**6)
        mallory.send(genuine, victim.address)
        await asyncio.sleep(0.2)
        mallory.send(genuine, victim.address)
        await asyncio.sleep(0.2)
        after_genuine = victim.keyring.ids()
        # an older ring (a member that missed it, or a replay from long ago) is not taken
        stale = _crafted("node-777", json.dumps({"v": 0, "o": "", "k": [OLD.decode()]}).encode(), ours, True,
                         10**6 + 1)
        mallory.send(stale, victim.address)
        await asyncio.sleep(0.2)
        after_stale = (victim.keyring.ids(), victim.rotation.stats.stale)
        dropped = dict(victim.stats()["dropped"])
        result = unchanged, after_genuine, after_stale, dropped
        await mallory.close()
        await stop_all(nodes)
        return result

    unchanged, after_genuine, (after_stale, stale), dropped = run_virtual(main())
    assert unchanged
    assert after_genuine == [key_id(OLD), key_id(NEW)]  # the genuine one was taken, once
    assert after_stale == after_genuine and stale == 1
    for reason in ("forged", "keyring_unsealed", "keyring_malformed", "replayed"):
        assert dropped.get(reason) == 1, (reason, dropped)


def test_a_datagram_under_a_removed_key_is_refused_and_counted():
    async def main():
        net = InMemoryNetwork(seed=3)
        nodes = await start_mesh(3, net)
        await converge(nodes)
        assert await nodes[0].rotate_key(NEW)
        straggler = net.transport()
        await straggler.start(lambda data, src: None)
        # a member left behind, still on the old key
        old_ring = Keyring(OLD)
        ping = Frame(MessageType.PING, "node-009", 1, 1, int(virtual_wall_clock()),
                     wire.encode_ping(1, "node-000", (1, 0)), (), 1)
        straggler.send(wire.encode_frame(ping, old_ring.protect), nodes[0].address)
        await asyncio.sleep(0.2)
        dropped = dict(nodes[0].stats()["dropped"])
        await straggler.close()
        await stop_all(nodes)
        return dropped, "node-009" in nodes[0].peers()

    dropped, joined = run_virtual(main())
    assert dropped.get("removed_key") == 1 and not joined
