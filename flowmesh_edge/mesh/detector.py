"""Failure detection (SWIM with Lifeguard's suspicion), the node's side of it.

``membership.py`` decides what a fact means; this module produces the facts
and acts on the outcomes:

* **Probing.** Once per ``probe_interval_s`` (T) round, a node probes one
  member, chosen so that every member is probed by someone about once per
  round (see *The schedule*). No PROBE_ACK within ``probe_timeout_s``: ping
  it once more and send a PING_REQ to ``indirect_checks`` other alive
  members, which ping it for us and pass the ack back. No ack by
  ``config.probe_deadline_s()`` (3 x the timeout: the direct round trip,
  then two more through a helper): SUSPECT it.
* **Confirmation.** A node that learns of a suspicion from another probes
  the suspect at once, out of turn, with probability
  ``min(1, confirm_probes / (n - 2))``: a crashed member collects Lifeguard's
  confirmations within about one probe deadline, so its suspicion shrinks to
  the minimum; a live one is told (by the probe's piggybacked suspicion, or
  by ``check_accused`` when it answers) and refutes at once.
* **Relaying.** A PING_REQ makes us ping the target under a probe id of our
  own, and pass its ack to the asker.
* **State stamps.** Every PING and PROBE_ACK carries its sender's state stamp
  (``state_sync.py``), handed to the host on receipt: members learn of newer
  state from the probes they exchange anyway, with no heartbeat of their own.
* **Suspicion and death.** One timer, set for the membership's next deadline
  (a suspicion running out, a dead member to reap, a tombstone to forget),
  turns suspicions into DEAD and reaps; it is moved whenever a fact changes
  the deadlines (a confirmation shortens a suspicion, a refutation ends it).
  A suspicion that runs out kills only if this node failed to reach the
  suspect itself lately; otherwise it probes it first (``suspicion.py``). A
  probe the suspect answers starts our suspicion over, and any frame from
  it at a higher incarnation counts as its refutation (``check_accused``).
* **Refutation.** A SUSPECT or DEAD about this node makes it take a higher
  incarnation and gossip ALIVE; so does an ALIVE about it at a higher
  incarnation than its own (a past self's, after a restart with a clock
  behind, or within as many seconds as it refuted: members must learn the
  new one, with its address). A member we hold suspect or dead that talks
  to us (at an incarnation not above the verdict's) is told, so that it can
  refute a wrong verdict.

Every accepted fact is queued for gossip, and every membership change becomes
a member event on the node.

Nothing here polls: a probe is a PING and two timers (the direct ack's
timeout, then the indirect probes' deadline), cancelled when the ack comes;
the deadline timer sleeps until something is due.

The schedule. SWIM's per-node random round-robin probes each member once
per n-1 rounds *per prober*, so the first probe of a crashed member comes
after the minimum, over n-1 probers, of a uniform position in each one's
cycle: well under a round on average, but up to several rounds at
the tail (p99 ~2 s at 20 members and T = 0.5 s). Instead, rounds are numbered
on the wall clock, r = floor(wall / T), and in round r the node at index i
of the sorted live ring (itself included, n members) probes the one at
``(i + 1 + r mod (n - 1)) mod n``: a permutation of the ring with no fixed
point, so every member is probed exactly once per round, and over n - 1
rounds each node probes every other once. The probe of the member at index
t goes out at ``(r + t / n) * T``, so that each member is probed every T
exactly and the probes of a round are spread over it. Members whose views
(or clocks) disagree only lose the "exactly once" for the rounds they
disagree on: each still probes every member it knows once per n - 1
rounds, which is the round-robin guarantee.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .address import Address
from .membership import ALIVE, DEAD, SUSPECT, MemberEvent, PeerInfo
from .stats import DetectorStats
from .wire import (
    Frame,
    MessageType,
    Stamp,
    Update,
    decode_ping,
    decode_ping_req,
    decode_probe_ack,
    decode_update,
    encode_ping,
    encode_ping_req,
    encode_probe_ack,
    encode_update,
)

if TYPE_CHECKING:
    from .config import MeshConfig
    from .membership import MemberList
    from .routing import RouteTable

log = logging.getLogger("flowmesh_edge.mesh")


class Host(Protocol):
    """The engine, as the failure detector sees it."""

    node_id: str
    config: MeshConfig
    members: MemberList
    route_table: RouteTable
    incarnation: int

    def now(self) -> float: ...
    def wall(self) -> float: ...
    def state_stamp(self) -> Stamp: ...
    def heard_state(self, sender: str, stamp: Stamp) -> None: ...
    def outranked_by_past_self(self) -> None: ...
    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> asyncio.TimerHandle: ...
    def send_frame(self, mtype: MessageType, body: bytes, address: Address,
                   piggyback: bool = True) -> None: ...
    def send_to(self, mtype: MessageType, body: bytes, node_id: str, *, fallback: Address | None = None,
                piggyback: bool = True, every_path: bool = False, replay: bool = False) -> None: ...
    def learn_member(self, update: Update) -> None: ...
    def probe_timeout_for(self, node_id: str) -> float: ...
    def probe_answered(self, node_id: str, address: Address, rtt_s: float) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, object]) -> None: ...
    def drop(self, reason: str) -> None: ...
    def member_event(self, event: MemberEvent) -> None: ...
    def queue_update(self, update: Update) -> None: ...
    def self_update(self) -> Update: ...


@dataclass(frozen=True)
class _Relay:
    """A ping we sent for another member's indirect probe."""

    requester: Address
    their_probe_id: int
    expires: float


