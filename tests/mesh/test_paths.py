"""The connection train (paths.py), in virtual time on in-memory networks.

Two members share a LAN (``mem``, fast) and a relay-like path (``relay``,
30 ms each way, no broadcast). The LAN is cut and restored while one sends a
numbered stream to the other: the sender must move to the relay within 3 s
and back to the LAN when it returns, with every message delivered exactly once,
and nobody declared dead.
"""

from __future__ import annotations

import asyncio
import random

from flowmesh_edge.mesh import Address, InMemoryNetwork, LinkConditions, MeshConfig, MeshNode, MessageType
from flowmesh_edge.mesh.simulation import converge, run_virtual, start_mesh, start_node
from tests.conftest import until


def networks(seed: int) -> tuple[InMemoryNetwork, InMemoryNetwork]:
    lan = InMemoryNetwork(seed=seed)
    relay = InMemoryNetwork(seed=seed + 1, name="relay", broadcast=False,
                            conditions=LinkConditions(delay_s=0.03, jitter_s=0.01))
    return lan, relay


def on(network: InMemoryNetwork, node) -> Address:
    """The node's address on that network."""
    return node._transport.get(network.name).address


async def pair(seed: int, config: MeshConfig | None = None):
    """Two members, each on both networks, joined through the LAN; both paths confirmed."""
    lan, relay = networks(seed)
    a = await start_node("a", [lan, relay], seed=seed, config=config)
    b = await start_node("b", [lan, relay], peers=[a.address], seed=seed + 100, config=config)
    await converge([a, b])

    def both_paths_confirmed() -> bool:
        for node, other in ((a, "b"), (b, "a")):
            endpoints = node.stats().paths.get(other, {}).get("endpoints", [])
            if sorted(e["state"] for e in endpoints) != ["active", "standby"]:
                return False
        return True

    await until(both_paths_confirmed, 15)
    return lan, relay, a, b


def test_a_member_learns_every_path_of_another_and_uses_the_preferred_one():
    async def main():
        _, _, a, b = await pair(1)
        view = a.stats().paths["b"]
        assert view["transport"] == "mem"  # the LAN before the relay
        assert [e["address"].split(":")[0] for e in view["endpoints"]] == ["mem", "relay"]
        assert all(e["rtt_ms"] is not None for e in view["endpoints"])
        assert a.peers()["b"].path.transport == "mem"
        await a.stop()
        await b.stop()

    run_virtual(main())


async def stream_through_a_cut(seed: int, *, rng: random.Random, config: MeshConfig | None = None,
                               cut_s: tuple[float, float] = (8, 12), total: int = 600) -> dict:
    """Send 1 message every 50 ms from a to b (``total`` of them); cut a's LAN at a
    random time in the first 10 s for ``cut_s`` (a range). Return what happened."""
    loop = asyncio.get_running_loop()
    lan, relay, a, b = await pair(seed, config)
    received: list[int] = []
    b.on(MessageType.DIRECT, lambda m: received.append(m.payload["n"]))
    switches: list[tuple[float, str]] = []
    a.on_path(lambda node, address, previous, rtt: switches.append((loop.time(), address.transport))
              if node == "b" else None)
    deaths: list[str] = []
    for node in (a, b):
        node.on_member(lambda e, p: deaths.append(e.node_id) if e.kind == "dead" else None)
    cut_at = loop.time() + rng.uniform(2, 10)
    restore_at = cut_at + rng.uniform(*cut_s)
    cut = restored = False
    for n in range(total):
        now = loop.time()
        if not cut and now >= cut_at:
            lan.cut(a.address)
            cut, cut_at = True, now
        if cut and not restored and now >= restore_at:
            lan.restore(a.address)
            restored, restore_at = True, now
        await a.send("b", {"n": n})
        await asyncio.sleep(0.05)
    await until(lambda: len(set(received)) == total, 10)
    await asyncio.sleep(1)  # any late duplicate would show now
    to_relay = [t - cut_at for t, transport in switches if transport == "relay" and t >= cut_at]
    back = [t - restore_at for t, transport in switches if transport == "mem" and t >= restore_at]
    after_cut = [transport for t, transport in switches if t >= cut_at]
    result = {"after_cut": after_cut, "received": received, "total": total,
              "failover_s": to_relay[0] if to_relay else None,
              "return_s": back[0] if back else None, "deaths": deaths,
              "replayed": a.paths.replayed, "final": a.stats().paths["b"]["transport"]}
    await a.stop()
    await b.stop()
    return result


