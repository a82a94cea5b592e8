"""The failure detector against a fake engine, in virtual time: probes, indirect
probes, suspicion, death, refutation, relaying for others."""

from __future__ import annotations

import asyncio
import random

import pytest

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.detector import FailureDetector
from flowmesh_edge.mesh.simulation import run_virtual
from flowmesh_edge.mesh.wire import (
    Frame,
    MessageType,
    Update,
    decode_ping,
    decode_ping_req,
    decode_probe_ack,
    decode_update,
    encode_ping,
    encode_ping_req,
    encode_probe_ack,
)
from tests.conftest import until
from tests.mesh.fakes import FakeHost

CFG = MeshConfig()  # probe every 0.2 s, direct timeout 0.1 s, 3 indirect checks


def setup(*members: str, config: MeshConfig = CFG) -> tuple[FakeHost, FailureDetector]:
    host = FakeHost(config=config)
    host.join(*members)
    return host, FailureDetector(host, random.Random(1))


def frame(mtype: MessageType, sender: str, body: bytes, incarnation: int = 1) -> Frame:
    return Frame(mtype, sender, incarnation, 1, 0, body)


def test_a_member_that_answers_is_not_suspected():
    async def main():
        host, det = setup("b", "c")
        det.probe(host.members.get("b"))
        await asyncio.sleep(0.01)
        (ping,) = host.sent_of(MessageType.PING)
        probe_id, target, stamp = decode_ping(ping.body)
        assert target == "b" and ping.address == host.members.get("b").address
        assert stamp == host.state_sync.stamp()
        det.on_probe_ack(frame(MessageType.PROBE_ACK, "b", encode_probe_ack(probe_id, (1, 0))), ping.address)
        assert det._probes == {}  # over: its timer cancelled
        await asyncio.sleep(CFG.probe_interval_s)
        return host, det

    host, det = run_virtual(main())
    assert det.stats.probes == 1 and det.stats.probe_failures == 0 and det.stats.suspicions == 0
    assert host.members.get("b").status == "alive" and host.sent_of(MessageType.PING_REQ) == []
    # the direct answer timed the member's path: the ack came 10 ms after the PING
    assert [(n, round(rtt, 3)) for n, rtt in host.round_trips] == [("b", 0.01)]


def test_an_ack_to_the_second_ping_is_not_timed_as_a_round_trip():
    async def main():
        host, det = setup("b", "c")
        det.probe(host.members.get("b"))
        await asyncio.sleep(CFG.probe_timeout_s + 0.01)  # the first PING went unanswered
        probe_id = decode_ping(host.sent_of(MessageType.PING)[-1].body)[0]
        det.on_probe_ack(frame(MessageType.PROBE_ACK, "b", encode_probe_ack(probe_id, (1, 0))),
                         host.members.get("b").address)
        return host, det

    host, det = run_virtual(main())
    assert host.members.get("b").status == "alive" and host.round_trips == []


def test_a_silent_member_is_pinged_again_asked_about_and_then_suspected():
    async def main():
        host, det = setup("b", "c", "d", "e", "f")
        det.probe(host.members.get("b"))
        await asyncio.sleep(CFG.probe_interval_s)
        det.stop()
        return host, det

    host, det = run_virtual(main())
    assert len(host.sent_of(MessageType.PING)) == 2  # the probe, and one more try
    reqs = host.sent_of(MessageType.PING_REQ)
    assert len(reqs) == CFG.indirect_checks
    assert {decode_ping_req(r.body)[1] for r in reqs} == {"b"}
    helpers = {r.address for r in reqs}
    assert host.members.get("b").address not in helpers and len(helpers) == 3
    assert not host.route_table.direct_usable("b")
    assert host.members.get("b").status == "suspect"
    assert [(e.kind, e.node_id) for e in host.events] == [("suspect", "b")]
    assert [(u.kind, u.node, u.origin) for u in host.queued] == [(MessageType.SUSPECT, "b", "me")]
    s = det.stats
    assert (s.probes, s.probe_failures, s.indirect_probes, s.suspicions) == (1, 1, 3, 1)


def test_an_ack_through_a_helper_keeps_the_member_alive_and_teaches_a_route():
    async def main():
        host, det = setup("b", "c", "d")
        det.probe(host.members.get("b"))
        await asyncio.sleep(CFG.probe_timeout_s + 0.01)
        probe_id = decode_ping_req(host.sent_of(MessageType.PING_REQ)[0].body)[0]
        det.on_probe_ack(frame(MessageType.PROBE_ACK, "c", encode_probe_ack(probe_id, (1, 0))),
                         host.members.get("c").address)
        await asyncio.sleep(CFG.probe_interval_s)
        return host, det

    host, det = run_virtual(main())
    assert host.members.get("b").status == "alive" and det.stats.suspicions == 0
    assert host.route_table.routes() == {"b": ("c", 2)}


