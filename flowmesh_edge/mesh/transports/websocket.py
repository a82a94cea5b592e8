"""WebSocket peers, listening and dialling (``ws:HOST:PORT``, ``wss:HOST:PORT``).

Each mesh datagram is one binary WebSocket message. A member dials a peer on
its first send to it and keeps that one connection; datagrams sent while it
opens wait in a short queue (the rest are dropped and counted), and after a
failed dial the next one is tried on a later send once a backoff (1 s
doubling to 30 s) has passed, so a peer that is gone costs one attempt per
backoff, not one per datagram. A connection that ends with an error (the
peer refused our hello, vanished, sent too much) backs off the same way; one
closed cleanly (the peer restarting) is redialled on the next send.

Whoever dials speaks first, with a hello (one text message) naming the
address it listens on, or none::

    {"flowmesh": 1, "listen": "ws:10.0.0.5:8766"}      or      {"flowmesh": 1, "listen": null}

The listener then reports the frames of that connection as coming from the
named address, and answers over the same connection, so one TCP connection
serves both directions and a member behind NAT needs no port of its own. A
peer that listens on no port is given an address of its connection,
``ws:<its IP>#<n>:0``, that routes back over it while it stays open (port 0:
never dialled). A hello naming a wildcard host (``0.0.0.0``) takes the host
the connection comes from.

A hello is not authenticated: a connection claiming a peer's address draws
the answers meant for it (when we have no connection of our own to that
peer), but cannot read or forge them: frames are authenticated end to end.

Messages larger than a datagram close the connection (1009, by websockets'
``max_size``); text messages after the hello and oversized datagrams are
dropped; both are counted in ``dropped``. Compression is off: datagrams are
small and MAC'd, and inflating costs CPU a peer would choose.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import ssl as ssl_module
from collections import Counter, deque

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..address import Address
from ..transport import Receiver, Transport
from ..wire import MAX_DATAGRAM

WS, WSS = "ws", "wss"
log = logging.getLogger("flowmesh_edge.mesh.websocket")

#: Largest WebSocket message accepted: a datagram, with room for the hello.
MAX_MESSAGE = MAX_DATAGRAM + 64
#: Seconds a listener waits for a dialer's hello; seconds a dial may take.
HELLO_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 5.0
#: Redial backoff after a failed dial: first wait, longest (seconds), jitter (+/- fraction).
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_JITTER = 0.25
#: Bytes waiting on one connection (to a peer or a relay) beyond which datagrams are
#: dropped, not buffered.
WRITE_LIMIT = 64 * 1024
PROTOCOL_VERSION = 1

Connection = ClientConnection | ServerConnection


def write_without_waiting(connection: Connection, data: bytes) -> str | None:
    """Queue one binary message on ``connection`` from synchronous code (a transport's
    ``send`` never blocks); the reason it was dropped instead, or None. Beyond
    WRITE_LIMIT bytes waiting, a slow peer costs drops, not memory."""
    if connection.transport.get_write_buffer_size() > WRITE_LIMIT:
        return "congested"
    try:
        broadcast([connection], data, raise_exceptions=True)
    except Exception:
        return "send_failed"
    return None


class _Link:
    """Our dialled connection to one peer address."""

    def __init__(self, address: Address):
        self.address = address
        self.connection: ClientConnection | None = None
        self.queue: deque[bytes] = deque()
        self.task: asyncio.Task | None = None
        self.failures = 0
        self.retry_at = 0.0  #: loop time before which no new dial is tried


def _open(connection: Connection | None) -> bool:
    return connection is not None and connection.state is State.OPEN


def encode_hello(listen: Address | None) -> str:
    return json.dumps({"flowmesh": PROTOCOL_VERSION, "listen": str(listen) if listen else None},
                      separators=(",", ":"))


def decode_hello(message: str | bytes) -> Address | None:
    """The listen address a hello names (None: the dialer does not listen);
    ValueError when the message is not a hello."""
    if not isinstance(message, str):
        raise ValueError("the first message must be a text hello")
    hello = json.loads(message)
    if not isinstance(hello, dict) or hello.get("flowmesh") != PROTOCOL_VERSION:
        raise ValueError("not a FlowMesh hello")
    listen = hello.get("listen")
    if listen is None:
        return None
    address = Address.parse(listen) if isinstance(listen, str) else None
    if address is None or address.transport not in (WS, WSS) or address.port == 0:
        raise ValueError("hello names no WebSocket listen address")
    return address


class WebSocketTransport(Transport):
    """WebSocket peers. ``port`` 0 listens on a free port (``address`` has the real
    one after ``start``); ``None`` only dials. ``ssl`` (a server SSLContext) makes the
    listener ``wss``; ``dial_ssl`` is the client context for ``wss:`` peers (default:
    the system's trust store)."""

    name = WS

    def __init__(self, bind: str, port: int | None, *, ssl: ssl_module.SSLContext | None = None,
                 dial_ssl: ssl_module.SSLContext | None = None, queue_limit: int = 64,
                 seed: int | None = None):
        self.bind = bind
        self.listening = port is not None
        # a dial-only member has no address of its own: wildcard host and port 0, so that
        # peers take the address of its connection (detector.apply fills the host in)
        self.address = Address(WSS if ssl else WS, bind, port) if port is not None else Address(WS, "", 0)
        self._ssl, self._dial_ssl = ssl, dial_ssl
        self.queue_limit = queue_limit
        self._rng = random.Random(seed)
        self.errors = [0]
        self.dropped: Counter[str] = Counter()
        self._receiver: Receiver | None = None
        self._server: Server | None = None
        self._links: dict[Address, _Link] = {}
        self._inbound: dict[Address, ServerConnection] = {}
        self._numbers = itertools.count(1)
        self._running = False

    def handles(self, address: Address) -> bool:
        return address.transport in (WS, WSS)

    def endpoints(self) -> list[Address]:
        return [self.address] if self.listening else []

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        if self.listening:
            self._server = await serve(
                self._serve, self.bind, self.address.port, ssl=self._ssl, max_size=MAX_MESSAGE,
                compression=None, close_timeout=2,
                logger=logging.getLogger("flowmesh_edge.mesh.websocket.server"))
            self.address = Address(self.address.transport, self.bind,
                                   self._server.sockets[0].getsockname()[1])
        self._running = True

    async def close(self) -> None:
        self._running = False
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._inbound.clear()

    # -- sending ---------------------------------------------------------------------------------
    def send(self, data: bytes, address: Address) -> None:
        if not self._running:
            return
        if not self.handles(address):
            self._drop("not_a_websocket_address")
            return
        if len(data) > MAX_DATAGRAM:
            self._drop("oversized")
            return
        link = self._links.get(address)
        if link is not None and _open(link.connection):
            self._write(link.connection, data)
            return
        inbound = self._inbound.get(address)
        if _open(inbound):
            self._write(inbound, data)
            return
        if address.port == 0:  # a dial-only peer whose connection is gone: nothing to dial
            self._drop("no_connection")
            return
        if link is None:
            link = self._links[address] = _Link(address)
        if link.task is None:
            loop = asyncio.get_running_loop()
            if loop.time() < link.retry_at:
                self._drop("backoff")
                return
            link.task = asyncio.create_task(self._dial(link), name=f"ws dial {address}")
        if len(link.queue) < self.queue_limit:
            link.queue.append(data)
        else:
            self._drop("queue_full")

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.errors[0] += 1

    def _write(self, connection: Connection, data: bytes) -> None:
        refused = write_without_waiting(connection, data)
        if refused:
            self._drop(refused)

    # -- dialling --------------------------------------------------------------------------------
    async def _dial(self, link: _Link) -> None:
        address = link.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        uri = f"{address.transport}://{host}:{address.port}/"
        loop = asyncio.get_running_loop()
        connection = None
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                connection = await connect(
                    uri, ssl=(self._dial_ssl or True) if address.transport == WSS else None,
                    max_size=MAX_MESSAGE, compression=None, open_timeout=None, close_timeout=2,
                    logger=logging.getLogger("flowmesh_edge.mesh.websocket.client"))
                await connection.send(encode_hello(self.address if self.listening else None))
            link.connection, link.failures = connection, 0
            while link.queue and _open(connection):
                self._write(connection, link.queue.popleft())
            async for message in connection:
                self._deliver(message, address)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as exc:  # closed with an error (a clean close ends the loop quietly)
            self._closed(exc)
            log.debug("websocket %s closed: %s", uri, exc)
            self._back_off(link, loop.time())
        except Exception as exc:  # refused, unreachable, TLS, handshake
            log.debug("websocket dial %s failed: %s", uri, exc)
            self._back_off(link, loop.time())
            self.dropped["dial_failed"] += len(link.queue)
        finally:
            link.queue.clear()
            link.connection = None
            link.task = None
            if connection is not None:
                await connection.close()

    def _back_off(self, link: _Link, now: float) -> None:
        """No new dial to this peer before a backoff that doubles with each failure."""
        link.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (link.failures - 1))
        link.retry_at = now + delay * (1 + BACKOFF_JITTER * (2 * self._rng.random() - 1))
        self.errors[0] += 1

    # -- listening ------------------------------------------------------------------------------
    async def _serve(self, connection: ServerConnection) -> None:
        try:
            first = await asyncio.wait_for(connection.recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            self.dropped["hello_timeout"] += 1
            await connection.close(1008, "hello timeout")
            return
        except ConnectionClosed as exc:
            self._closed(exc)
            return
        try:
            listen = decode_hello(first)
        except ValueError:
            self.dropped["bad_hello"] += 1
            await connection.close(1008, "a FlowMesh hello was expected")
            return
        remote = str(connection.remote_address[0])
        if listen is None:
            source = Address(WS, f"{remote}#{next(self._numbers)}", 0)
        elif listen.is_wildcard:
            source = listen.with_host(remote)
        else:
            source = listen
        self._inbound[source] = connection
        try:
            async for message in connection:
                self._deliver(message, source)
        except ConnectionClosed as exc:
            self._closed(exc)
        finally:
            if self._inbound.get(source) is connection:
                del self._inbound[source]

    def _closed(self, exc: ConnectionClosed) -> None:
        if exc.sent is not None and exc.sent.code == 1009:
            self.dropped["oversized"] += 1

    def _deliver(self, message: str | bytes, source: Address) -> None:
        if isinstance(message, str):
            self.dropped["text"] += 1
            return
        if len(message) > MAX_DATAGRAM:
            self.dropped["oversized"] += 1
            return
        try:
            assert self._receiver is not None
            self._receiver(message, source)
        except Exception:
            log.exception("websocket: receiver failed on a datagram from %s", source)