def test_a_cut_lan_fails_over_to_the_relay_within_3s_and_back_with_every_message_once():
    """20 trials with random cut times and lengths: each one fails over within 3 s,
    returns to the LAN, delivers all 600 messages exactly once, declares nobody dead."""

    async def main():
        rng = random.Random(9)
        return [await stream_through_a_cut(seed, rng=rng) for seed in range(20)]

    results = run_virtual(main())
    for r in results:
        assert sorted(r["received"]) == list(range(r["total"])), "lost or duplicated"
        assert r["failover_s"] is not None and r["failover_s"] <= 3.0, r["failover_s"]
        assert r["return_s"] is not None and r["return_s"] <= 6.0, r["return_s"]
        assert r["final"] == "mem"
        assert r["after_cut"] == ["relay", "mem"], "the path flapped"
        assert r["deaths"] == []
    # messages sent on the LAN after it was cut, before the switch, were sent again
    assert sum(r["replayed"] for r in results) > 0


def test_a_member_reachable_only_over_the_relay_stays_alive():
    async def main():
        lan, _, a, b = await pair(2)
        events: list[str] = []
        a.on_member(lambda e, p: events.append(e.kind))
        lan.cut(b.address)
        await asyncio.sleep(60)
        assert a.peers()["b"].status == "alive"
        assert "dead" not in events
        assert a.stats().paths["b"]["transport"] == "relay"
        await a.stop()
        await b.stop()

    run_virtual(main())


def test_with_every_path_cut_probes_back_off_and_the_member_comes_back_when_one_returns():
    async def main():
        # the dead stay listed (and probed) for the whole test
        lan, relay, a, b = await pair(3, MeshConfig(dead_reap_s=600))
        lan.cut(b.address)
        relay.cut(on(relay, b))
        await until(lambda: a.peers()["b"].status == "dead", 30)
        probes = a.stats().sent_by_type.get("PATH_PROBE", 0)
        await asyncio.sleep(240)
        later = a.stats().sent_by_type.get("PATH_PROBE", 0) - probes
        # two paths probed every second: 480 probes; doubling waits up to 60 s: about 12
        assert 4 <= later <= 30, later
        relay.restore(on(relay, b))
        # a probe gets through; b, told it is held dead, refutes
        await until(lambda: a.peers()["b"].status == "alive", 90)
        await until(lambda: a.stats().paths["b"]["transport"] == "relay", 10)
        await a.stop()
        await b.stop()

    run_virtual(main())


def test_a_mesh_on_one_network_sends_no_path_probes():
    """One endpoint per member: SWIM alone watches them, as before the train."""

    async def main():
        net = InMemoryNetwork(seed=4)
        nodes = await start_mesh(5, net)
        await converge(nodes)
        await asyncio.sleep(30)
        sent = [n.stats().sent_by_type for n in nodes]
        for n in nodes:
            await n.stop()
        return sent

    for by_type in run_virtual(main()):
        assert "PATH_PROBE" not in by_type and "PATH_ACK" not in by_type