def test_pings_are_answered_with_our_state_stamp_and_misrouted_ones_counted():
    host, det = setup("b")
    host.state_sync.set_initial({"fps": 30})
    src = Address.udp("10.0.0.9", 4000)
    det.on_ping(frame(MessageType.PING, "b", encode_ping(77, "me", (1, 4))), src)
    (ack,) = host.sent
    assert ack.type == MessageType.PROBE_ACK and ack.address == src
    assert decode_probe_ack(ack.body) == (77, (host.incarnation, 1))
    assert host.routed == [(MessageType.NODE_STATE_SYNC, "b", {"pull": True})]  # b's state is news
    det.on_ping(frame(MessageType.PING, "b", encode_ping(78, "someone-else", (1, 4))), src)
    assert len(host.sent) == 1 and host.dropped == {"misrouted": 1}


def test_probing_for_another_member_passes_the_ack_back():
    host, det = setup("b", "c")
    asker = Address.udp("10.0.0.2", 9999)
    target = Address.udp("10.0.0.3", 9999)
    det.on_ping_req(frame(MessageType.PING_REQ, "b", encode_ping_req(555, "c", target)), asker)
    (ping,) = host.sent
    our_id, name, _ = decode_ping(ping.body)
    assert ping.address == target and name == "c"
    det.on_probe_ack(frame(MessageType.PROBE_ACK, "c", encode_probe_ack(our_id, (1, 0))), target)
    relayed = host.sent[-1]
    assert relayed.type == MessageType.PROBE_ACK and relayed.address == asker
    assert decode_probe_ack(relayed.body) == (555, host.state_sync.stamp())
    det.on_probe_ack(frame(MessageType.PROBE_ACK, "c", encode_probe_ack(our_id, (1, 0))), target)
    assert len(host.sent) == 2  # a second ack is not relayed again


def test_an_accusation_is_refuted_with_a_higher_incarnation_once():
    host, det = setup("b")
    det.apply(Update(MessageType.SUSPECT, "me", 100, origin="b"), "b", Address.udp("10.0.0.2", 9999))
    assert host.incarnation == 101 and det.stats.refutations == 1
    assert host.queued[-1].kind == MessageType.ALIVE and host.queued[-1].incarnation == 101
    det.apply(Update(MessageType.DEAD, "me", 100, origin="c"), "c", Address.udp("10.0.0.3", 9999))
    assert host.incarnation == 101 and det.stats.refutations == 1  # already refuted
    det.apply(Update(MessageType.DEAD, "me", 105, origin="c"), "c", Address.udp("10.0.0.3", 9999))
    assert host.incarnation == 106 and det.stats.refutations == 2


def test_a_member_held_suspect_is_told_so_when_it_talks_to_us():
    host, det = setup("b")
    b = host.members.get("b")
    det.apply(Update(MessageType.SUSPECT, "b", 1, b.address, "c"), "c", b.address)
    src = Address.udp("10.0.0.2", 9999)
    det.check_accused(b, 1, src)
    (told,) = host.sent
    assert told.type == MessageType.SUSPECT and told.address == src and not told.piggyback
    assert decode_update(told.body).node == "b"
    det.check_accused(b, 2, src)  # it already speaks at a higher incarnation: it refuted
    assert len(host.sent) == 1


def test_a_member_bound_to_every_interface_is_taken_at_the_address_it_speaks_from():
    host, det = setup()
    det.apply(Update(MessageType.ALIVE, "n", 1, Address.udp("", 9999), "n"), "n",
              Address.udp("192.0.2.7", 9999))
    assert host.members.get("n").address == Address.udp("192.0.2.7", 9999)


def test_suspicions_run_out_into_death_on_their_timer_and_the_dead_are_reaped():
    async def main():
        loop = asyncio.get_running_loop()
        host, det = setup("b", "c", config=MeshConfig(confirm_probes=0))  # nobody confirms
        b = host.members.get("b")
        det.apply(Update(MessageType.SUSPECT, "b", 1, b.address, "c"), "c", b.address)
        suspected = loop.time()
        await until(lambda: host.members.get("b").status == "dead", 60)
        died = loop.time()
        await until(lambda: host.members.get("b") is None, 60)
        removed = loop.time()
        timers = det._deadline
        det.stop()
        return host, det, died - suspected, removed - died, timers

    host, det, dying, reaping, timers = run_virtual(main())
    # alone (nobody confirmed it) it runs the maximum; then, never having tried b
    # ourselves, we probe it, and it dies when that probe fails
    assert dying == pytest.approx(CFG.suspicion_max_s(3) + CFG.probe_deadline_s(), abs=0.04)
    assert [decode_ping(s.body)[1] for s in host.sent_of(MessageType.PING)] == ["b", "b"]
    assert reaping == pytest.approx(CFG.dead_reap_s, abs=0.03)
    assert det.stats.deaths == 1 and det.stats.verify_probes == 1
    assert [(e.kind, e.node_id) for e in host.events] == [("suspect", "b"), ("dead", "b"), ("removed", "b")]
    assert timers is not None  # the tombstone's end is still due


