"""Dissemination against a fake engine: gossip rounds only while something is
queued, what each periodic exchange sends, the membership exchange in frames
that fit, and what the handlers do with frames."""

from __future__ import annotations

import asyncio
import random

import pytest

from flowmesh.limits import NODE_ID_MAX_BYTES
from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.dissemination import Dissemination
from flowmesh_edge.mesh.membership import MemberEvent
from flowmesh_edge.mesh.simulation import run_virtual
from flowmesh_edge.mesh.wire import (
    MAX_DATAGRAM,
    Envelope,
    Frame,
    MessageType,
    Update,
    WireError,
    decode_discovery,
    decode_gossip,
    decode_update,
    encode_discovery,
    encode_envelope,
    encode_gossip,
    encode_update,
    frame_overhead,
)
from tests.mesh.fakes import FakeHost

CFG = MeshConfig()


def setup(*members: str, node_id: str = "me", **host_args) -> tuple[FakeHost, Dissemination]:
    host = FakeHost(node_id=node_id, config=CFG, **host_args)
    host.join(*members)
    return host, Dissemination(host, random.Random(3))


def frame(mtype: MessageType, sender: str, body: bytes, incarnation: int = 1) -> Frame:
    return Frame(mtype, sender, incarnation, 1, 0, body)


def test_gossip_rounds_go_to_fanout_members_only_while_something_is_queued():
    async def main():
        loop = asyncio.get_running_loop()
        host, d = setup("b", "c", "d", "e")
        await asyncio.sleep(5)
        assert host.sent == [] and d._round is None  # idle: no round, no timer
        env = Envelope("me", 1, {"x": 1})
        queued = loop.time()
        d.queue_message(env, d.entry(MessageType.ROUTE_BROADCAST, env))
        rounds = []
        while d._round is not None:
            before = len(host.sent)
            await asyncio.sleep(0.001)
            if len(host.sent) > before:
                rounds.append((loop.time() - queued, host.sent[before:]))
        await asyncio.sleep(5)
        return host, d, env, rounds

    host, d, env, rounds = run_virtual(main())
    first_at, first = rounds[0]
    assert first_at < 0.01  # at once
    assert len(first) == CFG.fanout and len({s.address for s in first}) == CFG.fanout
    assert decode_gossip(first[0].body) == [bytes((MessageType.ROUTE_BROADCAST,)) + encode_envelope(env)]
    gaps = [b[0] - a[0] for a, b in zip(rounds, rounds[1:], strict=False)]
    assert all(g == pytest.approx(CFG.gossip_interval_s, abs=0.002) for g in gaps)
    sent = sum(len(r) for _, r in rounds)
    assert sent == CFG.retransmit_limit(5)  # each of its transmissions, then silence
    assert len(host.sent) == sent and len(d.messages) == 0


def test_gossip_waits_for_someone_to_send_to():
    async def main():
        host, d = setup()
        d.queue_update(Update(MessageType.ALIVE, "me", 1, Address.udp("10.0.0.1", 9999), "me"))
        await asyncio.sleep(1)
        alone = list(host.sent)
        host.join("b")
        d.member_event(MemberEvent("joined", "b", 1))
        await asyncio.sleep(0.01)
        return alone, host.sent_of(MessageType.GOSSIP)

    alone, gossip = run_virtual(main())
    assert alone == [] and len(gossip) == 1


def test_an_envelope_too_big_for_a_gossip_datagram_is_refused():
    host, d = setup()
    fits = Envelope("me", 1, {"x": "y" * (d.message_budget - 100)})
    too_big = Envelope("me", 2, {"x": "y" * d.message_budget})
    assert d.entry(MessageType.ROUTE_BROADCAST, fits) is not None
    assert d.entry(MessageType.ROUTE_BROADCAST, too_big) is None


def test_piggybacked_updates_fit_beside_the_body():
    host, d = setup()
    for i in range(40):
        d.queue_update(Update(MessageType.ALIVE, f"n{i:02d}-" + "x" * 100, 1, Address.udp("10.1.1.1", 9)))
    body_len = 900
    ride = d.piggyback(body_len)
    assert ride and sum(len(r) for r in ride) <= MAX_DATAGRAM - frame_overhead("me", body_len)


def test_push_pull_sends_our_whole_view_and_asks_for_a_reply():
    host, d = setup("b", "c")
    delay = d.push_pull_round()
    assert 0.9 * CFG.push_pull_interval_s <= delay <= 1.1 * CFG.push_pull_interval_s
    (sent,) = host.sent
    assert sent.type == MessageType.MEMBERSHIP and sent.body[0] == 1 and not sent.piggyback
    nodes = [decode_update(raw).node for raw in decode_gossip(sent.body[1:])]
    assert nodes == ["me", "b", "c"]


