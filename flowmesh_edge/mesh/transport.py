"""Transports: how datagrams leave and arrive. One small interface.

* :class:`UdpTransport`: asyncio UDP, optional LAN broadcast.
* :class:`InMemoryNetwork`: many nodes in one process, with loss, delay and
  partitions injected per link from a seeded random generator, so many-node
  tests are fast and reproducible (run them on a fast-forwarding loop clock).

A transport never interprets bytes: it hands every datagram to the receiver
callback, which must not raise. Addresses name their transport
(:class:`~flowmesh_edge.mesh.address.Address`): a transport reports where a
datagram came from as one of its own addresses, and refuses (counts as an
error) a send to another transport's address.
"""

from __future__ import annotations

import asyncio
import random
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from .address import UDP, Address

Receiver = Callable[[bytes, Address], None]


class Transport(ABC):
    #: The transport's name, as addresses carry it (``udp``).
    name: str
    #: The address peers reach this transport at.
    address: Address

    @abstractmethod
    async def start(self, receiver: Receiver) -> None: ...

    @abstractmethod
    def send(self, data: bytes, address: Address) -> None:
        """Send one datagram; never blocks, never raises for network errors."""

    def broadcast(self, data: bytes) -> bool:
        """Send to every node on the local segment; False when unsupported."""
        return False

    @abstractmethod
    async def close(self) -> None: ...


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver, errors: list[int]):
        self.receiver = receiver
        self.errors = errors

    def datagram_received(self, data: bytes, addr) -> None:
        self.receiver(data, Address(UDP, addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.
        self.errors[0] += 1


class UdpTransport(Transport):
    """UDP on one socket. Port 0 binds a free port: ``address`` then has the real one."""

    name = UDP

    def __init__(self, bind: str, port: int, broadcast_address: str | None = None):
        self.bind = bind
        self.address = Address(UDP, bind, port)
        self.broadcast_address = broadcast_address
        self.errors = [0]
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, receiver: Receiver) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.broadcast_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        try:
            sock.bind((self.address.host, self.address.port))
        except OSError:
            sock.close()
            raise
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(receiver, self.errors), sock=sock)
        self.address = Address(UDP, self.bind, sock.getsockname()[1])

    def send(self, data: bytes, address: Address) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if address.transport != UDP:
            self.errors[0] += 1
            return
        try:
            self._transport.sendto(data, (address.host, address.port))
        except OSError:
            self.errors[0] += 1

    def broadcast(self, data: bytes) -> bool:
        if not self.broadcast_address:
            return False
        self.send(data, Address(UDP, self.broadcast_address, self.address.port))
        return True

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


@dataclass
class LinkConditions:
    loss: float = 0.0       #: probability a datagram is dropped
    delay_s: float = 0.0005  #: one-way delay
    jitter_s: float = 0.0   #: uniform extra delay, 0..jitter


class InMemoryNetwork:
    """A segment of in-memory transports with injectable link conditions.

    ``broadcast=False`` makes a segment without broadcast, as UDP bound to one
    address is: members then find each other through their bootstrap peers only.
    """

    def __init__(self, seed: int = 0, conditions: LinkConditions | None = None, broadcast: bool = True):
        self.rng = random.Random(seed)
        self.broadcast = broadcast
        self.default = conditions or LinkConditions()
        self.links: dict[tuple[Address, Address], LinkConditions] = {}
        self.blocked: set[tuple[Address, Address]] = set()
        self.nodes: dict[Address, InMemoryTransport] = {}
        self.delivered = 0
        self.dropped = 0
        self._next_port = 10000

    def transport(self, host: str = "mem") -> InMemoryTransport:
        self._next_port += 1
        return InMemoryTransport(self, Address(InMemoryTransport.name, host, self._next_port))

    def block(self, a: Address, b: Address) -> None:
        """Cut the link between two addresses, both ways."""
        self.blocked |= {(a, b), (b, a)}

    def unblock(self, a: Address, b: Address) -> None:
        self.blocked -= {(a, b), (b, a)}

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        target = self.nodes.get(dst)
        if target is None or (src, dst) in self.blocked:
            self.dropped += 1
            return
        cond = self.links.get((src, dst), self.default)
        if cond.loss and self.rng.random() < cond.loss:
            self.dropped += 1
            return
        delay = cond.delay_s + (self.rng.random() * cond.jitter_s if cond.jitter_s else 0.0)
        asyncio.get_running_loop().call_later(delay, target._receive, data, src)
        self.delivered += 1


class InMemoryTransport(Transport):
    name = "mem"

    def __init__(self, network: InMemoryNetwork, address: Address):
        self.network = network
        self.address = address
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.network.nodes[self.address] = self

    def _receive(self, data: bytes, src: Address) -> None:
        if self._receiver is not None:
            self._receiver(data, src)

    def send(self, data: bytes, address: Address) -> None:
        if self._receiver is not None:
            self.network._deliver(data, self.address, address)

    def broadcast(self, data: bytes) -> bool:
        if self._receiver is None or not self.network.broadcast:
            return False
        for address in list(self.network.nodes):
            if address != self.address:
                self.network._deliver(data, self.address, address)
        return True

    async def close(self) -> None:
        self._receiver = None
        self.network.nodes.pop(self.address, None)


class LossyTransport(Transport):
    """Wraps a transport and drops a share of what it sends (chaos testing).

    Wrapping every member's transport with ``loss=0.1`` injects 10% loss on
    every link, in the direction each datagram travels.
    """

    def __init__(self, inner: Transport, loss: float, seed: int | None = None):
        self.inner = inner
        self.loss = loss
        self.rng = random.Random(seed)
        self.dropped = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def address(self) -> Address:  # type: ignore[override]
        return self.inner.address

    @property
    def errors(self) -> list[int]:
        return getattr(self.inner, "errors", [0])

    async def start(self, receiver: Receiver) -> None:
        await self.inner.start(receiver)

    def send(self, data: bytes, address: Address) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.inner.send(data, address)

    def broadcast(self, data: bytes) -> bool:
        return self.inner.broadcast(data)

    async def close(self) -> None:
        await self.inner.close()