def test_a_confirmation_brings_the_death_forward_and_a_refutation_cancels_it():
    async def main():
        loop = asyncio.get_running_loop()
        host, det = setup("b", "c", "d", "e", "f", "g", config=MeshConfig(confirm_probes=0))
        b = host.members.get("b")
        det.apply(Update(MessageType.SUSPECT, "b", 1, b.address, "c"), "c", b.address)
        lone = det._deadline_at
        for confirmer in ("d", "e", "f"):
            det.apply(Update(MessageType.SUSPECT, "b", 1, b.address, confirmer), confirmer, b.address)
        confirmed = det._deadline_at
        det.apply(Update(MessageType.ALIVE, "b", 2, b.address, "b"), "b", b.address)
        refuted = det._deadline_at
        await asyncio.sleep(CFG.suspicion_max_s(7) + 1)
        return host, lone, confirmed, refuted, loop.time()

    host, lone, confirmed, refuted, now = run_virtual(main())
    assert confirmed < lone and refuted is None
    assert host.members.get("b").status == "alive"


def test_a_suspicion_learned_from_another_is_confirmed_by_a_probe_out_of_turn():
    async def main():
        loop = asyncio.get_running_loop()
        host, det = setup("b", "c", "d")  # n - 2 = 2 <= confirm_probes: always
        b = host.members.get("b")
        det.apply(Update(MessageType.SUSPECT, "b", 1, b.address, "c"), "c", b.address)
        pinged = [decode_ping(s.body)[1] for s in host.sent_of(MessageType.PING)]
        lone = det._deadline_at
        await asyncio.sleep(CFG.probe_deadline_s() + 0.01)  # b never answers
        return host, det, pinged, lone, det._deadline_at, loop.time()

    host, det, pinged, lone, confirmed, now = run_virtual(main())
    assert pinged == ["b"] and det.stats.confirm_probes == 1
    assert [(u.kind, u.node, u.origin) for u in host.queued][-1] == (MessageType.SUSPECT, "b", "me")
    assert confirmed < lone  # our own confirmation shortened it


def test_stale_routes_are_dropped_by_the_probe_rounds():
    async def main():
        host, det = setup("b", "c")
        host.route_table.direct_failed("c")
        host.route_table.learn("c", "b", 2)
        det.start()
        await asyncio.sleep(CFG.route_ttl_s + 1)
        det.stop()
        return host

    assert run_virtual(main()).route_table._routes == {}


def ring_of(n: int) -> dict[str, FailureDetector]:
    """A detector for each of n nodes that all know each other."""
    names = [f"n{i:02d}" for i in range(n)]
    detectors = {}
    for name in names:
        host = FakeHost(node_id=name, config=CFG)
        host.join(*[m for m in names if m != name])
        detectors[name] = FailureDetector(host, random.Random(1))
    return detectors


@pytest.mark.parametrize("n", [2, 3, 7, 20])
def test_each_round_every_member_is_probed_once_and_each_node_probes_all_in_n_minus_1_rounds(n):
    detectors = ring_of(n)
    ring = sorted(detectors)
    by_prober: dict[str, set[str]] = {name: set() for name in ring}
    for r in range(1000, 1000 + n - 1):
        targets = {name: ring[d.target(ring, r)] for name, d in detectors.items()}
        assert sorted(targets.values()) == ring  # a permutation: each member probed once
        assert all(t != name for name, t in targets.items())  # nobody probes itself
        for name, t in targets.items():
            by_prober[name].add(t)
    assert all(seen == set(ring) - {name} for name, seen in by_prober.items())


def test_probes_of_a_member_come_every_round_from_a_different_member():
    async def main():
        loop = asyncio.get_running_loop()
        detectors = ring_of(6)
        probes: list[tuple[float, str, str]] = []
        for name, det in detectors.items():
            det.probe = lambda m, name=name: probes.append((loop.time(), name, m.node_id))  # type: ignore
            det.start()
        await asyncio.sleep(20 * CFG.probe_interval_s)
        for det in detectors.values():
            det.stop()
        return probes

    probes = run_virtual(main())
    times = [t for t, _, target in probes if target == "n03"]
    assert all(b - a == pytest.approx(CFG.probe_interval_s) for a, b in zip(times, times[1:], strict=False))
    probers = [p for _, p, target in probes if target == "n03"]
    assert len(probers) >= 19 and all(a != b for a, b in zip(probers, probers[1:], strict=False))
    starts = sorted({round(t % CFG.probe_interval_s, 6) for t, _, _ in probes})
    assert len(starts) == 6  # each member's probes at its own phase of the round: spread out


def test_leaving_tells_a_few_members_we_are_dead_by_our_own_word():
    host, det = setup("b", "c", "d", "e", "f")
    det.leave()
    assert len(host.sent) == CFG.fanout
    for s in host.sent:
        bye = decode_update(s.body)
        assert s.type == MessageType.DEAD and bye.node == bye.origin == "me" and not s.piggyback
