"""In-memory networks: many nodes in one process, in real or virtual time.

Each :class:`InMemoryNetwork` is one kind of path with its own name (its
addresses' transport), link conditions (loss, delay, jitter per link) and
cuts, from a seeded random generator, so many-node tests are fast and
reproducible. A member on several networks (``network.transport()`` of each,
given to the node together) models several paths per member: a LAN that is
cut while a slower relay path stays up, say::

    lan = InMemoryNetwork(seed=1)                      # addresses mem:...
    relay = InMemoryNetwork(seed=2, name="relay-sim", broadcast=False,
                            conditions=LinkConditions(delay_s=0.03))
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from ..address import Address
from ..transport import Receiver, Transport


@dataclass
class LinkConditions:
    loss: float = 0.0       #: probability a datagram is dropped
    delay_s: float = 0.0005  #: one-way delay
    jitter_s: float = 0.0   #: uniform extra delay, 0..jitter


class InMemoryNetwork:
    """A segment of in-memory transports with injectable link conditions.

    ``broadcast=False`` makes a segment without broadcast, as UDP bound to one
    address is: members then find each other through their bootstrap peers only.
    ``name`` is the transport name of its addresses (``mem`` by default).
    """

    def __init__(self, seed: int = 0, conditions: LinkConditions | None = None, broadcast: bool = True,
                 name: str = "mem"):
        self.rng = random.Random(seed)
        self.name = name
        self.broadcast = broadcast
        self.default = conditions or LinkConditions()
        self.links: dict[tuple[Address, Address], LinkConditions] = {}
        self.blocked: set[tuple[Address, Address]] = set()
        self.down: set[Address] = set()
        self.nodes: dict[Address, InMemoryTransport] = {}
        self.delivered = 0
        self.dropped = 0
        self._next_port = 10000

    def transport(self, host: str = "mem") -> InMemoryTransport:
        self._next_port += 1
        return InMemoryTransport(self, Address(self.name, host, self._next_port))

    def block(self, a: Address, b: Address) -> None:
        """Cut the link between two addresses, both ways."""
        self.blocked |= {(a, b), (b, a)}

    def unblock(self, a: Address, b: Address) -> None:
        self.blocked -= {(a, b), (b, a)}

    def cut(self, address: Address) -> None:
        """Take one member's interface down: nothing to or from it gets through."""
        self.down.add(address)

    def restore(self, address: Address) -> None:
        self.down.discard(address)

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        target = self.nodes.get(dst)
        if target is None or (src, dst) in self.blocked or src in self.down or dst in self.down:
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
    def __init__(self, network: InMemoryNetwork, address: Address):
        self.network = network
        self.name = network.name
        self.address = address
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.network.nodes[self.address] = self

    def _receive(self, data: bytes, src: Address) -> None:
        # a cut that happened while the datagram was in flight drops it too
        down = self.network.down
        if self._receiver is not None and src not in down and self.address not in down:
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
