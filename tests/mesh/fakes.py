"""A fake engine for testing one mesh module at a time: it records what the
module sends, originates and drops, and keeps real membership and routes on a
clock the test moves (on top of the loop's clock, when a loop runs, so that
the module's timers and its membership agree on the time)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.application import Handler
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.membership import MemberEvent, MemberList
from flowmesh_edge.mesh.routing import RouteTable
from flowmesh_edge.mesh.state_sync import StateSync
from flowmesh_edge.mesh.wire import Envelope, MessageType, Update


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        try:
            return asyncio.get_running_loop().time() + self.t
        except RuntimeError:
            return self.t


@dataclass
class Timer:
    """A timer set outside any loop: the test fires it, or looks at it."""

    delay: float
    callback: object
    args: tuple
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Sent:
    type: MessageType
    body: bytes
    address: Address
    piggyback: bool = True


@dataclass
class FakeHost:
    node_id: str = "me"
    config: MeshConfig = field(default_factory=MeshConfig)
    clock: Clock = field(default_factory=Clock)
    incarnation: int = 100
    meta: dict = field(default_factory=dict)
    bootstrap: list[Address] = field(default_factory=list)
    my_address: Address = field(default_factory=lambda: Address.udp("10.0.0.1", 9999))

    def __post_init__(self) -> None:
        self.members = MemberList(self.node_id, self.config, self.clock)
        self.route_table = RouteTable(self.node_id, self.config.route_ttl_s, self.clock)
        self.state_sync = StateSync()
        self.state_sync.attach(self)
        self.sent: list[Sent] = []
        self.broadcasts: list[tuple[MessageType, bytes]] = []
        self.originated: list[tuple[MessageType, dict]] = []
        self.routed: list[tuple[MessageType, str, dict]] = []
        self.resent: list[tuple[MessageType, Envelope]] = []
        self.envelopes: list[tuple[MessageType, Envelope, str]] = []
        self.dropped: Counter[str] = Counter()
        self.events: list[MemberEvent] = []
        self.round_trips: list[tuple[str, float]] = []
        self.queued: list[Update] = []
        self.user_handlers: dict[MessageType, list[Handler]] = {}
        self.tasks: list[asyncio.Task] = []
        self.running = True
        self.timers: list[Timer] = []
        self._ids = 0

    @property
    def address(self) -> Address:
        return self.my_address

    def now(self) -> float:
        return self.clock()

    def wall(self) -> float:
        return 1_700_000_000.0 + self.clock()

    def send_frame(self, mtype, body, address, piggyback=True) -> None:
        self.sent.append(Sent(mtype, body, address, piggyback))

    def send_to(self, mtype, body, node_id, *, fallback=None, piggyback=True, every_path=False,
                replay=False) -> None:
        """One path per member here: its address."""
        if fallback is None:
            fallback = self.members.get(node_id).address
        self.send_frame(mtype, body, fallback, piggyback)

    def learn_member(self, update: Update) -> None:
        pass

    def probe_timeout_for(self, node_id: str) -> float:
        return self.config.probe_timeout_s

    def probe_answered(self, node_id: str, address, rtt_s: float) -> None:
        self.round_trips.append((node_id, rtt_s))

    def known_addresses(self) -> set[Address]:
        return {m.address for m in self.members.alive()}

    def broadcast_frame(self, mtype, body) -> bool:
        self.broadcasts.append((mtype, body))
        return True

    def call_later(self, delay, callback, *args):
        """On the running loop; with none (a synchronous test), recorded in ``timers``."""
        try:
            return asyncio.get_running_loop().call_later(delay, callback, *args)
        except RuntimeError:
            timer = Timer(delay, callback, args)
            self.timers.append(timer)
            return timer

    def state_stamp(self):
        return self.state_sync.stamp()

    def heard_state(self, sender, stamp) -> None:
        self.state_sync.heard(sender, stamp)

    def outranked_by_past_self(self) -> None:
        self.state_sync.restamp()

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def member_event(self, event: MemberEvent) -> None:
        self.events.append(event)

    def queue_update(self, update: Update) -> None:
        self.queued.append(update)

    def self_update(self) -> Update:
        return Update(MessageType.ALIVE, self.node_id, self.incarnation, self.my_address, self.node_id)

    def apply(self, update: Update, sender: str, addr: Address) -> None:
        self.members.apply(update)

    def _new(self, payload: dict, destination: str = "") -> Envelope:
        self._ids += 1
        return Envelope(self.node_id, self._ids, payload, destination=destination)

    def originate(self, mtype, payload) -> Envelope:
        self.originated.append((mtype, payload))
        return self._new(payload)

    def send_routed(self, mtype, destination, payload) -> Envelope:
        self.routed.append((mtype, destination, payload))
        return self._new(payload, destination)

    def send_envelope(self, mtype, env) -> None:
        self.resent.append((mtype, env))

    def on_envelope(self, mtype, env, sender) -> None:
        self.envelopes.append((mtype, env, sender))

    def handlers(self, mtype) -> list[Handler]:
        return list(self.user_handlers.get(mtype, ()))

    def join(self, *nodes: str, incarnation: int = 1) -> None:
        """Make ``nodes`` alive members, at 10.0.0.2, 10.0.0.3..."""
        for i, node in enumerate(nodes, start=len(self.members) + 2):
            self.members.apply(Update(MessageType.ALIVE, node, incarnation, Address.udp(f"10.0.0.{i}", 9999)))

    def sent_of(self, mtype: MessageType) -> list[Sent]:
        return [s for s in self.sent if s.type == mtype]