@dataclass
class _Probe:
    """A probe of ours in flight: its target and the timer of its next step."""

    target: str
    address: Address
    ping: bytes
    #: Seconds for the direct ack: probe_timeout_s, or more on a slow path (a relay).
    timeout: float = 0.1
    timer: asyncio.TimerHandle | None = None
    #: When the first PING went; None once it went again (an ack can no longer be timed).
    sent_at: float | None = None


class FailureDetector:
    def __init__(self, host: Host, rng: random.Random):
        self.host = host
        self.rng = rng
        self.stats = DetectorStats()
        self._probe_ids = itertools.count(1)
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._last_round = -1
        self._round: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._schedule_round()

    def stop(self) -> None:
        for handle in [self._round, self._deadline, *(p.timer for p in self._probes.values())]:
            if handle is not None:
                handle.cancel()
        self._round = self._deadline = self._deadline_at = None
        self._probes.clear()
        self._relays.clear()

    # -- probing ------------------------------------------------------------------------
    def _ring(self) -> list[str]:
        """The live members, this node included, sorted: every node's same list."""
        return sorted([self.host.node_id, *(m.node_id for m in self.host.members.alive_or_suspect())])

    def target(self, ring: list[str], round_no: int) -> int | None:
        """Index in ``ring`` of the member this node probes in round ``round_no``."""
        n = len(ring)
        if n < 2:
            return None
        return (ring.index(self.host.node_id) + 1 + round_no % (n - 1)) % n

    def _schedule_round(self) -> None:
        """Set the timer for our next probe: the first slot after now, in a round we
        have not probed in yet (see the module doc)."""
        host, period = self.host, self.host.config.probe_interval_s
        wall = host.wall()
        now_round = math.floor(wall / period)
        if self._last_round > now_round + 2:
            self._last_round = now_round - 1  # the wall clock went back: start over
        ring = self._ring()
        for round_no in range(max(now_round, self._last_round + 1), now_round + 3):
            t = self.target(ring, round_no)
            at = (round_no + (t / len(ring) if t is not None else 0.0)) * period
            if at > wall:
                break
        delay = min(max(at - wall, 0.0), 2 * period)
        self._round = host.call_later(delay, self.probe_round, round_no)

    def probe_round(self, round_no: int) -> None:
        """Probe this round's member, and set the timer for the next round."""
        host = self.host
        self._last_round = round_no
        ring = self._ring()
        t = self.target(ring, round_no)
        self._schedule_round()
        host.route_table.expire()  # routes learned from probes go stale like the probes
        if t is not None:
            self._probe_unless_probing(ring[t])

    def _probe_unless_probing(self, node_id: str) -> bool:
        member = self.host.members.get(node_id)
        if member is None or member.status == DEAD or any(p.target == node_id for p in self._probes.values()):
            return False
        self.probe(member)
        return True

    def _confirm(self, node_id: str) -> None:
        """Someone else suspects ``node_id``: probe it out of turn, with probability
        ``min(1, confirm_probes / (n - 2))`` (n live members, this node included)."""
        others = len(self.host.members.alive_or_suspect()) - 1  # n - 2: neither us nor the suspect
        if others > 0 and self.rng.random() < self.host.config.confirm_probes / others \
                and self._probe_unless_probing(node_id):
            self.stats.confirm_probes += 1

    def _new_probe_id(self) -> int:
        return next(self._probe_ids) & 0xFFFFFFFF

    def probe(self, target: PeerInfo) -> None:
        """PING ``target``; without an ack in ``probe_timeout_s``, go indirect."""
        host = self.host
        probe_id = self._new_probe_id()
        probe = _Probe(target.node_id, target.address,
                       encode_ping(probe_id, target.node_id, host.state_stamp()),
                       host.probe_timeout_for(target.node_id), sent_at=host.now())
        self._probes[probe_id] = probe
        self.stats.probes += 1
        host.send_to(MessageType.PING, probe.ping, probe.target, fallback=probe.address, every_path=True)
        probe.timer = host.call_later(probe.timeout, self._no_direct_ack, probe_id)

    def _no_direct_ack(self, probe_id: int) -> None:
        """No direct answer: ask k others, and try once more ourselves."""
        probe = self._probes.get(probe_id)
        if probe is None:
            return
        host, cfg = self.host, self.host.config
        probe.sent_at = None
        self.stats.probe_failures += 1
        host.route_table.direct_failed(probe.target)
        host.send_to(MessageType.PING, probe.ping, probe.target, fallback=probe.address, every_path=True)
        helpers = [m for m in host.members.alive() if m.node_id != probe.target]
        req = encode_ping_req(probe_id, probe.target, probe.address)
        for helper in self.rng.sample(helpers, min(cfg.indirect_checks, len(helpers))):
            self.stats.indirect_probes += 1
            host.send_to(MessageType.PING_REQ, req, helper.node_id, fallback=helper.address)
        # the rest of the probe deadline, in the same proportion on a slow path
        rest = (cfg.probe_deadline_s() - cfg.probe_timeout_s) * probe.timeout / cfg.probe_timeout_s
        probe.timer = host.call_later(rest, self._probe_failed, probe_id)

    def _probe_failed(self, probe_id: int) -> None:
        """No ack by the end of the probe, not even through a helper: suspect the target."""
        probe = self._probes.pop(probe_id, None)
        if probe is None:
            return
        host = self.host
        current = host.members.get(probe.target)
        if current is None or current.status == DEAD:
            return
        self.stats.suspicions += 1
        self.apply(Update(MessageType.SUSPECT, current.node_id, current.incarnation, current.address,
                          host.node_id), host.node_id, current.address)

    def _on_deadline(self) -> None:
        """Suspicions that ran out become deaths, if we failed to reach the suspect
        ourselves lately; if not, we probe it first (suspicion.py). The dead are reaped."""
        host = self.host
        members = host.members
        self._deadline = self._deadline_at = None
        now = host.now()
        for m in members.expired_suspicions():
            if members.suspicions[m.node_id].witnessed_lately(now):
                self.stats.deaths += 1
                self.apply(Update(MessageType.DEAD, m.node_id, m.incarnation, m.address, host.node_id),
                           host.node_id, m.address)
                continue
            # a little after the probe's own deadline, so that its failure comes first
            members.postpone_suspicion(m.node_id, now + host.config.probe_deadline_s() + 0.01)
            if self._probe_unless_probing(m.node_id):
                self.stats.verify_probes += 1
        for event in host.members.reap():
            host.member_event(event)
        self._arm()

    def _arm(self) -> None:
        """Set the one deadline timer for the membership's next deadline."""
        at = self.host.members.next_deadline()
        if at == self._deadline_at:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_at = at
        if at is not None:
            # a loop may run a timer up to its clock's resolution early: a millisecond
            # late, the deadline has surely passed when the timer runs
            self._deadline = self.host.call_later(max(at - self.host.now(), 0.0) + 0.001, self._on_deadline)

    # -- handlers (the node's dispatch table points here) ----------------------------------
    def frame_handlers(self) -> dict[MessageType, Callable[[Frame, Address], None]]:
        return {MessageType.PING: self.on_ping, MessageType.PING_REQ: self.on_ping_req,
                MessageType.PROBE_ACK: self.on_probe_ack, MessageType.ALIVE: self.on_update,
                MessageType.SUSPECT: self.on_update, MessageType.DEAD: self.on_update}

    def on_ping(self, frame: Frame, addr: Address) -> None:
        probe_id, target, stamp = decode_ping(frame.body)
        host = self.host
        if target != host.node_id:
            host.drop("misrouted")
            return
        host.send_frame(MessageType.PROBE_ACK, encode_probe_ack(probe_id, host.state_stamp()), addr)
        host.heard_state(frame.sender, stamp)

    def on_ping_req(self, frame: Frame, addr: Address) -> None:
        their_id, target, target_addr = decode_ping_req(frame.body)
        now = self.host.now()
        for stale in [p for p, r in self._relays.items() if r.expires < now]:
            del self._relays[stale]
        probe_id = self._new_probe_id()
        self._relays[probe_id] = _Relay(addr, their_id, now + self.host.config.probe_deadline_s())
        ping = encode_ping(probe_id, target, self.host.state_stamp())
        if self.host.members.get(target) is not None:  # every path we know to it
            self.host.send_to(MessageType.PING, ping, target, fallback=target_addr, every_path=True)
        else:
            self.host.send_frame(MessageType.PING, ping, target_addr)

    def on_probe_ack(self, frame: Frame, addr: Address) -> None:
        probe_id, stamp = decode_probe_ack(frame.body)
        self.host.heard_state(frame.sender, stamp)
        relay = self._relays.pop(probe_id, None)
        if relay is not None:  # we probed for someone else: pass the ack on
            ack = encode_probe_ack(relay.their_probe_id, self.host.state_stamp())
            self.host.send_frame(MessageType.PROBE_ACK, ack, relay.requester)
            return
        probe = self._probes.pop(probe_id, None)
        if probe is None:
            return  # late (the probe is over) or not ours
        if probe.timer is not None:
            probe.timer.cancel()
        host = self.host
        if frame.sender != probe.target:  # reached only through a relay: remember the way
            host.route_table.learn(probe.target, frame.sender, 2)
        elif probe.sent_at is not None:  # the direct answer to our first PING: a round trip
            host.probe_answered(probe.target, addr, host.now() - probe.sent_at)
        target = host.members.get(probe.target)
        if target is not None and target.status == SUSPECT:
            host.members.restart_suspicion(probe.target)  # alive now, whatever others say
            self._arm()

    def on_update(self, frame: Frame, addr: Address) -> None:
        self.apply(decode_update(frame.body), frame.sender, addr)

    # -- membership facts -------------------------------------------------------------------
    def apply(self, update: Update, sender: str, addr: Address) -> None:
        """Merge a fact heard from ``sender`` (at ``addr``); gossip it on if it is news."""
        host = self.host
        if update.node == host.node_id and update.kind == MessageType.ALIVE:
            if update.incarnation > host.incarnation:
                self.refute(update.incarnation)  # a past self of ours, as members know it
            return
        if update.kind == MessageType.ALIVE and update.node == sender:
            # a member bound to every interface: it is where its datagrams come from
            update = replace(update, address=update.address.with_source_host(addr),
                             endpoints=tuple(a.with_source_host(addr) for a in update.endpoints))
        outcome = self.host.members.apply(update)
        if outcome.refute is not None:
            self.refute(outcome.refute)
            return
        if outcome.accepted:
            self.host.queue_update(update)
            self._arm()
            if update.kind == MessageType.ALIVE:
                self.host.learn_member(update)
        if outcome.event is not None:
            self.host.member_event(outcome.event)
            if outcome.event.kind == "suspect" and update.origin != self.host.node_id:
                self._confirm(update.node)

    def refute(self, accused_incarnation: int) -> None:
        host = self.host
        if accused_incarnation < host.incarnation:
            return  # an accusation we already refuted, still travelling
        past_self = accused_incarnation > host.incarnation  # members knew a previous boot higher
        host.incarnation = accused_incarnation + 1
        self.stats.refutations += 1
        if past_self:
            host.outranked_by_past_self()
        host.queue_update(host.self_update())
        log.info("mesh %s: refuting suspicion, incarnation now %d", host.node_id, host.incarnation)

    def check_accused(self, peer: PeerInfo, incarnation: int, addr: Address) -> None:
        """``peer`` talks to us at ``incarnation`` (authenticated, its own word).

        Held suspect at a lower incarnation: it refuted, and this frame says so even
        if its gossiped ALIVE missed us, so take it as that ALIVE. Held suspect or dead
        at that incarnation or later: tell it, so that it can refute (otherwise a
        wrongly declared death would never be corrected). A dead member speaking at
        a higher one restarted: its own ALIVE (with its meta) brings it back.
        """
        if peer.status == ALIVE:
            return
        if incarnation > peer.incarnation:
            if peer.status == SUSPECT:
                self.apply(Update(MessageType.ALIVE, peer.node_id, incarnation, peer.address, peer.node_id),
                           peer.node_id, addr)
            return
        kind = MessageType.SUSPECT if peer.status == SUSPECT else MessageType.DEAD
        update = Update(kind, peer.node_id, peer.incarnation, peer.address, self.host.node_id)
        self.host.send_frame(kind, encode_update(update), addr, piggyback=False)

    def leave(self) -> None:
        """Tell a few members we are leaving, so that the mesh marks us left at once."""
        host = self.host
        me = host.self_update()
        bye = encode_update(Update(MessageType.DEAD, me.node, me.incarnation, me.address, me.node))
        alive = host.members.alive()
        for m in self.rng.sample(alive, min(host.config.fanout, len(alive))):
            host.send_to(MessageType.DEAD, bye, m.node_id, fallback=m.address, piggyback=False)
