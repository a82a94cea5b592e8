"""Wraps a transport and drops a share of what it sends (chaos testing)."""

from __future__ import annotations

import random

from ..address import Address
from ..transport import Receiver, Transport


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


class CuttableTransport(Transport):
    """Wraps a transport whose link can be cut and restored, both ways (failover tests
    and benchmarks on real sockets: the socket stays open, nothing gets through)."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.is_cut = False
        self.dropped = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def address(self) -> Address:  # type: ignore[override]
        return self.inner.address

    @property
    def error_count(self) -> int:
        return self.inner.error_count

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

    def handles(self, address: Address) -> bool:
        return self.inner.handles(address)

    def endpoints(self) -> list[Address]:
        return self.inner.endpoints()

    def on_discovered(self, callback) -> None:
        self.inner.on_discovered(callback)

    async def close(self) -> None:
        await self.inner.close()
