"""Chaos wrappers around a transport: loss (a share of what it sends dropped) and
cuts (nothing through, both ways, while the socket stays open)."""

from __future__ import annotations

import random

from ..address import Address
from ..transport import Discovered, Receiver, Transport


class WrappedTransport(Transport):
    """A transport in front of another: everything passes through unless a subclass
    says otherwise."""

    def __init__(self, inner: Transport):
        self.inner = inner
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

    @property
    def error_count(self) -> int:
        return self.inner.error_count

    async def start(self, receiver: Receiver) -> None:
        await self.inner.start(receiver)

    def send(self, data: bytes, address: Address) -> None:
        self.inner.send(data, address)

    def broadcast(self, data: bytes) -> bool:
        return self.inner.broadcast(data)

    def handles(self, address: Address) -> bool:
        return self.inner.handles(address)

    def endpoints(self) -> list[Address]:
        return self.inner.endpoints()

    def on_discovered(self, callback: Discovered) -> None:
        self.inner.on_discovered(callback)

    async def close(self) -> None:
        await self.inner.close()


class LossyTransport(WrappedTransport):
    """Drops a share of what the wrapped transport sends (chaos testing).

    Wrapping every member's transport with ``loss=0.1`` injects 10% loss on
    every link, in the direction each datagram travels.
    """

    def __init__(self, inner: Transport, loss: float, seed: int | None = None):
        super().__init__(inner)
        self.loss = loss
        self.rng = random.Random(seed)

    def send(self, data: bytes, address: Address) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.inner.send(data, address)


class CuttableTransport(WrappedTransport):
    """A link that can be cut and restored, both ways (failover tests and benchmarks
    on real sockets: the socket stays open, nothing gets through)."""

    def __init__(self, inner: Transport):
        super().__init__(inner)
        self.is_cut = False

    def cut(self) -> None:
        self.is_cut = True

    def restore(self) -> None:
        self.is_cut = False

    async def start(self, receiver: Receiver) -> None:
        def receive(data: bytes, source: Address) -> None:
            if self.is_cut:
                self.dropped += 1
            else:
                receiver(data, source)
        await self.inner.start(receive)

    def send(self, data: bytes, address: Address) -> None:
        if self.is_cut:
            self.dropped += 1
            return
        self.inner.send(data, address)

    def broadcast(self, data: bytes) -> bool:
        return not self.is_cut and self.inner.broadcast(data)
