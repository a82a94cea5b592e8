"""Membership rules and state merging, as pure state."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.broadcast import SeenSet, TransmitLimitedQueue
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.membership import MemberList
from flowmesh_edge.mesh.state import newer
from flowmesh_edge.mesh.suspicion import Suspicion
from flowmesh_edge.mesh.wire import MessageType, Update

A, S, D = MessageType.ALIVE, MessageType.SUSPECT, MessageType.DEAD


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def members(clock=None, **cfg):
    return MemberList("me", MeshConfig(**cfg), clock or Clock())


def up(kind, node, inc, origin="x"):
    return Update(kind, node, inc, Address.udp("h", 1), origin)


def test_join_suspect_refute_and_recover():
    ml = members()
    assert ml.apply(up(A, "b", 1)).event.kind == "joined"
    assert not ml.apply(up(A, "b", 1)).accepted  # not news
    assert ml.apply(up(S, "b", 1)).event.kind == "suspect"
    assert ml.get("b").status == "suspect"
    assert not ml.apply(up(A, "b", 1)).accepted  # same incarnation cannot clear a suspicion
    assert ml.apply(up(A, "b", 2)).event.kind == "recovered"
    assert ml.get("b").status == "alive"


def test_accusations_about_self_ask_for_refutation():
    ml = members()
    assert ml.apply(up(S, "me", 5)).refute == 5
    assert ml.apply(up(D, "me", 5)).refute == 5
    assert not ml.apply(up(A, "me", 9)).accepted


def test_dead_and_left_and_stale_updates():
    ml = members()
    ml.apply(up(A, "b", 3))
    assert not ml.apply(up(D, "b", 2)).accepted  # older incarnation
    assert ml.apply(up(D, "b", 3)).event.kind == "dead"
    ml.apply(up(A, "c", 1))
    assert ml.apply(up(D, "c", 1, origin="c")).event.kind == "left"


def test_reap_keeps_a_tombstone_against_stale_gossip():
    clock = Clock()
    ml = members(clock, dead_reap_s=10, tombstone_s=100)
    ml.apply(up(A, "b", 3))
    ml.apply(up(D, "b", 3))
    clock.t = 11
    assert [e.kind for e in ml.reap()] == ["removed"]
    assert ml.get("b") is None
    assert not ml.apply(up(A, "b", 3)).accepted  # stale: no resurrection
    assert ml.apply(up(A, "b", 4)).event.kind == "joined"  # a restart rejoins


def test_suspicion_shrinks_with_confirmations():
    s = Suspicion("a", 0.0, min_s=1.0, max_s=6.0, expected=3)
    assert s.timeout_s() == 6.0
    s.confirm("b")
    mid = s.timeout_s()
    s.confirm("c")
    s.confirm("d")
    assert 1.0 < mid < 6.0 and s.timeout_s() == 1.0
    assert not s.confirm("b")


def test_our_own_failed_probe_counts_as_a_witness_only_lately():
    clock = Clock()
    ml = members(clock)
    for n in "bcde":
        ml.apply(up(A, n, 1))
    ml.apply(up(S, "b", 1, origin="me"))  # our own probe failed
    s = ml.suspicions["b"]
    assert s.witnessed_lately(s.started + s.min_s)  # confirmed: it dies at its minimum
    assert not s.witnessed_lately(s.started + s.max_s)  # alone: we must try it again first
    ml.apply(up(S, "c", 1, origin="d"))  # someone else's word only
    assert not ml.suspicions["c"].witnessed_lately(0.0)


def test_suspicion_expires_into_death_candidates():
    clock = Clock()
    ml = members(clock, probe_interval_s=0.2, probe_timeout_s=0.1, suspicion_mult=3)
    for n in "bcde":
        ml.apply(up(A, n, 1))
    ml.apply(up(S, "b", 1, origin="c"))
    assert ml.expired_suspicions() == []
    clock.t = ml.config.suspicion_max_s(5) + 0.01
    assert [m.node_id for m in ml.expired_suspicions()] == ["b"]


def test_config_formulas():
    cfg = MeshConfig()
    assert cfg.retransmit_limit(100) == 4 * 3
    assert cfg.suspicion_min_s(20) < cfg.suspicion_max_s(20)
    assert MeshConfig.low_power().probe_interval_s > cfg.probe_interval_s
    assert cfg.push_pull_s(32) == cfg.push_pull_interval_s
    assert cfg.push_pull_s(33) == cfg.push_pull_s(64) == 2 * cfg.push_pull_interval_s
    assert cfg.push_pull_s(100) == 3 * cfg.push_pull_interval_s
    assert cfg.probe_deadline_s() == 3 * cfg.probe_timeout_s
    # the budget the module doc states: first probe, deadline, min timeout, at 20 members
    assert cfg.probe_interval_s + cfg.probe_deadline_s() + cfg.suspicion_min_s(20) <= 1.5
    assert 2 / cfg.probe_interval_s <= 4  # idle datagrams: a PING and a PROBE_ACK per round
    for preset in (MeshConfig.low_power(), MeshConfig.wan()):  # derived, never restated
        assert preset.probe_interval_s == 5 * cfg.probe_interval_s
        assert preset.suspicion_confirmations == cfg.suspicion_confirmations
    assert MeshConfig.wan().suspicion_mult == 2 * cfg.suspicion_mult
    assert MeshConfig(bind="127.0.0.1").effective_broadcast_address() is None
    assert MeshConfig().effective_broadcast_address() == "255.255.255.255"


states = st.tuples(st.integers(0, 3), st.integers(0, 3),
                   st.dictionaries(st.sampled_from("abc"), st.integers(0, 2), max_size=2))


@given(st.lists(states, min_size=1, max_size=6))
def test_state_merge_converges_whatever_the_order(candidates):
    finals = set()
    for order in itertools.islice(itertools.permutations(candidates), 24):
        current = None
        for c in order:
            if newer(c, current):
                current = c
        finals.add((current[0], current[1], tuple(sorted(current[2].items()))))
    assert len(finals) == 1


def test_queue_transmit_limit_and_invalidation():
    q = TransmitLimitedQueue(lambda: 2)
    q.queue("b", b"old")
    q.queue("b", b"new")
    q.queue("c", b"cc")
    assert sorted(q.take(100)) == [b"cc", b"new"]
    assert sorted(q.take(100)) == [b"cc", b"new"]
    assert q.take(100) == [] and len(q) == 0
    q.queue("d", b"x" * 50)
    assert q.take(10) == [] and len(q) == 1  # too big for the budget: kept


def test_seen_set_is_bounded_by_size_and_age():
    clock = Clock()
    seen = SeenSet(size=3, ttl_s=10, clock=clock)
    assert seen.add(("a", 1)) and not seen.add(("a", 1))
    for i in range(2, 10):
        seen.add(("a", i))
    assert len(seen) <= 3
    clock.t = 100
    seen.add(("z", 1))
    assert len(seen) == 1
