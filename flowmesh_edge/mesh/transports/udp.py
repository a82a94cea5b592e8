"""UDP on one socket, with optional LAN broadcast: the LAN path (``udp:HOST:PORT``)."""

from __future__ import annotations

import asyncio
import socket

from ..address import UDP, Address
from ..transport import Receiver, Transport


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