def test_with_slow_timers_like_tailscales_failover_is_slower_but_as_clean():
    """A path probed every 3 s, trusted 6.5 s after its last answer (Tailscale's
    figures), a probe waiting 6.5 s: traffic goes on the relay too once the trust
    lapses, and moves there after two probes went unanswered (up to 3 + 2 x 6.5 s);
    probes lost in the cut expire after it is over, and must not pull the path down
    again, nor make it flap."""
    slow = MeshConfig(path_probe_active_s=3.0, path_trust_s=3.5, path_probe_timeout_s=6.5)

    async def main():
        rng = random.Random(11)
        return [await stream_through_a_cut(seed, rng=rng, config=slow, cut_s=(20, 24), total=900)
                for seed in range(5)]

    for r in run_virtual(main()):
        assert sorted(r["received"]) == list(range(r["total"])), "lost or duplicated"
        assert r["failover_s"] is not None and r["failover_s"] <= 16.5, r["failover_s"]
        assert r["after_cut"] == ["relay", "mem"], r["after_cut"]
        assert r["deaths"] == []


def test_a_lossy_lan_is_kept_not_flapped_to_the_relay_and_back():
    """A lost probe is asked again at once and traffic goes on the relay too meanwhile;
    the path in use changes only when two probes in a row go unanswered. 10 minutes
    at 1 % and 5 % loss on the LAN."""

    async def main(loss: float) -> int:
        lan = InMemoryNetwork(seed=1, conditions=LinkConditions(loss=loss))
        relay = InMemoryNetwork(seed=2, name="relay", broadcast=False,
                                conditions=LinkConditions(delay_s=0.03, jitter_s=0.01))
        a = await start_node("a", [lan, relay], seed=1)
        b = await start_node("b", [lan, relay], peers=[a.address], seed=2)
        await converge([a, b])
        await asyncio.sleep(10)
        switches: list[str] = []
        a.on_path(lambda peer, address, previous, rtt: switches.append(address.transport))
        for n in range(6000):
            await a.send("b", {"n": n})
            await asyncio.sleep(0.1)
        await a.stop()
        await b.stop()
        return len(switches)

    assert run_virtual(main(0.01)) <= 2  # one switch away and back every 5 minutes at worst
    assert run_virtual(main(0.05)) <= 40  # (100 when a single lost probe moved the traffic)


class _Host:
    """The least a ConnectionTrain needs, with no loop: nothing is scheduled."""

    node_id = "me"
    running = False

    def __init__(self):
        self.paths: list[tuple] = []

    def now(self) -> float:
        return 0.0

    def wall(self) -> float:
        return 1_700_000_000.0

    def handles(self, address: Address) -> bool:
        return address.transport in ("udp", "relay")

    def path_changed(self, *args) -> None:
        self.paths.append(args)

    def send_frame(self, mtype, body, address, piggyback=True) -> None:
        pass


def train() -> tuple[_Host, object]:
    from flowmesh_edge.mesh.paths import ConnectionTrain

    host = _Host()
    return host, ConnectionTrain(host, MeshConfig(), random.Random(0))


def test_a_second_source_address_on_the_same_transport_adds_no_path():
    """A multi-homed or wildcard-bound member heard from another address: still one
    endpoint, so a UDP-only mesh still sends no path probe."""
    host, t = train()
    first, second = Address.udp("192.0.2.7", 9999), Address.udp("198.51.100.7", 9999)
    t.learn_member("cam", first, ())
    t.heard("cam", second)
    assert t.plan("cam", first) == [first]
    assert [e["address"] for e in t.stats()["cam"]["endpoints"]] == [str(first)]
    # its first path is reported, once
    assert host.paths == [("cam", first, None, None)]
    # another transport is another path
    relay = Address("relay", "cam@203.0.113.5", 8765)
    t.heard("cam", relay)
    assert len(t.stats()["cam"]["endpoints"]) == 2


def test_forgetting_a_member_forgets_its_probes():
    _, t = train()
    t.learn_member("cam", Address.udp("192.0.2.7", 9999), (Address("relay", "cam@203.0.113.5", 8765),))
    peer = t._peers["cam"]
    for e in peer.endpoints.values():
        t._probe(peer, e, 0.0)
    assert len(t._probes) == 2
    t.forget("cam")
    assert t._probes == {} and t.stats() == {}


