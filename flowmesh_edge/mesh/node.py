"""MeshNode: a member of the peer mesh. Lifecycle, framing, dispatch, public API.

The node owns the transport and the loop timers, frames and authenticates
what it sends, and on receipt authenticates every datagram before decoding
it, refuses replays, then hands the frame to the handler its type maps to in
the dispatch table. Anything forged, replayed, truncated, oversized or
malformed is dropped and counted; the receive path never raises.

The concerns live beside it, one module each:

* ``detector.py``: probes, indirect probes, suspicion, refutation (SWIM);
* ``dissemination.py``: gossip rounds, push-pull, discovery;
* ``envelopes.py``: seen-set, TTL, loop refusal, hop limit (pure);
* ``routing.py``: next hops and direct-path health (pure);
* ``paths.py``: the connection train, every path to each member, failover;
* ``alerts.py``, ``search.py``, ``state_sync.py``, ``registry.py``: the application protocols,
  behind ``application.Application``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from flowmesh.limits import check_node_id

from .address import Address
from .alerts import AlertReport, Alerts
from .application import Application, Handler, MeshMessage, run_handler
from .config import DEFAULT_PORT, MeshConfig
from .detector import FailureDetector
from .dissemination import Dissemination
from .envelopes import Envelopes
from .keyring import Keyring, MeshKey
from .membership import ALIVE, DEAD, SUSPECT, MemberEvent, MemberList, PeerInfo
from .messaging import Messaging
from .paths import ConnectionTrain, PathHandler
from .registry import EMBEDDING_SEARCH, HashEntry, HashHook, Hit, MeshSearch, Registry, vector
from .rotation import KeyRotation
from .routing import RouteTable
from .search import Search, SearchResult
from .security import ReplayGuard
from .state_sync import StateSync
from .stats import GossipStats, MemberCounts, MeshStats
from .transport import Transport, Transports
from .transports.udp import UdpTransport
from .wire import (
    ENVELOPE_TYPES,
    MAX_HOST_BYTES,
    SEALED,
    Envelope,
    Frame,
    MessageType,
    Stamp,
    Update,
    WireError,
    decode_epoch,
    decode_frame,
    encode_epoch,
    encode_frame,
)

__all__ = ["AlertReport", "MeshMessage", "MeshNode", "SearchResult"]

log = logging.getLogger("flowmesh_edge.mesh")

MemberHandler = Callable[[MemberEvent, PeerInfo | None], object]


class MeshNode:
    """A mesh member. See the README for the API in use.

    ``peers`` are members to join through: addresses, or ``(host, port)`` UDP
    pairs. ``transport`` is one transport or several (the first is the primary:
    its address is the node's); by default UDP on ``bind:port``. ``wall_clock``
    (default ``time.time``) gives the start incarnation (its seconds), the boot
    epoch (its microseconds), the probe rounds and the frames' timestamps;
    simulations inject their own.
    """

    def __init__(
        self,
        node_id: str,
        port: int = DEFAULT_PORT,
        mesh_key: bytes | str | None = None,
        bind: str = "0.0.0.0",
        peers: Iterable[Address | tuple[str, int] | str] = (),
        heartbeat_interval: float | None = None,
        *,
        config: MeshConfig | None = None,
        transport: Transport | Iterable[Transport] | None = None,
        meta: dict | None = None,
        seed: int | None = None,
        wall_clock: Callable[[], float] | None = None,
        keyring_version: int = 0,
    ):
        if mesh_key is None:
            raise ValueError("a mesh key is required: every datagram is authenticated with it")
        if heartbeat_interval is not None:  # kept so that existing callers still start
            warnings.warn("heartbeat_interval has no effect: probes carry the state version, so the "
                          "mesh sends no separate application heartbeat", DeprecationWarning, stacklevel=2)
        self.node_id = check_node_id(node_id)
        self.config = cfg = replace(config or MeshConfig(), port=port, bind=bind)
        self.meta = dict(meta or {})
        self.bootstrap = [Address.of(p) for p in peers]
        #: The mesh's keys (keyring.py): ``mesh_key`` is a key, a list of keys (primary
        #: first), or a Keyring; what we send is sealed when ``config.encrypt``.
        self.keyring = mesh_key if isinstance(mesh_key, Keyring) else Keyring(
            mesh_key if isinstance(mesh_key, bytes | str) else list(mesh_key), encrypt=cfg.encrypt)
        if transport is None:
            transport = UdpTransport(cfg.bind, cfg.port, cfg.effective_broadcast_address())
        self._transport = transport if isinstance(transport, Transport) else Transports(transport)
        self._rng = random.Random(seed)
        self._wall = wall_clock or time.time
        self._loop: asyncio.AbstractEventLoop | None = None
        started = self._wall()
        #: Starts at the start time in seconds, so that a restarted node outranks its past self.
        self.incarnation = int(started) & 0xFFFFFFFF
        #: This boot, for members' replay windows (security.py): the start time in microseconds.
        self.epoch = int(started * 1_000_000) & 0xFFFFFFFFFFFFFFFF
        self._seq = 0
        self._epoch_notices: dict[str, float] = {}  #: sender -> when we last told it its epoch
        self.members = MemberList(node_id, cfg, self.now)
        self.route_table = RouteTable(node_id, cfg.route_ttl_s, self.now)
        # message ids differ from a previous run's, which members may still hold as seen
        self.envelopes = Envelopes(node_id, cfg, self.now,
                                   self._rng.getrandbits(32) ^ (self.incarnation << 16))
        self._replay = ReplayGuard(cfg.replay_window, cfg.max_skew_s)
        self.rotation = KeyRotation(self, self.keyring, keyring_version)
        self.detector = FailureDetector(self, self._rng)
        self.dissemination = Dissemination(self, self._rng)
        self.paths = ConnectionTrain(self, cfg, self._rng)
        self._path_handlers: list[PathHandler] = []
        self._unadvertised: set[Address] = set()  #: endpoints too long for the wire (warned of)
        self._call = functools.partial(run_handler, self.spawn)
        self.messaging = Messaging(self, self.envelopes, self._call)
        self._handlers = self.messaging.handlers  # type -> user handlers
        self._member_handlers: list[MemberHandler] = []
        self.alerts, self.search, self.state_sync = Alerts(), Search(), StateSync()
        self.registry = Registry()
        for app in (self.alerts, self.search, self.state_sync, self.registry):
            self.register(app)
        self.search.answer_with(EMBEDDING_SEARCH, self.registry.answer)
        #: The dispatch table: each frame type to the one handler its module declares.
        self._dispatch: dict[MessageType, Callable[[Frame, Address], None]] = {
            **self.detector.frame_handlers(), **self.dissemination.frame_handlers(),
            **self.paths.frame_handlers(),
            **dict.fromkeys(ENVELOPE_TYPES, self.messaging.on_frame), MessageType.EPOCH: self._on_epoch}
        self._background: set[asyncio.Task] = set()
        self._running = False
        # by type, named only when stats() are read: these count every datagram
        self._sent: Counter[MessageType] = Counter()
        self._received: Counter[MessageType | None] = Counter()  #: None: undecodable
        self._dropped: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def address(self) -> Address:
        return self._transport.address

    async def start(self, local_state: dict | None = None) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        if local_state:
            self.state_sync.set_initial(local_state)
        self._transport.on_discovered(self.add_peer)
        await self._transport.start(self._on_datagram)
        self._running = True
        self.paths.start()
        self.queue_update(self.self_update())
        self.detector.start()
        self.dissemination.start()
        log.info("mesh node %s listening on %s", self.node_id, self.address)

    async def stop(self, leave: bool = True) -> None:
        """Stop; with ``leave`` tell a few members first, so the mesh marks us left at once."""
        if not self._running:
            return
        if leave:
            self.detector.leave()
        self._running = False
        self.detector.stop()
        self.dissemination.stop()
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        for app in self.messaging.applications():
            app.close()
        await self._transport.close()

    async def __aenter__(self) -> MeshNode:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


    # -- public API ----------------------------------------------------------------------
    def peers(self) -> dict[str, PeerInfo]:
        """node_id -> PeerInfo for every known member but this node."""
        self.state_sync.annotate(self.members.members)
        return dict(self.members.members)

    def on(self, message_type: MessageType, handler: Handler) -> None:
        """Call ``handler(message)`` for each message of that type (sync or async).

        A SEARCH_QUERY handler's return value (when not None) is sent back to
        the asker as its answer.
        """
        self._handlers.setdefault(MessageType(message_type), []).append(handler)

    def on_member(self, handler: MemberHandler) -> None:
        """Call ``handler(event, peer)`` on joined/suspect/dead/left/recovered/removed."""
        self._member_handlers.append(handler)

    def on_path(self, handler: PathHandler) -> None:
        """Call ``handler(node_id, address, previous, rtt_s)`` when the path this node
        uses to a member changes (paths.py): the address now in use, the one before
        (None for the first) and the new path's round trip in seconds (None: unknown)."""
        self._path_handlers.append(handler)

    def add_peer(self, address: Address | tuple[str, int] | str, node_id: str | None = None,
                 source: str = "config") -> None:
        """Somewhere a member may be (found by mDNS, a relay, a BLE scan, a saved
        mesh): ask it to join. With ``node_id``, from a source the caller trusts,
        also count it as one of that member's paths; an unauthenticated finding
        (mDNS) must not: the member's own authenticated frames say where it is."""
        address = Address.of(address)
        if node_id is not None and node_id != self.node_id:
            self.paths.learn(node_id, address, source)
        if address not in self.bootstrap and address != self.address:
            if len(self.bootstrap) >= 256:  # found over and over: keep the newest
                del self.bootstrap[0]
            self.bootstrap.append(address)
            if self._running:
                self.dissemination.discover_now()

    def register(self, app: Application) -> None:
        """Plug in an application protocol for the message types it names."""
        self.messaging.register(app)
        app.attach(self)

    def state(self) -> dict:
        return dict(self.state_sync.state)

    @property
    def state_version(self) -> int:
        return self.state_sync.version

    def update_state(self, updates: dict) -> int:
        """Merge ``updates`` into this node's state, bump its version, spread it."""
        return self.state_sync.update(updates)

    async def broadcast(self, payload: dict) -> int:
        """Broadcast an application payload to every member (ROUTE_BROADCAST)."""
        return self.originate(MessageType.ROUTE_BROADCAST, payload).message_id

    async def broadcast_alert(self, alert: dict, priority: str = "normal") -> AlertReport:
        """Broadcast an alert. ``critical`` ones are retransmitted until every alive
        member acknowledged or ``critical_deadline_s`` passed; the report says which."""
        return await self.alerts.broadcast(alert, priority)

    async def broadcast_search_query(self, query: dict, search_type: str = "search",
                                     timeout: float = 1.0) -> list[SearchResult] | MeshSearch:
        """Send a search to every member; return the answers received within ``timeout``.

        An ``embedding_search`` (``{"embedding": [512 numbers], "k": 10, "data_type"?,
        "node"?}``) is answered by every member's registry with its top-k; the answers
        come back merged into one ranked list with who answered (``search_mesh``, whose
        result this is)."""
        if search_type == EMBEDDING_SEARCH and "embedding" in query:
            return await self.search_mesh(query["embedding"], query.get("k", 10), timeout,
                                          query.get("data_type"), query.get("node"))
        return await self.search.query(query, search_type, timeout)

    # -- keys (keyring.py, rotation.py) -----------------------------------------------------------
    async def change_keys(self, keys: list[str] | list[bytes]) -> bool:
        """Make ``keys`` (primary first) the keyring of the whole mesh, in steps that never
        leave a member unable to read another (install, use, remove; rotation.py). True
        when every alive member acknowledged every step; ValueError for a bad ring."""
        return await self.rotation.change_to(keys)

    async def rotate_key(self, new_key: str | bytes) -> bool:
        """Replace every key of the mesh by ``new_key`` (install it, use it, remove the rest)."""
        return await self.change_keys([new_key])

    def on_keyring(self, handler: Callable[[int, list[str]], object]) -> None:
        """Call ``handler(version, keys)`` whenever this member's keyring changes (a step
        of ours or one taken from a member); keys primary first. The agent saves them."""
        self.rotation.on_change(handler)

    # -- hash registry (registry.py) -------------------------------------------------------------
    def add_hash(self, hash_value: str, data_type: str, embedding, metadata: dict | None = None,
                 confidence: float | None = None) -> HashEntry:
        """Register an entry (``embedding``: EMBEDDING_DIMENSIONS numbers) here and spread it
        (without its embedding) to the mesh; a re-add bumps its version. ValueError for bad
        input, with nothing changed."""
        return self.registry.add(hash_value, data_type, embedding, metadata, confidence)

    def search_hashes(self, embedding, k: int = 10, data_type: str | None = None,
                      node: str | None = None) -> list[Hit]:
        """This member's entries with an embedding (its own, and members' it fetched) nearest
        to ``embedding`` (cosine distance), nearest first."""
        return self.registry.search(embedding, k, data_type, node)

    async def search_mesh(self, embedding, k: int = 10, timeout: float = 1.0, data_type: str | None = None,
                          node: str | None = None) -> MeshSearch:
        """Search every member's registry (this one's included): the answers received within
        ``timeout`` merged into one list, nearest first, one hit per hash, with who answered."""
        vec = vector(embedding)
        query = self.registry.query(vec, k, data_type, node)
        # this member's own hits, ranked in a worker thread while the answers come in
        own = asyncio.ensure_future(self.registry.search_in_thread(vec, k, data_type, node))
        try:
            answers = await self.search.query(query, EMBEDDING_SEARCH, timeout)
        except BaseException:
            own.cancel()
            raise
        return self.registry.merge(await own, answers, k)

    async def fetch_embedding(self, hash_value: str, timeout: float = 1.0):
        """The embedding (float32 array) of a registry entry: this node's own at once, a
        member's fetched from it in parts (float16 precision) and kept with the entry, so
        that ``search_hashes`` ranks it too; None when unknown or not answered in time."""
        return await self.registry.fetch(hash_value, timeout)

    def on_hash(self, handler: HashHook) -> None:
        """Call ``handler(entry)`` for each entry added on this node (``add_hash``)."""
        self.registry.on_hash(handler)

    async def send(self, node_id: str, payload: dict) -> None:
        """Deliver ``payload`` to one member (DIRECT), through others when it is not
        directly reachable."""
        self.send_routed(MessageType.DIRECT, node_id, payload)

    def routes(self) -> dict[str, tuple[str, int]]:
        """Learned routes: destination -> (next hop, hops)."""
        return self.route_table.routes()

    def stats(self) -> MeshStats:
        """Counters, typed; ``stats()["sent"]`` and ``.as_dict()`` still read as a dict."""
        counts = Counter(m.status for m in self.members.members.values())
        env, queues = self.envelopes.stats, self.dissemination
        return MeshStats(
            self.node_id, self.incarnation, sum(self._sent.values()), sum(self._received.values()),
            dict(self._dropped), {t.name: k for t, k in self._sent.items()},
            {(t.name if t is not None else "?"): k for t, k in self._received.items()},
            GossipStats(env.seen, env.duplicates, env.propagated, len(queues.updates), len(queues.messages)),
            replace(self.detector.stats), MemberCounts(counts[ALIVE], counts[SUSPECT], counts[DEAD]),
            replace(self.alerts.stats), self.messaging.routed, env.forwarded,
            self._transport.error_count, self.paths.stats())

    # -- engine services: what the concern modules and applications call ---------------------
    def now(self) -> float:
        """Loop time (virtual in simulations)."""
        return self._loop.time() if self._loop is not None else time.monotonic()

    def wall(self) -> float:
        return self._wall()

    @property
    def running(self) -> bool:
        return self._running

    def call_later(self, delay: float, callback: Callable[..., object], *args) -> asyncio.TimerHandle:
        """Call ``callback(*args)`` in ``delay`` seconds of loop time, unless the node
        stopped meanwhile; an error is logged, never raised into the loop."""
        assert self._loop is not None, "the node is not started"
        return self._loop.call_later(delay, self._timer_fired, callback, args)

    def _timer_fired(self, callback: Callable[..., object], args: tuple) -> None:
        if not self._running:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("mesh %s: %s failed", self.node_id, getattr(callback, "__qualname__", callback))

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def call(self, handler: Callable, *args) -> None:
        """Call a user handler (sync, or async as a task); its error is logged, never raised."""
        self._call(handler, *args)

    def drop(self, reason: str) -> None:
        self._dropped[reason] += 1

    def state_stamp(self) -> Stamp:
        return self.state_sync.stamp()

    def heard_state(self, sender: str, stamp: Stamp) -> None:
        self.state_sync.heard(sender, stamp)

    def outranked_by_past_self(self) -> None:
        """Our incarnation had to jump past a previous boot's: so must our state's stamp,
        or members would keep that boot's state copy over ours."""
        self.state_sync.restamp()

    def handlers(self, mtype: MessageType) -> list[Handler]:
        return list(self._handlers.get(mtype, ()))

    def endpoints(self) -> list[Address]:
        """Where members can reach this node, its address first, one per path (no
        host when bound to every interface: they take the one our datagrams come from)."""
        every = [self.address, *self._transport.endpoints()]
        # a host the wire cannot carry (a long node id at a long relay host name) is left out
        # rather than making every ALIVE of ours unsendable
        fits = [a for a in every if len(a.host.encode()) <= MAX_HOST_BYTES]
        for a in set(every) - set(fits) - self._unadvertised:  # said once, not at every ALIVE
            self._unadvertised.add(a)
            log.warning("mesh %s: endpoint %s not advertised: its host is over %d bytes", self.node_id,
                        a, MAX_HOST_BYTES)
        return list(dict.fromkeys(a.with_host("") if a.is_wildcard else a for a in fits))

    def self_update(self) -> Update:
        """ALIVE about this node, at the address members should use, with the
        endpoints of its other transports."""
        address, *endpoints = self.endpoints()
        meta = json.dumps(self.meta, separators=(",", ":")).encode() if self.meta else b""
        return Update(MessageType.ALIVE, self.node_id, self.incarnation, address, self.node_id, meta,
                      tuple(endpoints))

    def handles(self, address: Address) -> bool:
        """Whether one of this node's transports can send to ``address``."""
        return self._transport.handles(address)

    def learn_member(self, update: Update) -> None:
        """An accepted ALIVE: where the member says it can be reached."""
        self.paths.learn_member(update.node, update.address, update.endpoints)

    def probe_answered(self, node_id: str, address: Address, rtt_s: float) -> None:
        """A direct PING's ack: the round trip of a member's only path (with several,
        the path probes time each one)."""
        self.paths.observe_rtt(node_id, address, rtt_s)

    def probe_timeout_for(self, node_id: str) -> float:
        """How long a probe of ``node_id`` waits for its direct ack: ``probe_timeout_s``,
        or twice the round trip of the slowest path the probe goes on when that is
        longer: the member is dead only when no path answers, so the slowest one is
        waited for (a member reached only through a distant relay must not be
        suspected for its distance)."""
        rtt = self.paths.slowest_rtt(node_id)
        base = self.config.probe_timeout_s
        return max(base, 2 * rtt) if rtt is not None else base

    def known_addresses(self) -> set[Address]:
        """Addresses of live members, every path included (discovery skips them)."""
        known: set[Address] = set()
        for m in self.members.alive():
            known.add(m.address)
            known.update(self.paths.every_path(m.node_id, m.address))
        return known

    def path_changed(self, node_id: str, address: Address, previous: Address | None,
                     rtt_s: float | None) -> None:
        peer = self.members.get(node_id)
        if peer is not None:
            peer.path, peer.rtt_s = address, rtt_s
        for handler in self._path_handlers:
            self._call(handler, node_id, address, previous, rtt_s)

    def queue_update(self, update: Update) -> None:
        self.dissemination.queue_update(update)

    def apply(self, update: Update, sender: str, addr: Address) -> None:
        self.detector.apply(update, sender, addr)

    def member_event(self, event: MemberEvent) -> None:
        self.dissemination.member_event(event)
        if event.kind in ("dead", "left", "removed"):
            self.route_table.forget(event.node_id)
        if event.kind == "removed":
            self.paths.forget(event.node_id)
        level = logging.INFO if event.kind in ("joined", "dead", "left", "recovered") else logging.DEBUG
        log.log(level, "mesh %s: %s %s (incarnation %d)", self.node_id, event.node_id, event.kind,
                event.incarnation)
        for app in self.messaging.applications():
            app.member_event(event)
        self.rotation.member_event(event)
        peer = self.members.get(event.node_id)
        for handler in self._member_handlers:
            self._call(handler, event, peer)

    # -- framing and sending ---------------------------------------------------------------
    def _next_frame(self, mtype: MessageType, body: bytes) -> Frame:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        if self._seq == 0:  # wrapped: a new epoch keeps replay windows sound
            self.epoch += 1
        return Frame(mtype, self.node_id, self.incarnation, self._seq, int(self._wall()), body, (),
                     self.epoch)

    def send_frame(self, mtype: MessageType, body: bytes, address: Address, piggyback: bool = True, *,
                   key: MeshKey | None = None, seal: bool = False) -> None:
        """Frame, protect and send one datagram, with membership updates riding along:
        under the primary key unless ``key``; sealed when the keyring encrypts or ``seal``."""
        raw = self.dissemination.piggyback(len(body)) if piggyback else []
        ring = self.keyring
        protect = (ring.protect if key is None and not seal
                   else functools.partial(ring.protect, key=key, seal=seal))
        try:
            datagram = encode_frame(self._next_frame(mtype, body), protect, raw)
        except ValueError:
            log.warning("mesh %s: %s message too large to send", self.node_id, mtype.name)
            self.drop("too_large")
            return
        self._sent[mtype] += 1
        self._transport.send(datagram, address)

    def send_to(self, mtype: MessageType, body: bytes, node_id: str, *, fallback: Address | None = None,
                piggyback: bool = True, every_path: bool = False, replay: bool = False,
                seal: bool = False) -> None:
        """Send to a member over the path(s) the connection train picks (paths.py):
        ``every_path`` for probes (dead only when no path answers), ``replay`` for
        messages to send again should the path change before they are known delivered."""
        if fallback is None:
            member = self.members.get(node_id)
            if member is None:
                self.drop("unknown_member")
                return
            fallback = member.address
        train = self.paths
        for address in (train.every_path if every_path else train.plan)(node_id, fallback):
            self.send_frame(mtype, body, address, piggyback, seal=seal)
        if replay:
            train.sent(node_id, mtype, body)

    def broadcast_frame(self, mtype: MessageType, body: bytes) -> bool:
        """Send one datagram to the local segment, when the transport can."""
        sent = self._transport.broadcast(encode_frame(self._next_frame(mtype, body), self.keyring.protect))
        if sent:
            self._sent[mtype] += 1
        return sent

    # -- application messages (messaging.py) -------------------------------------------------
    def originate(self, mtype: MessageType, payload: dict) -> Envelope:
        """Broadcast a new message of ours; ValueError when it cannot fit a datagram."""
        return self.messaging.originate(mtype, payload)

    def send_routed(self, mtype: MessageType, destination: str, payload: dict) -> Envelope:
        return self.messaging.send_routed(mtype, destination, payload)

    def send_envelope(self, mtype: MessageType, env: Envelope) -> None:
        self.messaging.send_envelope(mtype, env)

    def on_envelope(self, mtype: MessageType, env: Envelope, sender: str) -> None:
        self.messaging.on_envelope(mtype, env, sender)

    # -- receiving -------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: Address) -> None:
        """Entry point for every datagram. Never raises."""
        try:
            signed, key = self.keyring.open(data)
            frame = decode_frame(signed)
        except WireError as exc:
            self._received[None] += 1
            self.drop(exc.reason)
            return
        self._received[frame.type] += 1
        if frame.sender == self.node_id:
            self.drop("self")
            return
        reason = self._replay.check(frame.sender, frame.epoch, frame.seq, frame.timestamp, self._wall())
        if reason:
            self.drop(reason)
            if reason == "old_epoch":
                self._tell_epoch(frame.sender, addr)
            return
        try:
            if frame.type is MessageType.KEYRING:  # needs to know how the frame came
                self.rotation.on_frame(frame, addr, key, data[1] == SEALED)
            else:
                self._handle(frame, addr)
                if key is not self.keyring.primary:  # one of us is behind a rotation
                    self.rotation.heard_under(frame.sender, key, addr)
        except WireError as exc:
            self.drop(exc.reason)
        except Exception:
            log.exception("mesh %s: error handling %s from %s", self.node_id, frame.type.name, frame.sender)
            self.drop("error")

    def _tell_epoch(self, sender: str, addr: Address) -> None:
        """``sender`` speaks from an older boot than the one we hear: a replay, or a
        restart whose clock is behind. Tell it (once a second at most) the epoch we
        track, so that a genuine restart moves past it (security.py)."""
        epoch = self._replay.epoch_of(sender)
        now = self.now()
        if epoch is None or now - self._epoch_notices.get(sender, float("-inf")) < 1.0:
            return
        if len(self._epoch_notices) > 256:
            self._epoch_notices = {s: t for s, t in self._epoch_notices.items() if now - t < 1.0}
        self._epoch_notices[sender] = now
        self.send_frame(MessageType.EPOCH, encode_epoch(epoch), addr, piggyback=False)

    def _on_epoch(self, frame: Frame, addr: Address) -> None:
        """A member tracks a boot of ours at least this high: move past it."""
        theirs = decode_epoch(frame.body)
        if theirs >= self.epoch:
            log.info("mesh %s: %s knows a later boot of ours; boot epoch %d -> %d", self.node_id,
                     frame.sender, self.epoch, theirs + 1)
            self.epoch = theirs + 1
            if not self.members.alive():
                self.dissemination.discover_now()  # our discovery was refused: say it again

    def _handle(self, frame: Frame, addr: Address) -> None:
        peer = self.members.get(frame.sender)
        if peer is not None:
            peer.last_heard = self._wall()
            self.route_table.heard_from(frame.sender)
            self.detector.check_accused(peer, frame.incarnation, addr)
        for update in frame.updates:
            self.detector.apply(update, frame.sender, addr)
        handler = self._dispatch.get(frame.type)
        if handler is None:
            self.drop("unexpected")
            return
        handler(frame, addr)
        if peer is not None or self.members.get(frame.sender) is not None:
            self.paths.heard(frame.sender, addr)

