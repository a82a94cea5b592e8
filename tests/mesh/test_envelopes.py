"""Envelope handling: seen-set, TTL, loop refusal and hop limit, as pure
decisions; then the same rules in a many-node mesh on the in-memory network."""

from __future__ import annotations

import asyncio

from flowmesh_edge.mesh import InMemoryNetwork, MeshConfig, MessageType
from flowmesh_edge.mesh.envelopes import Action, Envelopes
from flowmesh_edge.mesh.simulation import converge, run_virtual, start_mesh
from flowmesh_edge.mesh.wire import Envelope, encode_envelope
from tests.conftest import until
from tests.mesh.fakes import Clock


def envelopes(node: str = "b", **cfg) -> Envelopes:
    return Envelopes(node, MeshConfig(**cfg), Clock())


def test_a_broadcast_is_delivered_once_and_passed_on_with_less_ttl():
    b = envelopes("b")
    env = Envelope("a", 1, {"x": 1}, ttl=3)
    first = b.receive(env, sender="a")
    assert first.action == Action.DELIVER
    assert first.onward == Envelope("a", 1, {"x": 1}, ttl=2, path=("b",))
    assert first.route == ("a", "a", 1)
    again = b.receive(env, sender="c")
    assert again.action == Action.DUPLICATE and again.onward is None
    assert (b.stats.seen, b.stats.duplicates, b.stats.propagated) == (1, 1, 1)


def test_a_broadcast_at_its_last_hop_is_delivered_but_not_passed_on():
    decision = envelopes("b").receive(Envelope("a", 1, {}, ttl=1), sender="a")
    assert decision.action == Action.DELIVER and decision.onward is None


def test_our_own_message_coming_back_is_an_echo():
    a = envelopes("a")
    mine = a.new({"hello": 1})
    assert mine.origin == "a" and mine.ttl == MeshConfig().ttl and mine.hop_limit == MeshConfig().hop_limit
    assert a.receive(mine, sender="b").action == Action.ECHO
    assert a.stats.duplicates == 1


def test_new_ids_are_consecutive_from_the_first_and_wrap_at_32_bits():
    ids = Envelopes("a", MeshConfig(), Clock(), first_id=2**32 - 2)
    assert [ids.new({}).message_id for _ in range(3)] == [2**32 - 2, 2**32 - 1, 0]


def test_a_path_that_already_lists_this_node_is_refused_as_a_loop():
    c = envelopes("c")
    decision = c.receive(Envelope("a", 7, {}, path=("b", "c", "d")), sender="d")
    assert decision.action == Action.LOOP and decision.route is None  # a loop teaches nothing
    assert c.stats.seen == 0


def test_a_looped_message_already_handled_is_a_duplicate_not_a_fault():
    c = envelopes("c")
    c.receive(Envelope("a", 7, {}), sender="a")
    assert c.receive(Envelope("a", 7, {}, path=("c", "d")), sender="d").action == Action.DUPLICATE


def test_a_message_for_another_member_is_forwarded_with_one_hop_less():
    b = envelopes("b")
    decision = b.receive(Envelope("a", 1, {}, ttl=4, hop_limit=3, destination="d", path=("x",)), sender="x")
    assert decision.action == Action.FORWARD
    assert decision.onward == Envelope("a", 1, {}, ttl=3, hop_limit=2, destination="d", path=("x", "b"))
    assert decision.route == ("a", "x", 2)
    assert b.stats.forwarded == 1


def test_a_message_whose_hop_limit_is_spent_is_refused():
    b = envelopes("b")
    decision = b.receive(Envelope("a", 1, {}, hop_limit=1, destination="d"), sender="a")
    assert decision.action == Action.HOP_LIMIT and decision.onward is None
    assert b.stats.forwarded == 0
    # for this node itself, the hop limit does not matter: it has arrived
    assert b.receive(Envelope("a", 2, {}, hop_limit=1, destination="b"), sender="a").action == Action.DELIVER


def test_the_ttl_of_a_forwarded_message_never_drops_below_one():
    decision = envelopes("b").receive(Envelope("a", 1, {}, ttl=1, destination="d"), sender="a")
    assert decision.onward is not None and decision.onward.ttl == 1


# -- the same rules in a mesh ---------------------------------------------------------------


def test_a_routed_message_over_more_hops_than_its_limit_is_dropped_and_counted():
    async def main(hop_limit: int):
        net = InMemoryNetwork(seed=12)
        nodes = await start_mesh(8, net, config=MeshConfig(hop_limit=hop_limit))
        await converge(nodes)
        a, c = nodes[0], nodes[2]
        net.block(a.address, c.address)  # a reaches c only through another member
        await until(lambda: c.node_id in a.routes(), 10)
        got = []
        c.on(MessageType.DIRECT, got.append)
        via = a.routes()[c.node_id][0]
        await a.send(c.node_id, {"hello": "c"})
        await asyncio.sleep(2)
        drops = {n.node_id: n.stats()["dropped"].get("hop_limit", 0) for n in nodes}
        for n in nodes:
            await n.stop()
        return got, drops, via

    got, drops, via = run_virtual(main(hop_limit=1))
    assert got == []  # two hops needed, one allowed
    assert drops == {n: (1 if n == via else 0) for n in drops}  # refused by the relay, once
    got, drops, via = run_virtual(main(hop_limit=2))
    assert [m.path for m in got] == [(via,)] and sum(drops.values()) == 0


def test_a_member_refuses_a_message_whose_path_already_lists_it():
    async def main():
        net = InMemoryNetwork(seed=13)
        nodes = await start_mesh(6, net)
        await converge(nodes)
        a, b, c = nodes[0], nodes[1], nodes[2]
        got = []
        for n in nodes:
            n.on(MessageType.DIRECT, got.append)
        # a message from b that went through c before (c has forgotten it since): c must
        # not take it for new and send it round again
        looped = Envelope(b.node_id, 4242, {"round": 2}, destination=nodes[5].node_id,
                          path=(c.node_id, nodes[4].node_id))
        a.send_frame(MessageType.DIRECT, encode_envelope(looped), c.address)
        await asyncio.sleep(1)
        stats = c.stats()
        for n in nodes:
            await n.stop()
        return got, stats

    got, stats = run_virtual(main())
    assert stats["dropped"].get("loop") == 1 and stats["forwarded"] == 0
    assert got == []