def test_a_large_membership_goes_in_several_frames_that_fit_with_one_reply_asked():
    long_ids = [f"{i:03d}-" + "n" * (NODE_ID_MAX_BYTES - 4) for i in range(30)]
    host, d = setup(*long_ids, node_id="m" * NODE_ID_MAX_BYTES)
    d.send_membership(Address.udp("10.0.0.9", 9999), reply_wanted=True)
    frames = host.sent_of(MessageType.MEMBERSHIP)
    assert len(frames) > 1
    assert [f.body[0] for f in frames] == [1] + [0] * (len(frames) - 1)
    assert all(frame_overhead(host.node_id, len(f.body)) <= MAX_DATAGRAM for f in frames)
    carried = [decode_update(raw).node for f in frames for raw in decode_gossip(f.body[1:])]
    assert sorted(carried) == sorted([host.node_id, *long_ids])


def test_discovery_goes_to_bootstrap_peers_and_the_lan_and_slows_down_once_joined():
    peer = Address.udp("192.0.2.1", 9999)
    host, d = setup(bootstrap=[peer, Address.udp("10.0.0.1", 9999)], meta={"role": "cam"})
    assert d.discovery_round() == CFG.discovery_interval_s
    (sent,) = host.sent  # not to our own address
    assert sent.address == peer
    assert decode_discovery(sent.body) == (host.my_address, b'{"role":"cam"}', True, ())
    assert not sent.piggyback  # the body says what it must; the receiver judges it on its own view
    assert [t for t, _ in host.broadcasts] == [MessageType.PEER_DISCOVERY]
    host.join("b")
    assert d.discovery_round() == CFG.discovery_interval_s * 6


def test_a_discovery_adds_the_member_and_answers_with_our_view():
    host, d = setup("b")
    src = Address.udp("10.9.9.9", 9999)
    body = encode_discovery(Address.udp("", 9999), b"", alone=True)
    d.on_discovery(frame(MessageType.PEER_DISCOVERY, "new", body, incarnation=7), src)
    assert host.members.get("new").incarnation == 7
    (reply,) = host.sent
    assert reply.type == MessageType.MEMBERSHIP and reply.address == src and reply.body[0] == 0


def test_only_a_joiner_or_a_restart_gets_our_view_in_answer_to_a_discovery():
    host, d = setup("b", "c")
    body = encode_discovery(Address.udp("", 9999), b"", alone=False)
    b_at = host.members.get("b").address
    d.on_discovery(frame(MessageType.PEER_DISCOVERY, "b", body, incarnation=1), b_at)
    assert host.sent == []  # b is alive at that incarnation: it knows the mesh
    alone = encode_discovery(Address.udp("", 9999), b"", alone=True)
    d.on_discovery(frame(MessageType.PEER_DISCOVERY, "b", alone, incarnation=1), b_at)
    assert [s.type for s in host.sent] == [MessageType.MEMBERSHIP]  # ...unless it says it knows nobody
    host.sent.clear()
    d.on_discovery(frame(MessageType.PEER_DISCOVERY, "b", body, incarnation=2), b_at)
    assert [s.type for s in host.sent] == [MessageType.MEMBERSHIP]  # restarted: it knows nothing
    host.members.apply(Update(MessageType.DEAD, "c", 1, origin="b"))
    d.on_discovery(frame(MessageType.PEER_DISCOVERY, "c", body, incarnation=1), b_at)
    assert len(host.sent_of(MessageType.MEMBERSHIP)) == 2  # held dead: it may not know it


def test_once_joined_discovery_goes_only_where_it_can_find_something():
    known, unknown = Address.udp("10.0.0.2", 9999), Address.udp("192.0.2.1", 9999)
    host, d = setup(*[f"m{i}" for i in range(9)], bootstrap=[known, unknown])
    rounds = 2000
    for _ in range(rounds):
        assert d.discovery_round() == CFG.discovery_interval_s * 6
    assert {s.address for s in host.sent} == {unknown}  # the known-alive bootstrap peer is skipped
    assert len(host.sent) == rounds
    assert 0.07 < len(host.broadcasts) / rounds < 0.13  # 1/n of the rounds, n = 10


def test_a_membership_exchange_is_merged_and_answered_only_when_asked():
    host, d = setup()
    body = encode_gossip([encode_update(Update(MessageType.ALIVE, "x", 1, Address.udp("10.0.0.5", 1)))])
    src = Address.udp("10.0.0.5", 1)
    d.on_membership(frame(MessageType.MEMBERSHIP, "x", b"\x00" + body), src)
    assert host.members.get("x") is not None and host.sent == []
    d.on_membership(frame(MessageType.MEMBERSHIP, "x", b"\x01" + body), src)
    assert [s.type for s in host.sent] == [MessageType.MEMBERSHIP]


def test_gossip_entries_are_handed_on_and_a_non_envelope_entry_is_malformed():
    host, d = setup("b")
    env = Envelope("b", 9, {"k": 1})
    entry = bytes((MessageType.ALERT,)) + encode_envelope(env)
    d.on_gossip(frame(MessageType.GOSSIP, "b", encode_gossip([entry])), Address.udp("10.0.0.2", 9999))
    assert host.envelopes == [(MessageType.ALERT, env, "b")]
    with pytest.raises(WireError):
        d.on_gossip(frame(MessageType.GOSSIP, "b", encode_gossip([bytes((MessageType.PING,)) + b"x"])),
                    Address.udp("10.0.0.2", 9999))
