"""Finding members that accept pairing: LAN broadcast, mDNS and Bluetooth LE.

* **LAN broadcast**: a DISCOVER datagram ("who accepts pairing?") to the
  limited broadcast address on the pairing port; every accepting member
  answers with an OFFER (its node id, its mesh's name, its pairing endpoints),
  from the address to pair with. Tests send it to a loopback address instead.
* **mDNS**: an accepting member registers ``_flowmesh-pair._udp.local.``
  with TXT ``id=<node> mesh=<mesh name> v=1 ep0=udp::9998 ...`` (the layout
  of the mesh's own service, mesh/mdns.py); the finder browses for it.
* **BLE**: an accepting member serves the FlowMesh GATT service (its pairing
  transport is a BleTransport); the finder scans for it and sends a DISCOVER
  over the link to each member found, which answers with an OFFER.

zeroconf and the BLE libraries are imported only when asked for. What the
network says is untrusted: a malformed answer is ignored (counted in
``dropped``); an OFFER is only a name to show, and a name that is not
printable (a terminal control sequence) makes it malformed. At most
MAX_MEMBERS are listed. The code both users compare is what authenticates
the member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from flowmesh.limits import node_id_problem

from ..mesh.address import Address
from ..mesh.transports.udp import UdpTransport
from . import PAIRING_PORT
from .channel import Channel
from .protocol import SESSION_BYTES, Kind, Offer, Refused, decode, discover_message, printable

log = logging.getLogger("flowmesh_edge.pairing")

SERVICE_TYPE = "_flowmesh-pair._udp.local."
BROADCAST = "255.255.255.255"
#: Seconds the listing waits for answers; DISCOVER is sent again every RESEND_S meanwhile.
FIND_S = 3.0
RESEND_S = 1.0
#: Longest mesh name carried in TXT (a TXT string is at most 255 bytes).
_TXT_NAME_BYTES = 200
#: Most members listed: whoever hears the broadcast may answer, many times over.
MAX_MEMBERS = 32


@dataclass(frozen=True)
class Member:
    """A member that accepts pairing: who, which mesh, the address to pair with, found how."""

    node_id: str
    mesh_name: str
    address: Address
    via: str

    def describe(self) -> str:
        return f"{self.node_id} (mesh {self.mesh_name}) at {self.address}, found over {self.via}"


class Finder:
    """Collects the members found; several ways of finding run side by side."""

    def __init__(self) -> None:
        self.members: dict[tuple[str, Address], Member] = {}
        self.dropped: Counter[str] = Counter()
        self.query = os.urandom(SESSION_BYTES)

    def add(self, member: Member) -> None:
        """One entry per member and address, saying every way it was found (``udp, mdns``)."""
        key = (member.node_id, member.address)
        known = self.members.get(key)
        if known is None:
            if len(self.members) >= MAX_MEMBERS:
                self.dropped["too_many"] += 1
                return
            self.members[key] = member
        elif member.via not in known.via.split(", "):
            self.members[key] = Member(known.node_id, known.mesh_name, known.address,
                                       f"{known.via}, {member.via}")

    def on_datagram(self, via: str):
        def handle(data: bytes, source: Address) -> None:
            try:
                message = decode(data)
                if message.kind is not Kind.OFFER or message.session != self.query:
                    self.dropped["not_an_offer"] += 1
                    return
                offer = Offer.decode(message)
            except Refused as refused:
                self.dropped[refused.reason] += 1
                return
            self.add(Member(offer.node_id, offer.mesh_name, source, via))
        return handle

    def found(self) -> list[Member]:
        return sorted(self.members.values(), key=lambda m: (m.node_id, str(m.address)))


async def find_members(*, port: int = PAIRING_PORT, broadcast: bool = True,
                       broadcast_address: str = BROADCAST, targets: Sequence[Address] = (),
                       bind: str = "0.0.0.0", mdns: bool = False,
                       mdns_interfaces: list[str] | None = None, ble: bool = False,
                       ble_adapter: str = "hci0", wait_s: float = FIND_S) -> list[Member]:
    """The members that answered within ``wait_s``: over UDP (a DISCOVER broadcast on
    ``port``, and to each of ``targets``), mDNS and BLE as asked."""
    finder = Finder()
    udp_targets = [*([Address.udp(broadcast_address, port)] if broadcast else []), *targets]
    tasks = []
    if udp_targets:
        tasks.append(_by_udp(finder, udp_targets, bind, broadcast_address if broadcast else None, wait_s))
    if mdns:
        tasks.append(_by_mdns(finder, mdns_interfaces, wait_s))
    if ble:
        tasks.append(_by_ble(finder, ble_adapter, wait_s))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            log.warning("pairing: looking for members failed: %s", result)
    return finder.found()


async def _by_udp(finder: Finder, targets: list[Address], bind: str, broadcast: str | None,
                  wait_s: float) -> None:
    channel = Channel(UdpTransport(bind, 0, broadcast))  # a broadcast address sets SO_BROADCAST
    channel.handler = finder.on_datagram("broadcast" if broadcast else "udp")
    await channel.start()
    try:
        await _ask_repeatedly(channel, targets, finder, wait_s)
    finally:
        await channel.close()


async def _ask_repeatedly(channel: Channel, targets: list[Address], finder: Finder, wait_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    question = discover_message(finder.query)
    while loop.time() < deadline:
        for target in targets:
            channel.send(question, target)
        await asyncio.sleep(min(RESEND_S, max(0.0, deadline - loop.time())))


async def _by_ble(finder: Finder, adapter: str, wait_s: float) -> None:
    from ..mesh.transports.ble import BleTransport

    transport = BleTransport(adapter, serve=False, scan=True, scan_window_s=wait_s, scan_interval_s=wait_s)
    channel = Channel(transport)
    channel.handler = finder.on_datagram("ble")
    question = discover_message(finder.query)
    transport.on_discovered(lambda address: channel.send(question, address))
    await channel.start()
    try:
        await asyncio.sleep(wait_s)
    finally:
        await channel.close()


async def _by_mdns(finder: Finder, interfaces: list[str] | None, wait_s: float) -> None:
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    from ..mesh.mdns import endpoints_of, parse_txt

    zc = AsyncZeroconf(interfaces=interfaces) if interfaces else AsyncZeroconf()
    pending: set[asyncio.Task] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, wait_s * 1000):
            finder.dropped["unresolved"] += 1
            return
        properties, problem = parse_txt(info.properties)
        if problem or properties.get("v") != "1" or not properties.get("id"):
            finder.dropped[problem or "bad_txt"] += 1
            return
        if node_id_problem(properties["id"]) or not printable(properties.get("mesh") or "?"):
            finder.dropped["not_printable"] += 1  # it is shown: no terminal control sequences
            return
        endpoints = endpoints_of(properties, info.parsed_addresses(), finder.dropped)
        usable = [e for e in endpoints if e.transport in ("udp", "ws", "wss")]
        if not usable:
            finder.dropped["no_endpoints"] += 1
            return
        finder.add(Member(properties["id"], properties.get("mesh", ""), usable[0], "mdns"))

    def on_change(zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.get_running_loop().create_task(resolve(name))
            pending.add(task)
            task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.sleep(wait_s)
    finally:
        await browser.async_cancel()
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await zc.async_close()


class MdnsAdvertiser:
    """An accepting member's ``_flowmesh-pair._udp.local.`` service, while it accepts."""

    def __init__(self, node_id: str, mesh_name: str, endpoints: list[Address],
                 interfaces: list[str] | None = None):
        self.node_id, self.mesh_name, self.endpoints = node_id, mesh_name, endpoints
        self.interfaces = interfaces
        self._zc = None
        self._info = None

    async def start(self) -> None:
        import hashlib

        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        from ..mesh.mdns import advertised_hosts, instance_label, txt_properties

        name = self.mesh_name.encode()[:_TXT_NAME_BYTES].decode("utf-8", "ignore")
        host = hashlib.sha256(f"pair\x00{self.node_id}".encode()).hexdigest()[:16]
        port = next((e.port for e in self.endpoints if e.transport == "udp"), 0)
        self._zc = AsyncZeroconf(interfaces=self.interfaces) if self.interfaces else AsyncZeroconf()
        self._info = AsyncServiceInfo(
            SERVICE_TYPE, f"{instance_label(self.node_id)}.{SERVICE_TYPE}", port=port,
            properties=txt_properties(self.node_id, name, self.endpoints),
            server=f"flowmesh-pair-{host}.local.", parsed_addresses=advertised_hosts(self.interfaces, None))
        try:
            await (await self._zc.async_register_service(self._info, allow_name_change=True))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._info is not None:
            with contextlib.suppress(Exception):
                await (await zc.async_unregister_service(self._info))
        await zc.async_close()
