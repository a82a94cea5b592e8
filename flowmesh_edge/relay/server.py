"""The relay: forwards mesh datagrams between members that have no other path.

Members connect out (so NAT and firewalls are no obstacle), authenticate with
a relay token, and name their mesh and node (relay_protocol.py). The relay
forwards each data message to the member it names in the same mesh, or to
every other member of the mesh, prefixed with the sender's node id. It never
reads a datagram: frames are authenticated end to end by the mesh key, which
the relay does not hold.

Defaults, and what each trades:

* ``max_frame`` (:data:`DEFAULT_MAX_FRAME`, 1529 bytes): a header and one full
  mesh datagram. Anything larger cannot be a mesh frame; the connection is
  closed with 1009. Raising it only lets clients make the relay buffer more.
* ``rate`` / ``burst`` (:data:`DEFAULT_RATE` messages per second,
  :data:`DEFAULT_BURST`): a token bucket per connection. A member of a
  mesh of n sends about 4 probes, 2 gossip frames and a few acks a second,
  plus bursts when a critical alert is retransmitted to every member, so 200/s
  leaves room for meshes of a few hundred; a lower rate caps what one bad
  client can make the relay fan out (a broadcast costs one token and is
  delivered to n - 1 members).
* ``hello_timeout`` (:data:`relay_protocol.HELLO_TIMEOUT_S`, 5 s): a
  connection that has not finished its HTTP upgrade by then is dropped, and
  one that has not authenticated in as long after it is closed (1008); longer
  lets idle sockets pile up, shorter fails members on slow links.
* ``max_buffer`` (:data:`DEFAULT_MAX_BUFFER`, 256 KiB): bytes queued towards a
  member that reads too slowly; beyond it, frames for it are dropped (and
  counted) rather than held, so one stalled member costs memory only up to
  this and never slows delivery to the others. SWIM retransmits what matters.
* ``max_members`` (:data:`DEFAULT_MAX_MEMBERS`, 10,000): authenticated
  connections across all meshes; one more is closed with 1013 (try again
  later). Each costs a socket, and at worst (a member that stopped reading)
  ``max_buffer`` of frames queued to it: on a small host, lower both.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..mesh import relay_protocol as rp

log = logging.getLogger("flowmesh_edge.relay")

DEFAULT_MAX_FRAME = rp.MAX_DATA_MESSAGE
DEFAULT_RATE = 200.0
DEFAULT_BURST = 400
DEFAULT_MAX_BUFFER = 256 * 1024
DEFAULT_MAX_MEMBERS = 10_000


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; one per message."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class _Member:
    connection: ServerConnection
    mesh: str
    node: str
    bucket: TokenBucket
    forwarded: int = field(default=0)


class Relay:
    """A relay server. ``tokens``: the relay tokens a member may present (any one
    admits it to any mesh; the mesh key, not the token, keeps meshes apart).

    ``counters`` counts what was refused or dropped, by reason, and
    ``forwarded`` the data messages delivered.
    """

    def __init__(self, bind: str = "127.0.0.1", port: int = 8765, tokens: Iterable[str] = (), *,
                 max_frame: int = DEFAULT_MAX_FRAME, rate: float = DEFAULT_RATE,
                 burst: int = DEFAULT_BURST, hello_timeout: float = rp.HELLO_TIMEOUT_S,
                 max_buffer: int = DEFAULT_MAX_BUFFER, max_members: int = DEFAULT_MAX_MEMBERS,
                 ssl: ssl_module.SSLContext | None = None):
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("a relay needs at least one token")
        if max_frame < rp.MAX_HELLO or rate <= 0 or burst < 1:
            raise ValueError(f"max_frame must be at least {rp.MAX_HELLO}, rate and burst positive")
        self.bind, self.port = bind, port
        self.max_frame, self.rate, self.burst = max_frame, rate, burst
        self.hello_timeout, self.max_buffer, self.max_members = hello_timeout, max_buffer, max_members
        self._ssl = ssl  #: a server context: members then dial wss://
        self.counters: Counter[str] = Counter()
        self.forwarded = 0
        self.connections = 0  #: accepted since start
        self._meshes: dict[str, dict[str, _Member]] = {}
        self._server: Server | None = None
        self._closing: set[asyncio.Task] = set()  #: replaced connections being closed

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # compression off: datagrams are MAC'd binary, and inflating costs CPU an attacker chooses
        self._server = await serve(self._serve, self.bind, self.port, ssl=self._ssl, max_size=self.max_frame,
                                   compression=None, max_queue=16, close_timeout=2,
                                   open_timeout=self.hello_timeout,  # the HTTP upgrade is late too
                                   logger=logging.getLogger("flowmesh_edge.relay.websockets"))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("relay listening on %s (%d token(s), frames up to %d bytes, %g msg/s burst %d)",
                 self.url, len(self._tokens), self.max_frame, self.rate, self.burst)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._server = None
        log.info("relay stopped: %d forwarded, %d connections; refused or dropped: %s",
                 self.forwarded, self.connections, dict(self.counters) or "nothing")

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'wss' if self._ssl else 'ws'}://{host}:{self.port}"

    def members(self, mesh: str) -> list[str]:
        """Node ids of ``mesh`` connected now."""
        return sorted(self._meshes.get(mesh, {}))

    # -- one connection --------------------------------------------------------------------------
    async def _serve(self, connection: ServerConnection) -> None:
        self.connections += 1
        member = None
        try:
            member = await self._authenticate(connection)
            if member is not None:
                await self._forward_from(member)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == rp.CLOSE_TOO_BIG:
                self.counters["oversized"] += 1
        except Exception:  # never let one connection's trouble reach the others
            log.exception("relay: connection from %s failed", _peer(connection))
            self.counters["error"] += 1
        finally:
            if member is not None:
                self._leave(member)

    async def _authenticate(self, connection: ServerConnection) -> _Member | None:
        try:
            first = await asyncio.wait_for(connection.recv(), self.hello_timeout)
        except TimeoutError:
            return await self._refuse(connection, "hello_timeout", rp.REASON_HELLO_TIMEOUT)
        try:
            hello = rp.decode_hello(first)
        except rp.ProtocolError as exc:
            return await self._refuse(connection, "unauthenticated", f"{rp.REASON_AUTH_REQUIRED}: {exc}")
        if hello.version != rp.VERSION:
            return await self._refuse(connection, "version",
                                      f"unsupported protocol version {hello.version}, want {rp.VERSION}")
        presented = hello.token.encode()
        # compare with every token, always: the time taken says nothing about which matched
        matched = [hmac.compare_digest(presented, t) for t in self._tokens]
        if not any(matched):
            log.info("relay: bad token from %s (node %r of mesh %s)", _peer(connection), hello.node,
                     hello.mesh)
            return await self._refuse(connection, "bad_token", rp.REASON_BAD_TOKEN)
        mesh = self._meshes.setdefault(hello.mesh, {})
        older = mesh.get(hello.node)
        if older is None and sum(map(len, self._meshes.values())) >= self.max_members:
            self.counters["full"] += 1
            if not mesh:
                del self._meshes[hello.mesh]
            await connection.close(rp.CLOSE_TRY_AGAIN, rp.REASON_FULL)
            return None
        member = _Member(connection, hello.mesh, hello.node,
                         TokenBucket(self.rate, self.burst, time.monotonic()))
        others = [m for n, m in mesh.items() if n != hello.node]
        mesh[hello.node] = member
        if older is not None:
            self.counters["replaced"] += 1
            task = asyncio.create_task(older.connection.close(rp.CLOSE_REPLACED, rp.REASON_REPLACED))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await connection.send(rp.encode_ok(sorted(m.node for m in others)))
        if older is None:
            for other in others:
                self._push(other, rp.encode_joined(hello.node))
        log.debug("relay: %s joined mesh %s from %s", hello.node, hello.mesh, _peer(connection))
        return member

    async def _refuse(self, connection: ServerConnection, counter: str, reason: str) -> None:
        self.counters[counter] += 1
        await connection.close(rp.CLOSE_POLICY, reason)

    async def _forward_from(self, member: _Member) -> None:
        connection = member.connection
        async for message in connection:
            if not member.bucket.take(time.monotonic()):
                self.counters["rate_limited"] += 1
                log.info("relay: %s of mesh %s exceeded %g msg/s; closing", member.node, member.mesh,
                         self.rate)
                await connection.close(rp.CLOSE_POLICY, rp.REASON_RATE_LIMIT)
                return
            if isinstance(message, str):
                self.counters["unexpected_text"] += 1
                continue
            try:
                destination, datagram = rp.decode_data(message)
            except rp.ProtocolError:
                self.counters["malformed"] += 1
                continue
            self._deliver(member, destination, datagram)

    def _deliver(self, source: _Member, destination: str, datagram: bytes) -> None:
        mesh = self._meshes.get(source.mesh, {})
        if mesh.get(source.node) is not source:
            return  # replaced while this message was in flight
        message = rp.encode_data(source.node, datagram)
        if destination:
            target = mesh.get(destination)
            if target is None:
                self.counters["unknown_destination"] += 1
                return
            targets = [target]
        else:
            targets = [m for m in mesh.values() if m is not source]
        for target in targets:
            if self._push(target, message):
                self.forwarded += 1

    def _push(self, target: _Member, message: bytes | str) -> bool:
        """Queue ``message`` to ``target`` without waiting; False (counted) when it is
        gone or too far behind."""
        connection = target.connection
        if connection.state is not State.OPEN:
            self.counters["closed_destination"] += 1
            return False
        if connection.transport.get_write_buffer_size() > self.max_buffer:
            self.counters["slow_destination"] += 1
            return False
        try:
            broadcast([connection], message, raise_exceptions=True)
        except Exception:
            self.counters["send_failed"] += 1
            return False
        return True

    def _leave(self, member: _Member) -> None:
        mesh = self._meshes.get(member.mesh)
        if not mesh or mesh.get(member.node) is not member:
            return  # already replaced by a newer connection of the same node
        del mesh[member.node]
        if not mesh:
            del self._meshes[member.mesh]
        for other in mesh.values():
            self._push(other, rp.encode_left(member.node))
        log.debug("relay: %s left mesh %s", member.node, member.mesh)


def _peer(connection: ServerConnection) -> str:
    try:
        host, port = connection.remote_address[:2]
    except (TypeError, ValueError):
        return "?"
    return f"{host}:{port}"
