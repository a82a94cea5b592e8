"""Where a member can be reached: a transport name, a host and a port.

An address names its transport (``udp`` today; WebSocket, relay and BLE
next), so that a peer can be known at several addresses, one per path, and
each transport sends only to its own. The text form is
``transport:host:port``, with an IPv6 host in brackets::

    >>> Address.parse("udp:127.0.0.1:9999")
    Address(transport='udp', host='127.0.0.1', port=9999)
    >>> str(Address("udp", "::1", 9999))
    'udp:[::1]:9999'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

UDP = "udp"
#: Transport names: short, lowercase, so that the wire form stays compact.
_TRANSPORT_NAME = re.compile(r"[a-z][a-z0-9-]{0,15}")
#: Hosts that mean "every interface": never advertised as such to peers.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
#: Transports whose addresses are IP hosts: an endpoint advertised with no host
#: (bound to every interface) takes the host its frames come from.
IP_TRANSPORTS = frozenset({"udp", "ws", "wss", "mem"})


@dataclass(frozen=True, slots=True)
class Address:
    transport: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.transport and not _TRANSPORT_NAME.fullmatch(self.transport):
            raise ValueError(f"transport name {self.transport!r}: want 1-16 of a-z, 0-9, '-'")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not 0..65535")

    @classmethod
    def udp(cls, host: str, port: int) -> Address:
        return cls(UDP, host, port)

    @classmethod
    def parse(cls, text: str) -> Address:
        """``transport:host:port`` (IPv6 hosts in brackets) -> Address."""
        transport, sep, rest = text.partition(":")
        host, colon, port = rest.rpartition(":")
        if not sep or not colon or not port.isdigit():
            raise ValueError(f"{text!r} is not an address of the form transport:host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(transport, host, int(port))

    @classmethod
    def of(cls, value: Address | tuple[str, int] | str) -> Address:
        """An Address from an Address, a ``(host, port)`` UDP pair or the text form."""
        if isinstance(value, Address):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        host, port = value
        return cls(UDP, str(host), int(port))

    @property
    def is_wildcard(self) -> bool:
        """Bound to every interface: peers must take the host from where datagrams come from."""
        return self.host in WILDCARD_HOSTS

    def with_host(self, host: str) -> Address:
        return replace(self, host=host)

    def with_source_host(self, source: Address) -> Address:
        """Advertised with no host (bound to every interface): the host its frame came
        from, when both are IP paths; otherwise as advertised."""
        if self.host or self.transport not in IP_TRANSPORTS or source.transport not in IP_TRANSPORTS:
            return self
        return self.with_host(source.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


#: The address of nowhere: an update that says nothing about where a member is.
NOWHERE = Address("", "", 0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine only: what a
    listener may bind without asking for credentials. A host name other than
    localhost is not: it may resolve to anything."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
