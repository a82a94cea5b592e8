"""MeshNode: a member of the peer mesh.

The engine owns the transport and runs a few periodic tasks on one asyncio
loop: probing (SWIM), gossip rounds, timers (suspicion expiry, reaping),
discovery, application heartbeats and anti-entropy. The receive path
authenticates every datagram before decoding it, drops (and counts) anything
forged, replayed, truncated, oversized or malformed, and never raises.

Application messages travel in envelopes: broadcasts spread by gossip (each
node forwards a new one to ``fanout`` members per round, a bounded number of
times, with a TTL and a seen-set); routed messages go directly, or through the
next hop learned from indirect probes and broadcast paths, with a hop limit
and loop detection.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from .broadcast import SeenSet, TransmitLimitedQueue
from .config import DEFAULT_PORT, MeshConfig
from .membership import ALIVE, DEAD, SUSPECT, MemberEvent, MemberList, PeerInfo
from .security import MacKey, ReplayGuard
from .state import newer
from .transport import Transport, UdpTransport
from .wire import (
    ENVELOPE_TYPES,
    MAX_DATAGRAM,
    Address,
    Envelope,
    Frame,
    MessageType,
    Update,
    WireError,
    decode_discovery,
    decode_envelope,
    decode_frame,
    decode_gossip,
    decode_heartbeat,
    decode_ping,
    decode_ping_req,
    decode_probe_ack,
    decode_update,
    encode_discovery,
    encode_envelope,
    encode_frame,
    encode_gossip,
    encode_heartbeat,
    encode_ping,
    encode_ping_req,
    encode_probe_ack,
    encode_update,
    frame_overhead,
    split_tag,
)

log = logging.getLogger("flowmesh_edge.mesh")

Handler = Callable[["MeshMessage"], object]


@dataclass(frozen=True)
class MeshMessage:
    """What a handler receives."""

    type: MessageType
    origin: str
    payload: dict
    message_id: int
    path: tuple[str, ...] = ()
    sender: str = ""  #: the member that handed it to us (last hop)
    received_at: float = 0.0

    @property
    def source_node_id(self) -> str:  # seed 001's name
        return self.origin

    @property
    def hops(self) -> int:
        return len(self.path) + 1


@dataclass
class AlertReport:
    """The outcome of broadcast_alert."""

    message_id: int
    priority: str
    #: Members that acknowledged (critical alerts only).
    acked: set[str] = field(default_factory=set)
    #: Alive members that had not acknowledged by the deadline.
    missing: set[str] = field(default_factory=set)
    #: Members declared dead (or gone) before acknowledging; not retried.
    departed: set[str] = field(default_factory=set)
    #: True when every member alive at sending acknowledged; None for normal alerts.
    complete: bool | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    node_id: str
    result: object
    hops: int


@dataclass
class _Route:
    via: str
    hops: int
    expires: float


class MeshNode:
    """A mesh member. See the README for the API in use."""

    def __init__(
        self,
        node_id: str,
        port: int = DEFAULT_PORT,
        mesh_key: bytes | str | None = None,
        bind: str = "0.0.0.0",
        peers: Iterable[Address] = (),
        heartbeat_interval: float | None = None,
        *,
        config: MeshConfig | None = None,
        transport: Transport | None = None,
        meta: dict | None = None,
        seed: int | None = None,
    ):
        if mesh_key is None:
            raise ValueError("a mesh key is required: every datagram is authenticated with it")
        if not node_id or len(node_id.encode()) > 64 or not node_id.isprintable():
            raise ValueError("node_id must be 1 to 64 bytes of printable text")
        overrides: dict = {"port": port, "bind": bind}
        if heartbeat_interval is not None:
            overrides["heartbeat_interval_s"] = heartbeat_interval
        self.config = replace(config or MeshConfig(), **overrides)
        self.node_id = node_id
        self.meta = dict(meta or {})
        self.bootstrap = [tuple(p) for p in peers]
        self._mac = MacKey(mesh_key)
        self._transport = transport or UdpTransport(
            self.config.bind, self.config.port, self.config.effective_broadcast_address())
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.incarnation = int(time.time()) & 0xFFFFFFFF
        self._seq = 0
        self._ids = itertools.count(1)
        self.members = MemberList(node_id, self.config, self._now)
        self._replay = ReplayGuard(self.config.replay_window, self.config.max_skew_s)
        self._member_queue = TransmitLimitedQueue(lambda: self.config.retransmit_limit(self.members.size()))
        self._app_queue = TransmitLimitedQueue(lambda: self.config.retransmit_limit(self.members.size()))
        self._seen: SeenSet | None = None
        self._acks: dict[int, asyncio.Future] = {}
        self._relays: dict[int, tuple[Address, int, float]] = {}
        self._probe_order: list[str] = []
        self._routes: dict[str, _Route] = {}
        self._direct_ok: dict[str, float] = {}
        self._direct_failed: dict[str, float] = {}
        self._handlers: dict[MessageType, list[Handler]] = {}
        self._member_handlers: list[Callable[[MemberEvent, PeerInfo | None], object]] = []
        self._critical: dict[int, tuple[set[str], set[str], asyncio.Event]] = {}
        self._searches: dict[str, list[SearchResult]] = {}
        self._state: dict = {}
        self._state_version = 0
        self._state_inc = self.incarnation
        self._remote_state: dict[str, tuple[int, int, dict]] = {}
        self.hash_registry: dict[str, dict] = {}
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._running = False
        self._counters: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------
    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    @property
    def address(self) -> Address:
        return self._transport.address

    async def start(self, local_state: dict | None = None) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._seen = SeenSet(self.config.seen_set_size, self.config.seen_ttl_s, self._now)
        if local_state:
            self._state = dict(local_state)
            self._state_version = 1
        await self._transport.start(self._on_datagram)
        self._running = True
        self._queue_self_alive()
        loops = [self._probe_loop, self._gossip_loop, self._tick_loop, self._discovery_loop,
                 self._heartbeat_loop, self._push_pull_loop]
        self._tasks = [asyncio.create_task(self._forever(f), name=f"mesh-{self.node_id}-{f.__name__}")
                       for f in loops]
        log.info("mesh node %s listening on %s:%s", self.node_id, *self.address)

    async def stop(self, leave: bool = True) -> None:
        """Stop; with ``leave`` tell a few members first, so the mesh marks us left at once."""
        if not self._running:
            return
        if leave:
            bye = encode_update(Update(MessageType.DEAD, self.node_id, self.incarnation,
                                       ("", self.address[1]), self.node_id))
            for m in self._sample(self.members.alive(), self.config.fanout):
                self._send(MessageType.DEAD, bye, m.address, piggyback=False)
        self._running = False
        for t in self._tasks + list(self._background):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        self._tasks.clear()
        self._background.clear()
        for fut in self._acks.values():
            fut.cancel()
        await self._transport.close()

    async def __aenter__(self) -> MeshNode:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _forever(self, step: Callable[[], Awaitable[float]]) -> None:
        """Run one periodic task; an error is logged and the task goes on."""
        while self._running:
            try:
                delay = await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mesh %s: %s failed", self.node_id, step.__name__)
                delay = 1.0
            await asyncio.sleep(delay)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- public API ----------------------------------------------------------------
    def peers(self) -> dict[str, PeerInfo]:
        """node_id -> PeerInfo for every known member but this node."""
        for node, (_, version, state) in self._remote_state.items():
            m = self.members.get(node)
            if m is not None:
                m.node_state, m.version = state, version
        return dict(self.members.members)

    def on(self, message_type: MessageType, handler: Handler) -> None:
        """Call ``handler(message)`` for each message of that type (sync or async).

        A SEARCH_QUERY handler's return value (when not None) is sent back to
        the asker as its answer.
        """
        self._handlers.setdefault(MessageType(message_type), []).append(handler)

    def on_member(self, handler: Callable[[MemberEvent, PeerInfo | None], object]) -> None:
        """Call ``handler(event, peer)`` on joined/suspect/dead/left/recovered/removed."""
        self._member_handlers.append(handler)

    def state(self) -> dict:
        return dict(self._state)

    @property
    def state_version(self) -> int:
        return self._state_version

    def update_state(self, updates: dict) -> int:
        """Merge ``updates`` into this node's state, bump its version, spread it."""
        self._state.update(updates)
        self._state_version += 1
        self._state_inc = self.incarnation
        self._originate(MessageType.NODE_STATE_SYNC, self._state_payload())
        return self._state_version

    async def broadcast(self, payload: dict) -> int:
        """Broadcast an application payload to every member (ROUTE_BROADCAST)."""
        return self._originate(MessageType.ROUTE_BROADCAST, payload).message_id

    async def broadcast_alert(self, alert: dict, priority: str = "normal") -> AlertReport:
        """Broadcast an alert. ``critical`` ones are retransmitted until every alive
        member acknowledged or ``critical_deadline_s`` passed; the report says which."""
        if priority not in ("normal", "critical"):
            raise ValueError("priority must be 'normal' or 'critical'")
        started = self._now()
        env = self._originate(MessageType.ALERT, {"priority": priority, "alert": alert})
        self._counters["alerts_sent"] += 1
        if priority == "normal":
            return AlertReport(env.message_id, priority)
        pending = {m.node_id for m in self.members.alive()}
        acked: set[str] = set()
        departed: set[str] = set()
        changed = asyncio.Event()
        self._critical[env.message_id] = (pending, acked, changed)
        deadline = started + self.config.critical_deadline_s
        try:
            while pending and self._now() < deadline:
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), min(self.config.critical_retry_s,
                                                               max(deadline - self._now(), 0)))
                    continue
                except TimeoutError:
                    pass
                for node in list(pending):
                    m = self.members.get(node)
                    if m is None or m.status == DEAD:
                        pending.discard(node)  # no longer a member: stop retrying, report it
                        departed.add(node)
                        continue
                    self._send_envelope(MessageType.ALERT, replace(env, destination=node))
                    self._counters["alert_retransmits"] += 1
        finally:
            del self._critical[env.message_id]
        complete = not pending and not departed
        self._counters["critical_alerts_complete" if complete else "critical_alerts_incomplete"] += 1
        if not complete:
            log.warning("critical alert %s: no ack from %s by the deadline",
                        env.message_id, ", ".join(sorted(pending | departed)))
        return AlertReport(env.message_id, priority, set(acked), set(pending), set(departed),
                           complete, self._now() - started)

    async def broadcast_search_query(self, query: dict, search_type: str = "search",
                                     timeout: float = 1.0) -> list[SearchResult]:
        """Send a search to every member; return the answers received within ``timeout``."""
        query_id = f"{self.node_id}:{next(self._ids)}"
        self._searches[query_id] = results = []
        self._originate(MessageType.SEARCH_QUERY,
                        {"query_id": query_id, "search_type": search_type, "query": query})
        try:
            await asyncio.sleep(timeout)
        finally:
            del self._searches[query_id]
        return results

    def add_hash(self, hash_value: str, data_type: str, embedding: list[float] | None = None,
                 metadata: dict | None = None) -> None:
        """Add an entry to the hash registry and spread it (HASH_REGISTRY)."""
        entry = {"hash": hash_value, "data_type": data_type, "embedding": embedding or [],
                 "metadata": metadata or {}, "node": self.node_id}
        self.hash_registry[hash_value] = entry
        self._originate(MessageType.HASH_REGISTRY, {"entries": [entry]})

    async def send(self, node_id: str, payload: dict) -> None:
        """Deliver ``payload`` to one member (ROUTE_BROADCAST addressed to it),
        through other members when it is not directly reachable."""
        self._send_routed(MessageType.ROUTE_BROADCAST, node_id, payload)

    def routes(self) -> dict[str, tuple[str, int]]:
        """Learned routes: destination -> (next hop, hops)."""
        now = self._now()
        return {d: (r.via, r.hops) for d, r in self._routes.items() if r.expires > now}

    def stats(self) -> dict:
        members = Counter(m.status for m in self.members.members.values())
        return {
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "sent": self._counters["sent"],
            "received": self._counters["received"],
            "dropped": dict(self._dropped),
            "dropped_total": sum(self._dropped.values()),
            "gossip": {
                "seen": self._counters["gossip_seen"],
                "duplicates": self._counters["gossip_duplicates"],
                "propagated": self._counters["gossip_propagated"],
                "queued_updates": len(self._member_queue),
                "queued_messages": len(self._app_queue),
            },
            "probes": self._counters["probes"],
            "probe_failures": self._counters["probe_failures"],
            "indirect_probes": self._counters["indirect_probes"],
            "suspicions": self._counters["suspicions"],
            "refutations": self._counters["refutations"],
            "deaths": self._counters["deaths"],
            "members": {s: members.get(s, 0) for s in (ALIVE, SUSPECT, DEAD)},
            "alerts_sent": self._counters["alerts_sent"],
            "alerts_received": self._counters["alerts_received"],
            "critical_alerts_complete": self._counters["critical_alerts_complete"],
            "critical_alerts_incomplete": self._counters["critical_alerts_incomplete"],
            "routed": self._counters["routed"],
            "forwarded": self._counters["forwarded"],
            "transport_errors": getattr(self._transport, "errors", [0])[0],
        }

    # -- sending ---------------------------------------------------------------
    def _next_frame(self, mtype: MessageType, body: bytes) -> Frame:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        if self._seq == 0:  # wrapped: a new incarnation keeps replay windows sound
            self.incarnation += 1
        return Frame(mtype, self.node_id, self.incarnation, self._seq, int(time.time()), body)

    def _send(self, mtype: MessageType, body: bytes, address: Address, piggyback: bool = True) -> None:
        raw: list[bytes] = []
        if piggyback and len(self._member_queue):
            budget = MAX_DATAGRAM - frame_overhead(self.node_id, len(body))
            raw = self._member_queue.take(budget)[:255]
        frame = self._next_frame(mtype, body)
        try:
            datagram = encode_frame(frame, self._mac.sign, raw)
        except ValueError:
            log.warning("mesh %s: %s message too large to send", self.node_id, mtype.name)
            return
        self._counters["sent"] += 1
        self._transport.send(datagram, address)

    def _broadcast_frame(self, mtype: MessageType, body: bytes) -> bool:
        sent = self._transport.broadcast(encode_frame(self._next_frame(mtype, body), self._mac.sign))
        if sent:
            self._counters["sent"] += 1
        return sent

    def _self_update(self, kind: MessageType = MessageType.ALIVE) -> Update:
        host = "" if self.config.bind in ("0.0.0.0", "") else self.address[0]
        meta = json.dumps(self.meta, separators=(",", ":")).encode() if self.meta else b""
        return Update(kind, self.node_id, self.incarnation, (host, self.address[1]), self.node_id, meta)

    def _queue_self_alive(self) -> None:
        self._member_queue.queue(self.node_id, encode_update(self._self_update()))

    def _sample(self, members: list[PeerInfo], k: int) -> list[PeerInfo]:
        return self._rng.sample(members, min(k, len(members)))

    # -- envelopes -----------------------------------------------------------------
    def _new_envelope(self, payload: dict, destination: str = "") -> Envelope:
        """A message of ours, already in the seen-set so it never comes back to us as news."""
        env = Envelope(self.node_id, next(self._ids), payload, self.config.ttl, self.config.hop_limit,
                       destination)
        assert self._seen is not None
        self._seen.add((env.origin, env.message_id))
        return env

    def _originate(self, mtype: MessageType, payload: dict) -> Envelope:
        """Broadcast: queue a new message for the gossip rounds."""
        env = self._new_envelope(payload)
        self._app_queue.queue(f"{env.origin}:{env.message_id}", bytes((mtype,)) + encode_envelope(env))
        return env

    def _send_routed(self, mtype: MessageType, destination: str, payload: dict) -> None:
        """Send a new message of ours to one member (see _send_envelope for how)."""
        self._send_envelope(mtype, self._new_envelope(payload, destination))

    def _state_payload(self) -> dict:
        return {"state": self._state, "version": self._state_version, "inc": self._state_inc}

    def _send_envelope(self, mtype: MessageType, env: Envelope) -> None:
        """Send a routed envelope toward env.destination: directly, via a learned
        next hop, or (no idea where it is) by gossip flooding."""
        dest = env.destination
        route = self._routes.get(dest)
        target = self.members.get(dest)
        if route is not None and route.expires > self._now() and not self._direct_usable(dest):
            hop = self.members.get(route.via)
            if hop is not None and hop.status != DEAD:
                self._counters["routed"] += 1
                self._send(mtype, encode_envelope(env), hop.address)
                return
        if target is not None and target.status != DEAD and self._direct_usable(dest):
            self._send(mtype, encode_envelope(env), target.address)
            return
        # unknown, or known unreachable with no route: flood it; the path it
        # travels teaches the destination (and everyone on the way) a route back
        self._app_queue.queue(f"{env.origin}:{env.message_id}", bytes((mtype,)) + encode_envelope(env))

    def _direct_usable(self, node: str) -> bool:
        ok = self._direct_ok.get(node)
        failed = self._direct_failed.get(node)
        return failed is None or (ok is not None and ok > failed)

    def _learn_route(self, dest: str, via: str, hops: int) -> None:
        if dest in (self.node_id, via) or self._direct_usable(dest):
            return
        now = self._now()
        current = self._routes.get(dest)
        if current is None or current.expires <= now or hops <= current.hops:
            self._routes[dest] = _Route(via, hops, now + self.config.route_ttl_s)

    # -- receiving ---------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self._dropped[reason] += 1

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        """Entry point for every datagram. Never raises."""
        self._counters["received"] += 1
        try:
            signed, tag = split_tag(data)
            if not self._mac.verify(signed, tag):
                self._drop("forged")
                return
            frame = decode_frame(signed)
        except WireError as exc:
            self._drop(exc.reason)
            return
        if frame.sender == self.node_id:
            self._drop("self")
            return
        reason = self._replay.check(frame.sender, frame.incarnation, frame.seq, frame.timestamp,
                                    time.time())
        if reason:
            self._drop(reason)
            return
        try:
            self._handle(frame, addr)
        except WireError as exc:
            self._drop(exc.reason)
        except Exception:
            log.exception("mesh %s: error handling %s from %s", self.node_id, frame.type.name,
                          frame.sender)
            self._drop("error")

    def _handle(self, frame: Frame, addr: Address) -> None:
        sender = self.members.get(frame.sender)
        if sender is not None:
            sender.last_heartbeat = time.time()
            self._direct_ok[frame.sender] = self._now()
            if sender.status != ALIVE and frame.incarnation <= sender.incarnation:
                self._tell_accused(sender, addr)
        for update in frame.updates:
            self._apply(update, frame.sender, addr)
        t = frame.type
        if t == MessageType.PING:
            probe_id, target = decode_ping(frame.body)
            if target != self.node_id:
                self._drop("misrouted")
                return
            self._send(MessageType.PROBE_ACK, encode_probe_ack(probe_id), addr)
        elif t == MessageType.PING_REQ:
            self._relay_probe(frame.sender, addr, *decode_ping_req(frame.body))
        elif t == MessageType.PROBE_ACK:
            self._on_probe_ack(decode_probe_ack(frame.body), frame.sender)
        elif t in (MessageType.ALIVE, MessageType.SUSPECT, MessageType.DEAD):
            self._apply(decode_update(frame.body), frame.sender, addr)
        elif t == MessageType.PEER_DISCOVERY:
            address, meta = decode_discovery(frame.body)
            self._apply(Update(MessageType.ALIVE, frame.sender, frame.incarnation, address,
                               frame.sender, meta), frame.sender, addr)
            self._send_membership(addr, reply_wanted=False)
        elif t == MessageType.MEMBERSHIP:
            reply_wanted, updates = frame.body[:1] == b"\x01", decode_gossip(frame.body[1:])
            for raw in updates:
                self._apply(decode_update(raw), frame.sender, addr)
            if reply_wanted:
                self._send_membership(addr, reply_wanted=False)
        elif t == MessageType.HEARTBEAT:
            version, _ = decode_heartbeat(frame.body)
            known = self._remote_state.get(frame.sender)
            if known is None or (frame.incarnation, version) > known[:2] and version > 0:
                self._request_state(frame.sender)
        elif t == MessageType.GOSSIP:
            for raw in decode_gossip(frame.body):
                if not raw or raw[0] not in ENVELOPE_TYPES:
                    raise WireError("malformed", "gossip entry of no envelope type")
                self._on_envelope(MessageType(raw[0]), decode_envelope(raw[1:]), frame.sender)
        elif t in ENVELOPE_TYPES:
            self._on_envelope(t, decode_envelope(frame.body), frame.sender)
        else:
            self._drop("unexpected")

    def _apply(self, update: Update, sender: str, addr: Address) -> None:
        if update.kind == MessageType.ALIVE and update.node == sender and not update.address[0]:
            update = replace(update, address=(addr[0], update.address[1]))
        outcome = self.members.apply(update)
        if outcome.refute is not None:
            self._refute(outcome.refute)
            return
        if outcome.accepted:
            self._member_queue.queue(update.node, encode_update(update))
        if outcome.event is not None:
            self._member_event(outcome.event)

    def _refute(self, accused_incarnation: int) -> None:
        if accused_incarnation < self.incarnation:
            return  # an accusation we already refuted, still travelling
        self.incarnation = max(self.incarnation, accused_incarnation) + 1
        self._counters["refutations"] += 1
        self._queue_self_alive()
        log.info("mesh %s: refuting suspicion, incarnation now %d", self.node_id, self.incarnation)

    def _tell_accused(self, member: PeerInfo, addr: Address) -> None:
        """A member we hold suspect/dead talks to us: tell it, so it can refute
        (otherwise a wrongly declared death would never be corrected)."""
        kind = MessageType.SUSPECT if member.status == SUSPECT else MessageType.DEAD
        update = Update(kind, member.node_id, member.incarnation, member.address, self.node_id)
        self._send(kind, encode_update(update), addr, piggyback=False)

    def _member_event(self, event: MemberEvent) -> None:
        if event.kind in ("joined", "recovered"):
            self._probe_order.insert(self._rng.randint(0, len(self._probe_order)), event.node_id)
        if event.kind in ("dead", "left", "removed"):
            self._routes.pop(event.node_id, None)
        level = logging.INFO if event.kind in ("joined", "dead", "left", "recovered") else logging.DEBUG
        log.log(level, "mesh %s: %s %s (incarnation %d)", self.node_id, event.node_id,
                event.kind, event.incarnation)
        peer = self.members.get(event.node_id)
        for handler in self._member_handlers:
            self._call(handler, event, peer)

    def _call(self, handler: Callable, *args) -> None:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                self._spawn(self._await_handler(result))
        except Exception:
            log.exception("mesh %s: handler %r failed", self.node_id, handler)

    async def _await_handler(self, awaitable) -> object:
        try:
            return await awaitable
        except Exception:
            log.exception("mesh %s: handler failed", self.node_id)
            return None

    # -- application envelopes -------------------------------------------------------
    def _on_envelope(self, mtype: MessageType, env: Envelope, sender: str) -> None:
        assert self._seen is not None
        if env.origin == self.node_id:
            self._counters["gossip_duplicates"] += 1
            return
        looped = self.node_id in env.path
        if not looped:
            self._learn_route(env.origin, sender, len(env.path) + 1)
        key = (env.origin, env.message_id)
        # the seen-set first: a broadcast we forwarded that comes back round is
        # an echo (a duplicate), not a fault
        if key in self._seen:
            self._counters["gossip_duplicates"] += 1
            if mtype == MessageType.ALERT and env.payload.get("priority") == "critical":
                self._ack(env)  # our first ack may have been lost
            return
        if looped:  # lists us, yet we never handled it: refuse it
            self._drop("loop")
            return
        self._seen.add(key)
        self._counters["gossip_seen"] += 1
        if env.destination and env.destination != self.node_id:
            self._forward(mtype, env)
            return
        if not env.destination and env.ttl > 1:
            onward = replace(env, ttl=env.ttl - 1, path=env.path + (self.node_id,))
            self._app_queue.queue(f"{env.origin}:{env.message_id}",
                                  bytes((mtype,)) + encode_envelope(onward))
            self._counters["gossip_propagated"] += 1
        self._deliver(mtype, env, sender)

    def _forward(self, mtype: MessageType, env: Envelope) -> None:
        if env.hop_limit <= 1:
            self._drop("hop_limit")
            return
        self._counters["forwarded"] += 1
        self._send_envelope(mtype, replace(env, hop_limit=env.hop_limit - 1,
                                           ttl=max(env.ttl - 1, 1),
                                           path=env.path + (self.node_id,)))

    def _ack(self, env: Envelope) -> None:
        self._send_routed(MessageType.ACK, env.origin, {"ack": env.message_id})

    def _deliver(self, mtype: MessageType, env: Envelope, sender: str) -> None:
        message = MeshMessage(mtype, env.origin, env.payload, env.message_id, env.path, sender,
                              time.time())
        if mtype == MessageType.ALERT:
            self._counters["alerts_received"] += 1
            if env.payload.get("priority") == "critical":
                self._ack(env)
        elif mtype == MessageType.ACK:
            pending = self._critical.get(int(env.payload.get("ack", -1)))
            if pending is not None and env.origin in pending[0]:
                pending[0].discard(env.origin)
                pending[1].add(env.origin)
                pending[2].set()
            return
        elif mtype == MessageType.SEARCH_RESULT:
            results = self._searches.get(str(env.payload.get("query_id")))
            if results is not None:
                results.append(SearchResult(env.origin, env.payload.get("result"), message.hops))
        elif mtype == MessageType.SEARCH_QUERY:
            self._answer_search(message)
            return
        elif mtype == MessageType.NODE_STATE_SYNC:
            self._merge_state(env)
        elif mtype == MessageType.HASH_REGISTRY:
            for entry in env.payload.get("entries", []):
                if isinstance(entry, dict) and isinstance(entry.get("hash"), str):
                    self.hash_registry[entry["hash"]] = entry
        for handler in self._handlers.get(mtype, []):
            self._call(handler, message)

    def _answer_search(self, message: MeshMessage) -> None:
        query_id = message.payload.get("query_id")

        async def answer() -> None:
            for handler in self._handlers.get(MessageType.SEARCH_QUERY, []):
                try:
                    result = handler(message)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception:
                    log.exception("mesh %s: search handler failed", self.node_id)
                    continue
                if result is not None:
                    self._send_routed(MessageType.SEARCH_RESULT, message.origin,
                                      {"query_id": query_id, "result": result})

        self._spawn(answer())

    def _merge_state(self, env: Envelope) -> None:
        payload = env.payload
        if payload.get("pull"):
            self._send_routed(MessageType.NODE_STATE_SYNC, env.origin, self._state_payload())
            return
        state, version, inc = payload.get("state"), payload.get("version"), payload.get("inc", 0)
        if not isinstance(state, dict) or not isinstance(version, int) or not isinstance(inc, int):
            self._drop("malformed")
            return
        candidate = (inc, version, state)
        if newer(candidate, self._remote_state.get(env.origin)):
            self._remote_state[env.origin] = candidate

    def _request_state(self, node: str) -> None:
        self._send_routed(MessageType.NODE_STATE_SYNC, node, {"pull": True})

    # -- failure detection (SWIM) ---------------------------------------------------
    def _next_probe_target(self) -> PeerInfo | None:
        for _ in range(2):
            while self._probe_order:
                node = self._probe_order.pop()
                m = self.members.get(node)
                if m is not None and m.status != DEAD:
                    return m
            live = [m.node_id for m in self.members.live()]
            self._rng.shuffle(live)
            self._probe_order = live
        return None

    async def _probe_loop(self) -> float:
        target = self._next_probe_target()
        if target is not None:
            self._spawn(self._probe(target))
        return self.config.probe_interval_s

    async def _probe(self, target: PeerInfo) -> None:
        cfg = self.config
        probe_id = next(self._ids) & 0xFFFFFFFF
        ack = self._loop.create_future()  # type: ignore[union-attr]
        self._acks[probe_id] = ack
        self._counters["probes"] += 1
        ping = encode_ping(probe_id, target.node_id)
        try:
            self._send(MessageType.PING, ping, target.address)
            try:
                await asyncio.wait_for(asyncio.shield(ack), cfg.probe_timeout_s)
                return
            except TimeoutError:
                pass
            # no direct answer: ask k others, and try once more ourselves
            self._counters["probe_failures"] += 1
            self._direct_failed[target.node_id] = self._now()
            self._send(MessageType.PING, ping, target.address)
            helpers = [m for m in self.members.alive() if m.node_id != target.node_id]
            for helper in self._sample(helpers, cfg.indirect_checks):
                self._counters["indirect_probes"] += 1
                self._send(MessageType.PING_REQ,
                           encode_ping_req(probe_id, target.node_id, target.address), helper.address)
            try:
                via = await asyncio.wait_for(ack, cfg.probe_interval_s - cfg.probe_timeout_s)
                if via != target.node_id:  # reached only through a relay: remember the way
                    self._learn_route(target.node_id, via, 2)
                return
            except TimeoutError:
                pass
            current = self.members.get(target.node_id)
            if current is None or current.status == DEAD:
                return
            self._counters["suspicions"] += 1
            self._apply(Update(MessageType.SUSPECT, current.node_id, current.incarnation,
                               current.address, self.node_id), self.node_id, current.address)
        finally:
            self._acks.pop(probe_id, None)

    def _on_probe_ack(self, probe_id: int, sender: str) -> None:
        relay = self._relays.pop(probe_id, None)
        if relay is not None:  # we probed for someone else: pass the ack on
            requester_addr, their_id, _ = relay
            self._send(MessageType.PROBE_ACK, encode_probe_ack(their_id), requester_addr)
            return
        fut = self._acks.get(probe_id)
        if fut is None or fut.done():
            return
        fut.set_result(sender)

    def _relay_probe(self, requester: str, requester_addr: Address, their_id: int, target: str,
                     target_addr: Address) -> None:
        probe_id = next(self._ids) & 0xFFFFFFFF
        self._relays[probe_id] = (requester_addr, their_id, self._now() + self.config.probe_interval_s)
        self._send(MessageType.PING, encode_ping(probe_id, target), target_addr)

    async def _tick_loop(self) -> float:
        for m in self.members.expired_suspicions():
            self._counters["deaths"] += 1
            self._apply(Update(MessageType.DEAD, m.node_id, m.incarnation, m.address, self.node_id),
                        self.node_id, m.address)
        for event in self.members.reap():
            self._member_event(event)
        now = self._now()
        for probe_id, (_, _, expires) in list(self._relays.items()):
            if expires < now:
                del self._relays[probe_id]
        return min(0.05, self.config.probe_interval_s / 4)

    # -- dissemination ----------------------------------------------------------------
    async def _gossip_loop(self) -> float:
        if len(self._member_queue) or len(self._app_queue):
            targets = self._sample(self.members.live(), self.config.fanout)
            for target in targets:
                budget = (MAX_DATAGRAM - frame_overhead(self.node_id, 1)) * 2 // 3
                envelopes = self._app_queue.take(budget, overhead=2)[:255]
                self._send(MessageType.GOSSIP, encode_gossip(envelopes), target.address)
        return self.config.gossip_interval_s

    def _send_membership(self, address: Address, reply_wanted: bool) -> None:
        entries = [encode_update(self._self_update())] + [encode_update(u) for u in self.members.snapshot()]
        chunk: list[bytes] = []
        size = 0
        room = MAX_DATAGRAM - frame_overhead(self.node_id, 2) - 64
        for raw in entries:
            if chunk and (size + len(raw) + 2 > room or len(chunk) == 255):
                self._send(MessageType.MEMBERSHIP, bytes((reply_wanted,)) + encode_gossip(chunk),
                           address, piggyback=False)
                chunk, size = [], 0
                reply_wanted = False  # one reply is enough
            chunk.append(raw)
            size += len(raw) + 2
        self._send(MessageType.MEMBERSHIP, bytes((reply_wanted,)) + encode_gossip(chunk), address,
                   piggyback=False)

    async def _discovery_loop(self) -> float:
        body = encode_discovery(self._self_update().address,
                                json.dumps(self.meta, separators=(",", ":")).encode() if self.meta else b"")
        for peer in self.bootstrap:
            if peer != self.address:
                self._send(MessageType.PEER_DISCOVERY, body, peer)
        self._broadcast_frame(MessageType.PEER_DISCOVERY, body)
        alone = not self.members.live()
        return self.config.discovery_interval_s * (1 if alone else 6)

    async def _heartbeat_loop(self) -> float:
        body = encode_heartbeat(self._state_version, self._self_update().address)
        for m in self._sample(self.members.alive(), self.config.fanout):
            self._send(MessageType.HEARTBEAT, body, m.address)
        return self.config.heartbeat_interval_s

    async def _push_pull_loop(self) -> float:
        live = self.members.live()
        if live:
            self._send_membership(self._rng.choice(live).address, reply_wanted=True)
        jitter = 1 + (self._rng.random() - 0.5) * 0.2
        return self.config.push_pull_interval_s * jitter
