"""Dissemination: how facts and messages spread, and how members find each other.

Two gossip queues (``broadcast.TransmitLimitedQueue``): membership updates,
piggybacked on every datagram with room left, and application envelopes.

* **gossip** rounds run only while something is queued: queuing an item
  when no round is pending schedules one (at once, or ``gossip_interval_s``
  after the previous round), and a round that leaves items queued schedules
  the next. Each round sends a GOSSIP frame to ``fanout`` random members,
  envelopes taking up to two thirds of the datagram so that updates still
  ride along. An idle node never wakes up for gossip.
* **push-pull** with one random member, which answers with its own
  (anti-entropy), every ``push_pull_interval_s`` (+-10% jitter), stretched
  in meshes above 32 members as memberlist does
  (``config.push_pull_s(n)``): a snapshot grows with n, so its rate falls;
* **discovery** every ``discovery_interval_s`` while alone: PEER_DISCOVERY
  to each bootstrap peer and to the LAN broadcast address. Once anyone is
  known, every 6x that, and only where it can find something: to the
  bootstrap peers not known alive, and to the LAN with probability 1/n
  (about one broadcast per mesh per round, enough to merge two meshes that
  lost each other). The receiver adds the sender and answers with its
  membership only when the sender says it is alone (knows no member) or is
  new to the receiver (unknown, not alive, or at a new incarnation: a joiner
  or a restart, whose view may lack the receiver's side); a member it
  already knows alive gets no answer. Answering every discovery with a
  snapshot made LAN discovery cost n snapshots per member per round:
  quadratic. A discovery carries no piggybacked updates: its body says all
  the receiver needs about the sender, and its "new" test must see the
  receiver's view as it was before this frame.

There is no application heartbeat: probes carry the state stamp it carried.

The periodic ones are loop timers, not tasks: each run sets the next.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .address import Address
from .broadcast import TransmitLimitedQueue
from .membership import ALIVE
from .wire import (
    ENVELOPE_TYPES,
    MAX_DATAGRAM,
    Envelope,
    Frame,
    MessageType,
    Update,
    WireError,
    decode_discovery,
    decode_envelope,
    decode_gossip,
    decode_update,
    encode_discovery,
    encode_envelope,
    encode_gossip,
    encode_update,
    frame_overhead,
)

if TYPE_CHECKING:
    from .config import MeshConfig
    from .membership import MemberEvent, MemberList, PeerInfo

#: Bytes a gossip body spends per entry (its u16 length).
_ENTRY_OVERHEAD = 2


class Host(Protocol):
    """The engine, as dissemination sees it."""

    node_id: str
    config: MeshConfig
    members: MemberList
    bootstrap: list[Address]
    meta: dict

    @property
    def address(self) -> Address: ...
    @property
    def running(self) -> bool: ...
    def now(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> asyncio.TimerHandle: ...
    def send_frame(self, mtype: MessageType, body: bytes, address: Address,
                   piggyback: bool = True) -> None: ...
    def send_to(self, mtype: MessageType, body: bytes, node_id: str, *, fallback: Address | None = None,
                piggyback: bool = True, every_path: bool = False, replay: bool = False) -> None: ...
    def broadcast_frame(self, mtype: MessageType, body: bytes) -> bool: ...
    def known_addresses(self) -> set[Address]: ...
    def apply(self, update: Update, sender: str, addr: Address) -> None: ...
    def on_envelope(self, mtype: MessageType, env: Envelope, sender: str) -> None: ...
    def self_update(self) -> Update: ...


class Dissemination:
    def __init__(self, host: Host, rng: random.Random):
        self.host = host
        self.rng = rng

        def limit() -> int:
            return host.config.retransmit_limit(host.members.size())

        self.updates = TransmitLimitedQueue(limit)
        self.messages = TransmitLimitedQueue(limit)
        # envelopes take up to two thirds of a gossip datagram; updates ride in the rest
        self.message_budget = (MAX_DATAGRAM - frame_overhead(host.node_id, 1)) * 2 // 3
        self._round: asyncio.TimerHandle | None = None  #: the next gossip round, when one is due
        self._last_round = float("-inf")
        self._timers: list[asyncio.TimerHandle] = []

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic exchanges (discovery at once) and gossip what is queued."""
        self._timers = [self.host.call_later(0, self._every, self.discovery_round, 0),
                        self.host.call_later(self.host.config.push_pull_interval_s, self._every,
                                             self.push_pull_round, 1)]
        self.wake()

    def stop(self) -> None:
        for handle in [self._round, *self._timers]:
            if handle is not None:
                handle.cancel()
        self._round = None
        self._timers = []

    def discover_now(self) -> None:
        """Run the discovery round at once (our last one was refused: security.py's EPOCH)."""
        if self._timers:
            self._timers[0].cancel()
            self._timers[0] = self.host.call_later(0, self._every, self.discovery_round, 0)

    def _every(self, step: Callable[[], float], slot: int) -> None:
        """Run one periodic step and set its timer for the delay it returns."""
        self._timers[slot] = self.host.call_later(1.0, self._every, step, slot)  # if step() fails
        delay = step()
        self._timers[slot].cancel()
        self._timers[slot] = self.host.call_later(delay, self._every, step, slot)

    def _sample(self, members: list[PeerInfo], k: int) -> list[PeerInfo]:
        return self.rng.sample(members, min(k, len(members)))

    # -- queues ------------------------------------------------------------------------
    def queue_update(self, update: Update) -> None:
        """Gossip a membership fact; it replaces any queued fact about the same member."""
        self.updates.queue(update.node, encode_update(update))
        self.wake()

    def piggyback(self, body_len: int) -> list[bytes]:
        """Queued updates that fit beside a body of ``body_len`` bytes."""
        if not len(self.updates):
            return []
        return self.updates.take(MAX_DATAGRAM - frame_overhead(self.host.node_id, body_len))[:255]

    def entry(self, mtype: MessageType, env: Envelope) -> bytes | None:
        """``env`` as a gossip entry, or None when it cannot fit in a gossip datagram."""
        raw = bytes((mtype,)) + encode_envelope(env)
        return raw if len(raw) + _ENTRY_OVERHEAD <= self.message_budget else None

    def queue_message(self, env: Envelope, raw_entry: bytes) -> None:
        self.messages.queue(f"{env.origin}:{env.message_id}", raw_entry)
        self.wake()

    # -- gossip rounds, while something is queued -------------------------------------------
    def wake(self) -> None:
        """Schedule a gossip round if something is queued and none is pending: at once,
        or ``gossip_interval_s`` after the previous round."""
        if self._round is not None or not self.host.running or not (len(self.updates) or len(self.messages)):
            return
        delay = max(self._last_round + self.host.config.gossip_interval_s - self.host.now(), 0.0)
        self._round = self.host.call_later(delay, self.gossip_round)

    def gossip_round(self) -> None:
        """One GOSSIP frame to each of ``fanout`` members; then the next round, if still
        anything is queued. With nobody to send to, rounds resume when a member joins."""
        host = self.host
        self._round = None
        self._last_round = host.now()
        targets = self._sample(host.members.alive_or_suspect(), host.config.fanout)
        if not targets:
            return
        for target in targets:
            if not (len(self.updates) or len(self.messages)):
                break
            entries = self.messages.take(self.message_budget, overhead=_ENTRY_OVERHEAD)[:255]
            # application messages (critical alerts among them) go again should the path change
            host.send_to(MessageType.GOSSIP, encode_gossip(entries), target.node_id,
                         fallback=target.address, replay=bool(entries))
        self.wake()

    def member_event(self, event: MemberEvent) -> None:
        if event.kind == "joined":
            self.wake()  # someone to gossip to, perhaps for the first time

    # -- periodic exchanges (each returns the delay until its next run) ----------------------
    def push_pull_round(self) -> float:
        host = self.host
        candidates = host.members.alive_or_suspect()
        if candidates:
            self.send_membership(self.rng.choice(candidates).node_id, reply_wanted=True)
        jitter = 1 + (self.rng.random() - 0.5) * 0.2
        return host.config.push_pull_s(host.members.size()) * jitter

    def discovery_round(self) -> float:
        host = self.host
        alive = host.members.alive()
        known = host.known_addresses()
        peers = [p for p in host.bootstrap if p != host.address and p not in known]
        lan = not alive or self.rng.random() < 1 / host.members.size()
        if peers or lan:
            meta = json.dumps(host.meta, separators=(",", ":")).encode() if host.meta else b""
            me = host.self_update()
            body = encode_discovery(me.address, meta, alone=not alive, endpoints=me.endpoints)
            for peer in peers:
                host.send_frame(MessageType.PEER_DISCOVERY, body, peer, piggyback=False)
            if lan:
                host.broadcast_frame(MessageType.PEER_DISCOVERY, body)
        return host.config.discovery_interval_s * (6 if alive else 1)

    def send_membership(self, to: Address | str, reply_wanted: bool) -> None:
        """Our whole membership view, ourselves first, in as many frames as it takes,
        to an address or to a member (over its path)."""
        host = self.host

        def send(body: bytes) -> None:
            if isinstance(to, str):
                host.send_to(MessageType.MEMBERSHIP, body, to, piggyback=False)
            else:
                host.send_frame(MessageType.MEMBERSHIP, body, to, piggyback=False)

        entries = [encode_update(host.self_update())] + [encode_update(u) for u in host.members.snapshot()]
        room = MAX_DATAGRAM - frame_overhead(host.node_id, 2) - 64
        chunk: list[bytes] = []
        size = 0
        for raw in entries:
            if chunk and (size + len(raw) + _ENTRY_OVERHEAD > room or len(chunk) == 255):
                send(bytes((reply_wanted,)) + encode_gossip(chunk))
                chunk, size = [], 0
                reply_wanted = False  # one reply is enough
            chunk.append(raw)
            size += len(raw) + _ENTRY_OVERHEAD
        send(bytes((reply_wanted,)) + encode_gossip(chunk))

    # -- handlers (the node's dispatch table points here) --------------------------------------
    def frame_handlers(self) -> dict[MessageType, Callable[[Frame, Address], None]]:
        return {MessageType.PEER_DISCOVERY: self.on_discovery, MessageType.MEMBERSHIP: self.on_membership,
                MessageType.GOSSIP: self.on_gossip}

    def on_discovery(self, frame: Frame, addr: Address) -> None:
        address, meta, alone, endpoints = decode_discovery(frame.body)
        known = self.host.members.get(frame.sender)
        new = known is None or known.status != ALIVE or frame.incarnation > known.incarnation
        self.host.apply(Update(MessageType.ALIVE, frame.sender, frame.incarnation, address, frame.sender,
                               meta, endpoints), frame.sender, addr)
        if alone or new:
            self.send_membership(addr, reply_wanted=False)

    def on_membership(self, frame: Frame, addr: Address) -> None:
        reply_wanted = frame.body[:1] == b"\x01"
        for raw in decode_gossip(frame.body[1:]):
            self.host.apply(decode_update(raw), frame.sender, addr)
        if reply_wanted:
            self.send_membership(addr, reply_wanted=False)

    def on_gossip(self, frame: Frame, addr: Address) -> None:
        for raw in decode_gossip(frame.body):
            if not raw or raw[0] not in ENVELOPE_TYPES:
                raise WireError("malformed", "gossip entry of no envelope type")
            self.host.on_envelope(MessageType(raw[0]), decode_envelope(raw[1:]), frame.sender)
