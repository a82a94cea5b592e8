"""Transports: how datagrams leave and arrive. One small interface.

Each transport lives in its own module under ``transports/`` and is imported
only when a member is configured to use it (an agent on UDP alone never
loads ``websockets``, ``zeroconf`` or ``bleak``):

* ``transports.udp``: asyncio UDP, optional LAN broadcast (``udp:HOST:PORT``);
* ``transports.memory``: many nodes in one process, one in-memory network per
  kind of path, with loss, delay and cuts per link (tests, simulations);
* ``transports.websocket``: WebSocket peers, listening and dialling
  (``ws:HOST:PORT``, ``wss:HOST:PORT``);
* ``transports.relay``: frames forwarded by a relay server by node id
  (``relay:NODE@HOST:PORT``);
* ``transports.ble``: Bluetooth LE, a GATT service (``ble:MAC:0``).

A transport never interprets bytes: it hands every datagram to the receiver
callback, which must not raise, with the address it came from, an address
``send`` accepts to answer. Addresses name their transport
(:class:`~flowmesh_edge.mesh.address.Address`); a transport refuses (counts
as an error) a send to an address it does not handle. :class:`Transports`
puts several behind the one interface the node uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from .address import Address

#: ``receiver(datagram, source)``: called for every datagram; must not raise.
Receiver = Callable[[bytes, Address], None]
#: ``discovered(address)``: the transport found where a member may be (a relay's
#: peer list, a BLE scan); the node sends it a discovery.
Discovered = Callable[[Address], None]


class Transport(ABC):
    #: The transport's name, as its addresses carry it (``udp``).
    name: str
    #: The address peers reach this transport at (the real one after ``start``).
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

    def handles(self, address: Address) -> bool:
        """Whether ``send`` can take this address."""
        return address.transport == self.name

    def endpoints(self) -> list[Address]:
        """Where peers can reach this member through this transport (advertised in gossip)."""
        return [self.address]

    def on_discovered(self, callback: Discovered) -> None:
        """Tell ``callback`` of members this transport finds by itself; most find none."""
        return None

    @property
    def error_count(self) -> int:
        """Sends that failed and datagrams refused, as counted by the transport."""
        errors = getattr(self, "errors", None)
        return errors[0] if errors else 0


class Transports(Transport):
    """Several transports as one: a send goes to the one that handles the address,
    a broadcast to every one that can, and the first is the primary (its address
    is the member's address)."""

    name = "multi"

    def __init__(self, transports: Iterable[Transport]):
        self.members = list(transports)
        if not self.members:
            raise ValueError("a member needs at least one transport")
        names = [t.name for t in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"one transport per name, got {names}")
        self.unroutable = 0  #: sends to an address no transport handles

    @property
    def address(self) -> Address:  # type: ignore[override]
        return self.members[0].address

    def get(self, name: str) -> Transport | None:
        return next((t for t in self.members if t.name == name), None)

    async def start(self, receiver: Receiver) -> None:
        started: list[Transport] = []
        try:
            for transport in self.members:
                await transport.start(receiver)
                started.append(transport)
        except BaseException:
            for transport in started:
                await transport.close()
            raise

    def send(self, data: bytes, address: Address) -> None:
        for transport in self.members:
            if transport.handles(address):
                transport.send(data, address)
                return
        self.unroutable += 1

    def broadcast(self, data: bytes) -> bool:
        sent = False
        for transport in self.members:
            sent = transport.broadcast(data) or sent
        return sent

    def handles(self, address: Address) -> bool:
        return any(t.handles(address) for t in self.members)

    def endpoints(self) -> list[Address]:
        return [a for t in self.members for a in t.endpoints()]

    def on_discovered(self, callback: Discovered) -> None:
        for transport in self.members:
            transport.on_discovered(callback)

    @property
    def error_count(self) -> int:
        return self.unroutable + sum(t.error_count for t in self.members)

    async def close(self) -> None:
        for transport in self.members:
            await transport.close()


# kept importable from here: callers before transports/ existed
from .transports.lossy import LossyTransport  # noqa: E402
from .transports.memory import InMemoryNetwork, InMemoryTransport, LinkConditions  # noqa: E402
from .transports.udp import UdpTransport  # noqa: E402

__all__ = ["Discovered", "InMemoryNetwork", "InMemoryTransport", "LinkConditions", "LossyTransport",
           "Receiver", "Transport", "Transports", "UdpTransport"]