def test_a_member_on_a_distant_relay_alone_is_not_suspected_for_its_round_trip():
    """400 ms there and back, longer than the probe deadline (3 x 0.1 s): probes of a
    member reached only that way wait for twice the path's round trip."""

    async def main() -> list[str]:
        lan = InMemoryNetwork(seed=6)
        relay = InMemoryNetwork(seed=7, name="relay", broadcast=False, conditions=LinkConditions(delay_s=0.2))
        a = await start_node("a", [lan, relay], seed=6)
        b = await start_node("b", [lan, relay], peers=[a.address], seed=7)
        await converge([a, b])
        await until(lambda: len(a.stats().paths["b"]["endpoints"]) == 2, 10)
        lan.cut(b.address)
        await until(lambda: a.stats().paths["b"]["transport"] == "relay", 10)
        events: list[str] = []
        for node in (a, b):
            node.on_member(lambda e, p: events.append(e.kind))
        await asyncio.sleep(300)
        await a.stop()
        await b.stop()
        return events

    assert run_virtual(main()) == []


def test_an_endpoint_the_wire_cannot_carry_is_left_out_not_fatal():
    """A 128-byte node id at a long relay host name makes a host over 255 bytes: the
    node starts, and advertises its other endpoints."""

    async def main():
        lan, relay = networks(8)
        node = MeshNode("a", mesh_key=b"simulation-mesh-key!",
                        transport=[lan.transport(), relay.transport("h" * 300)])
        await node.start()
        update = node.self_update()
        await node.stop()
        return update

    update = run_virtual(main())
    assert update.address.transport == "mem" and update.endpoints == ()


def test_a_member_restarted_on_another_port_leaves_one_path_and_no_probes():
    """Its new ALIVE names only the new address: the old one, the path in use, goes
    (it never answered a path probe: a one-path member is not probed), and a mesh on
    one network stays probe-free; the move is reported with the old path as previous."""

    async def main():
        net = InMemoryNetwork(seed=3, broadcast=False)
        nodes = await start_mesh(3, net)
        await converge(nodes)
        old = nodes[2].address
        moves: list[tuple] = []
        nodes[0].on_path(lambda peer, address, previous, rtt: moves.append((peer, address, previous)))
        await nodes[2].stop(leave=False)
        await asyncio.sleep(2)
        nodes[2] = await start_node("node-002", net, peers=[nodes[0].address], seed=50)
        await converge(nodes, timeout=30)
        await asyncio.sleep(5)
        before = [n.stats().sent_by_type.get("PATH_PROBE", 0) for n in nodes]
        await asyncio.sleep(60)
        after = [n.stats().sent_by_type.get("PATH_PROBE", 0) for n in nodes]
        endpoints = [len(v["endpoints"]) for v in nodes[0].stats().paths.values()]
        new = nodes[2].address
        for n in nodes:
            await n.stop()
        return before, after, endpoints, moves, old, new

    before, after, endpoints, moves, old, new = run_virtual(main())
    assert after == before and endpoints == [1, 1]
    assert ("node-002", new, old) in moves


def test_paths_learned_before_the_node_starts_are_probed_once_it_does():
    async def main():
        lan, relay = networks(12)
        b = await start_node("b", [lan, relay], seed=13)
        a = MeshNode("a", mesh_key=b"simulation-mesh-key!", transport=[lan.transport(), relay.transport()])
        for address in (b.address, on(relay, b)):
            a.add_peer(address, "b", "saved")  # as from a saved mesh, before start
        await a.start()
        await asyncio.sleep(3)
        probes = a.stats().sent_by_type.get("PATH_PROBE", 0)
        await a.stop()
        await b.stop()
        return probes

    assert run_virtual(main()) >= 2
