"""Failure detection (SWIM with Lifeguard's suspicion), the node's side of it.

``membership.py`` decides what a fact means; this module produces the facts
and acts on the outcomes:

* **Probing.** Every ``probe_interval_s`` one member, taken round-robin in a
  shuffled order (new members inserted at random places), gets a PING. No
  PROBE_ACK within ``probe_timeout_s``: ping it once more and send a PING_REQ
  to ``indirect_checks`` other alive members, which ping it for us and pass
  the ack back. No ack by the end of the interval: SUSPECT it.
* **Relaying.** A PING_REQ makes us ping the target under a probe id of our
  own, and pass its ack to the asker.
* **Suspicion and death.** Suspicions run out on the tick (``tick``) into DEAD;
  dead members are reaped there too.
* **Refutation.** A SUSPECT or DEAD about this node makes it take a higher
  incarnation and gossip ALIVE. A member we hold suspect or dead that talks
  to us (at an incarnation not above the verdict's) is told, so that it can
  refute a wrong verdict.

Every accepted fact is queued for gossip, and every membership change becomes
a member event on the node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
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
    def send_frame(self, mtype: MessageType, body: bytes, address: Address,
                   piggyback: bool = True) -> None: ...
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


class FailureDetector:
    def __init__(self, host: Host, rng: random.Random):
        self.host = host
        self.rng = rng
        self.stats = DetectorStats()
        self._probe_ids = itertools.count(1)
        self._acks: dict[int, asyncio.Future[str]] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe_order: list[str] = []

    # -- probing ------------------------------------------------------------------------
    def _next_probe_target(self) -> PeerInfo | None:
        members = self.host.members
        for _ in range(2):
            while self._probe_order:
                m = members.get(self._probe_order.pop())
                if m is not None and m.status != DEAD:
                    return m
            order = [m.node_id for m in members.alive_or_suspect()]
            self.rng.shuffle(order)
            self._probe_order = order
        return None

    async def probe_round(self) -> float:
        """Start one probe; return the delay until the next (a periodic task)."""
        target = self._next_probe_target()
        if target is not None:
            self.host.spawn(self.probe(target))
        return self.host.config.probe_interval_s

    def _new_probe_id(self) -> int:
        return next(self._probe_ids) & 0xFFFFFFFF

    async def probe(self, target: PeerInfo) -> None:
        host, cfg = self.host, self.host.config
        probe_id = self._new_probe_id()
        ack: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._acks[probe_id] = ack
        self.stats.probes += 1
        ping = encode_ping(probe_id, target.node_id)
        try:
            host.send_frame(MessageType.PING, ping, target.address)
            try:
                await asyncio.wait_for(asyncio.shield(ack), cfg.probe_timeout_s)
                return
            except TimeoutError:
                pass
            # no direct answer: ask k others, and try once more ourselves
            self.stats.probe_failures += 1
            host.route_table.direct_failed(target.node_id)
            host.send_frame(MessageType.PING, ping, target.address)
            helpers = [m for m in host.members.alive() if m.node_id != target.node_id]
            for helper in self.rng.sample(helpers, min(cfg.indirect_checks, len(helpers))):
                self.stats.indirect_probes += 1
                req = encode_ping_req(probe_id, target.node_id, target.address)
                host.send_frame(MessageType.PING_REQ, req, helper.address)
            try:
                via = await asyncio.wait_for(ack, cfg.probe_interval_s - cfg.probe_timeout_s)
                if via != target.node_id:  # reached only through a relay: remember the way
                    host.route_table.learn(target.node_id, via, 2)
                return
            except TimeoutError:
                pass
            current = host.members.get(target.node_id)
            if current is None or current.status == DEAD:
                return
            self.stats.suspicions += 1
            self.apply(Update(MessageType.SUSPECT, current.node_id, current.incarnation, current.address,
                              host.node_id), host.node_id, current.address)
        finally:
            self._acks.pop(probe_id, None)

    async def tick(self) -> float:
        """Suspicions that ran out become deaths; the dead are reaped; stale relays and
        routes are dropped (a periodic task)."""
        host = self.host
        for m in host.members.expired_suspicions():
            self.stats.deaths += 1
            self.apply(Update(MessageType.DEAD, m.node_id, m.incarnation, m.address, host.node_id),
                       host.node_id, m.address)
        for event in host.members.reap():
            host.member_event(event)
        now = host.now()
        for probe_id in [p for p, r in self._relays.items() if r.expires < now]:
            del self._relays[probe_id]
        host.route_table.expire()  # routes learned from probes go stale like the probes
        return min(0.05, host.config.probe_interval_s / 4)

    # -- handlers (the node's dispatch table points here) ----------------------------------
    def frame_handlers(self) -> dict[MessageType, Callable[[Frame, Address], None]]:
        return {MessageType.PING: self.on_ping, MessageType.PING_REQ: self.on_ping_req,
                MessageType.PROBE_ACK: self.on_probe_ack, MessageType.ALIVE: self.on_update,
                MessageType.SUSPECT: self.on_update, MessageType.DEAD: self.on_update}

    def on_ping(self, frame: Frame, addr: Address) -> None:
        probe_id, target = decode_ping(frame.body)
        if target != self.host.node_id:
            self.host.drop("misrouted")
            return
        self.host.send_frame(MessageType.PROBE_ACK, encode_probe_ack(probe_id), addr)

    def on_ping_req(self, frame: Frame, addr: Address) -> None:
        their_id, target, target_addr = decode_ping_req(frame.body)
        probe_id = self._new_probe_id()
        self._relays[probe_id] = _Relay(addr, their_id, self.host.now() + self.host.config.probe_interval_s)
        self.host.send_frame(MessageType.PING, encode_ping(probe_id, target), target_addr)

    def on_probe_ack(self, frame: Frame, addr: Address) -> None:
        probe_id = decode_probe_ack(frame.body)
        relay = self._relays.pop(probe_id, None)
        if relay is not None:  # we probed for someone else: pass the ack on
            ack = encode_probe_ack(relay.their_probe_id)
            self.host.send_frame(MessageType.PROBE_ACK, ack, relay.requester)
            return
        ack = self._acks.get(probe_id)
        if ack is not None and not ack.done():
            ack.set_result(frame.sender)

    def on_update(self, frame: Frame, addr: Address) -> None:
        self.apply(decode_update(frame.body), frame.sender, addr)

    # -- membership facts -------------------------------------------------------------------
    def apply(self, update: Update, sender: str, addr: Address) -> None:
        """Merge a fact heard from ``sender`` (at ``addr``); gossip it on if it is news."""
        if update.kind == MessageType.ALIVE and update.node == sender and not update.address.host:
            # a member bound to every interface: it is where its datagrams come from
            update = replace(update, address=update.address.with_host(addr.host))
        outcome = self.host.members.apply(update)
        if outcome.refute is not None:
            self.refute(outcome.refute)
            return
        if outcome.accepted:
            self.host.queue_update(update)
        if outcome.event is not None:
            self.host.member_event(outcome.event)

    def refute(self, accused_incarnation: int) -> None:
        host = self.host
        if accused_incarnation < host.incarnation:
            return  # an accusation we already refuted, still travelling
        host.incarnation = max(host.incarnation, accused_incarnation) + 1
        self.stats.refutations += 1
        host.queue_update(host.self_update())
        log.info("mesh %s: refuting suspicion, incarnation now %d", host.node_id, host.incarnation)

    def check_accused(self, peer: PeerInfo, incarnation: int, addr: Address) -> None:
        """``peer`` talks to us at ``incarnation``: if we hold it suspect or dead at that
        incarnation or later, tell it, so that it can refute (otherwise a wrongly
        declared death would never be corrected)."""
        if peer.status == ALIVE or incarnation > peer.incarnation:
            return
        kind = MessageType.SUSPECT if peer.status == SUSPECT else MessageType.DEAD
        update = Update(kind, peer.node_id, peer.incarnation, peer.address, self.host.node_id)
        self.host.send_frame(kind, encode_update(update), addr, piggyback=False)

    def member_event(self, event: MemberEvent) -> None:
        if event.kind in ("joined", "recovered"):
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), event.node_id)

    def leave(self) -> None:
        """Tell a few members we are leaving, so that the mesh marks us left at once."""
        host = self.host
        me = host.self_update()
        bye = encode_update(Update(MessageType.DEAD, me.node, me.incarnation, me.address, me.node))
        alive = host.members.alive()
        for m in self.rng.sample(alive, min(host.config.fanout, len(alive))):
            host.send_frame(MessageType.DEAD, bye, m.address, piggyback=False)

    def stop(self) -> None:
        for ack in self._acks.values():
            ack.cancel()
