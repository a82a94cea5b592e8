"""Through a relay server: the path of last resort (``relay:NODE@HOST:PORT``).

The member connects out to every relay it is given (NAT and firewalls let
that through), authenticates with the relay's token and names its mesh and
node (``relay_protocol``). ``relay:cam-2@relay.example:8765`` is node
``cam-2`` as reached through the relay at ``relay.example:8765``; the node id
is everything before the last ``@``. Each relay is one endpoint of this
member, advertised as ``relay:<own id>@HOST:PORT``.

The relay tells who of the mesh is connected, and who joins later: each is
reported to ``on_discovered`` callbacks, so members find each other through
it with no address configured. Connections that drop are reopened with
exponential backoff (1 s doubling to 60 s, with jitter, so that members cut
off together do not all come back in the same second); while one is down, up
to ``queue_limit`` datagrams wait for it and the rest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
from collections import Counter, deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State

from .. import relay_protocol as rp
from ..address import Address
from ..transport import Discovered, Receiver, Transport
from ..wire import MAX_DATAGRAM
from .websocket import write_without_waiting

RELAY = "relay"
log = logging.getLogger("flowmesh_edge.mesh.relay")

#: Reconnection backoff: first wait, longest wait (seconds), jitter (+/- fraction).
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.25
#: A connection that lived this long resets the backoff to its first step; one the
#: relay closes sooner (a bad token, a rate limit) keeps doubling it.
STABLE_AFTER_S = 10.0
#: Seconds for the TCP, TLS and WebSocket handshakes and the relay's answer to the hello.
OPEN_TIMEOUT_S = 10.0


def relay_address(node: str, host: str, port: int) -> Address:
    return Address(RELAY, f"{node}@{host}", port)


def split_relay_address(address: Address) -> tuple[str, str]:
    """``(node, relay host)`` of ``relay:NODE@HOST:PORT`` (split on the last ``@``)."""
    node, at, host = address.host.rpartition("@")
    if not at or not node or not host:
        raise ValueError(f"{address} is not relay:NODE@HOST:PORT")
    return node, host


class _Relay:
    """One relay: where it is, its connection when up, what waits for it."""

    def __init__(self, url: str, token: str, node_id: str):
        problem = rp.relay_url_problem(url)
        if problem:
            raise ValueError(problem)
        parts = urlsplit(url)
        self.url, self.token = url, token
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.address = relay_address(node_id, self.host, self.port)
        self.connection: ClientConnection | None = None
        self.queue: deque[bytes] = deque()
        self.peers: set[str] = set()
        self.failures = 0
        self.task: asyncio.Task | None = None
        self.last_close = ""  #: why the last connection ended, for the log and tests

    @property
    def up(self) -> bool:
        return self.connection is not None and self.connection.state is State.OPEN


class RelayTransport(Transport):
    """Members reached through relay servers. ``relays``: ``(url, token)`` pairs,
    ``url`` as ``ws://HOST:PORT`` or ``wss://HOST:PORT`` (TLS with ``ssl``, by
    default the system's trust store)."""

    name = RELAY

    def __init__(self, node_id: str, mesh_id: str, relays: Iterable[tuple[str, str]], *,
                 queue_limit: int = 256, ssl: ssl_module.SSLContext | None = None,
                 seed: int | None = None):
        self.node_id, self.mesh_id = node_id, mesh_id
        self._relays = [_Relay(url, token, node_id) for url, token in relays]
        if not self._relays:
            raise ValueError("a relay transport needs at least one relay")
        self._by_place = {(r.host, r.port): r for r in self._relays}
        self.address = self._relays[0].address
        self.queue_limit = queue_limit
        self._ssl = ssl
        self._rng = random.Random(seed)
        self.errors = [0]
        self.dropped: Counter[str] = Counter()
        self._receiver: Receiver | None = None
        self._discovered: list[Discovered] = []
        self._running = False

    # -- the interface -------------------------------------------------------------------------
    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._running = True
        for relay in self._relays:
            relay.task = asyncio.create_task(self._keep_connected(relay), name=f"relay {relay.url}")

    def handles(self, address: Address) -> bool:
        """Addresses at one of our relays only: a member's endpoint at a relay we are not
        connected to is no path of ours (the connection train does not probe it)."""
        if address.transport != RELAY:
            return False
        try:
            _, host = split_relay_address(address)
        except ValueError:
            return False
        return (host, address.port) in self._by_place

    def send(self, data: bytes, address: Address) -> None:
        if not self._running:
            return
        try:
            node, host = split_relay_address(address) if address.transport == RELAY else ("", "")
        except ValueError:
            node = host = ""
        relay = self._by_place.get((host, address.port)) if node else None
        if relay is None:
            self._drop("not_a_relay_address" if not node else "unknown_relay")
            return
        if len(data) > MAX_DATAGRAM:
            self._drop("oversized")
            return
        self._put(relay, rp.encode_data(node, data))

    def broadcast(self, data: bytes) -> bool:
        """To every other member of the mesh on every relay; True when one is connected."""
        if not self._running or len(data) > MAX_DATAGRAM:
            return False
        sent = False
        for relay in self._relays:
            if relay.up:
                self._put(relay, rp.encode_data("", data))
                sent = True
        return sent

    def endpoints(self) -> list[Address]:
        return [r.address for r in self._relays]

    def on_discovered(self, callback: Discovered) -> None:
        self._discovered.append(callback)

    def connected(self) -> list[Address]:
        """Our endpoints whose relay connection is up and authenticated."""
        return [r.address for r in self._relays if r.up]

    async def close(self) -> None:
        self._running = False
        tasks = [r.task for r in self._relays if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for relay in self._relays:
            relay.task = None
            relay.queue.clear()

    # -- sending ---------------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.errors[0] += 1

    def _put(self, relay: _Relay, message: bytes) -> None:
        if relay.up:
            self._write(relay, message)
        elif len(relay.queue) < self.queue_limit:
            relay.queue.append(message)
        else:
            self._drop("queue_full")

    def _write(self, relay: _Relay, message: bytes) -> None:
        assert relay.connection is not None
        refused = write_without_waiting(relay.connection, message)
        if refused:
            self._drop(refused)

    # -- the connection to one relay ------------------------------------------------------------
    async def _keep_connected(self, relay: _Relay) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            opened = loop.time()
            try:
                await self._session(relay)
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                close = exc.rcvd or exc.sent
                relay.last_close = f"closed: {close.code} {close.reason}".strip() if close else "closed"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, rp.ProtocolError) as exc:
                relay.last_close = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # never let one relay's trouble end the loop
                log.exception("relay %s: unexpected error", relay.url)
                relay.last_close = type(exc).__name__
            finally:
                relay.connection = None
            if loop.time() - opened >= STABLE_AFTER_S:
                relay.failures = 0
            delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** relay.failures)
            delay *= 1 + BACKOFF_JITTER * (2 * self._rng.random() - 1)
            relay.failures += 1
            log.info("relay %s: %s; reconnecting in %.1fs", rp.public_url(relay.url), relay.last_close, delay)
            await asyncio.sleep(delay)

    async def _session(self, relay: _Relay) -> None:
        """Connect, authenticate, then carry messages until the connection ends."""
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            connection = await connect(
                relay.url, ssl=self._ssl if relay.url.startswith("wss:") else None, compression=None,
                max_size=max(rp.MAX_DATA_MESSAGE, rp.MAX_HELLO), open_timeout=None, close_timeout=2,
                logger=logging.getLogger("flowmesh_edge.mesh.relay.websockets"))
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                await connection.send(rp.encode_hello(rp.Hello(relay.token, self.mesh_id, self.node_id)))
                answer = rp.decode_control(await connection.recv())
            if answer.kind != "ok":
                raise rp.ProtocolError(f"relay answered {answer.kind} to the hello")
            relay.connection = connection
            relay.peers = set(answer.peers)
            log.info("relay %s: connected as %s, %d member(s) of mesh %s there", rp.public_url(relay.url),
                     self.node_id,
                     len(answer.peers), self.mesh_id)
            for peer in answer.peers:
                self._discover(relay, peer)
            while relay.queue and relay.up:
                self._write(relay, relay.queue.popleft())
            async for message in connection:
                self._on_message(relay, message)
            relay.last_close = f"closed: {connection.close_code} {connection.close_reason or ''}".strip()
        finally:
            relay.connection = None
            await connection.close()

    def _on_message(self, relay: _Relay, message: str | bytes) -> None:
        if isinstance(message, str):
            try:
                control = rp.decode_control(message)
            except rp.ProtocolError:
                self.dropped["malformed_control"] += 1
                return
            if control.kind == "joined":
                relay.peers.add(control.node)
                self._discover(relay, control.node)
            elif control.kind == "left":
                relay.peers.discard(control.node)
            return
        try:
            source, datagram = rp.decode_data(message)
        except rp.ProtocolError:
            self.dropped["malformed"] += 1
            return
        if not source:
            self.dropped["malformed"] += 1
            return
        try:
            assert self._receiver is not None
            self._receiver(datagram, relay_address(source, relay.host, relay.port))
        except Exception:
            log.exception("relay %s: receiver failed", relay.url)

    def _discover(self, relay: _Relay, peer: str) -> None:
        if peer == self.node_id:
            return
        address = relay_address(peer, relay.host, relay.port)
        for callback in self._discovered:
            try:
                callback(address)
            except Exception:
                log.exception("relay %s: discovery callback failed", relay.url)
