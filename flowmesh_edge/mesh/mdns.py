"""Finding members on the local network with mDNS / DNS-SD (python-zeroconf, asyncio API).

Each member registers one ``_flowmesh._udp.local.`` service and browses for
the others. The service says who it is and where it listens, in TXT strings
(each at most 255 bytes, RFC 6763 section 6.1)::

    id=<node id>  mesh=<mesh id>  v=1  ep0=udp::7946  ep1=ws:192.0.2.7:8765 ...

``mesh`` is :func:`~flowmesh_edge.mesh.security.mesh_id_of` the mesh key: it
groups members without saying anything about the key, so members of other
meshes on the same LAN are told apart (and ignored) before a datagram is
sent. Endpoints are :class:`~flowmesh_edge.mesh.address.Address` text forms;
one bound to every interface (``udp:0.0.0.0:7946``) is advertised as is and
the finder substitutes the service's A/AAAA addresses for its host. The SRV
port is the first UDP endpoint's, for tools such as ``avahi-browse``.

The instance name is the node id when it fits one DNS label (63 bytes)
and holds no dot; otherwise its start with a hash of the whole id. Names
are only names: the node id a finder reports is always the one in TXT.
Two meshes on one LAN may both hold a ``sensor-1``: zeroconf's probing then
renames the second instance (``allow_name_change``), which is harmless.

What is malformed (no id, unknown version, an address that does not parse,
no endpoint) or of another mesh is ignored and counted in ``dropped``; no
service on the network can make this module raise. This module imports
zeroconf at its top: nothing imports it unless mDNS is configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import ifaddr
from zeroconf import BadTypeInNameException, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .address import UDP, Address

log = logging.getLogger("flowmesh_edge.mesh")

SERVICE_TYPE = "_flowmesh._udp.local."
#: The TXT layout's version: a finder ignores services of a version it does not know.
TXT_VERSION = "1"
#: Longest DNS label (RFC 1035 section 2.3.4).
MAX_LABEL_BYTES = 63
#: Longest TXT string, ``key=value`` included (RFC 6763 section 6.1).
MAX_TXT_BYTES = 255
#: Endpoints advertised at most: keeps the TXT record (and the mDNS packet) small.
MAX_ENDPOINTS = 16
#: Seconds a finder waits for a service's SRV/TXT/A records after seeing its name.
RESOLVE_TIMEOUT_S = 3.0

#: ``found(node_id, endpoints)``: a member of our mesh and where it says it listens.
Found = Callable[[str, list[Address]], None]


def instance_label(node_id: str) -> str:
    """The service instance name for ``node_id``: the id itself when it is one DNS
    label, else as much of it as fits, ``-``, and 12 hex digits of its hash."""
    raw = node_id.encode("utf-8")
    if len(raw) <= MAX_LABEL_BYTES and "." not in node_id and node_id.isprintable() and node_id:
        return node_id
    digest = hashlib.sha256(raw).hexdigest()[:12]
    keep = MAX_LABEL_BYTES - len(digest) - 1
    head = node_id.replace(".", "-").encode("utf-8")[:keep].decode("utf-8", "ignore")
    head = "".join(c if c.isprintable() else "-" for c in head)
    return f"{head}-{digest}"


def txt_properties(node_id: str, mesh_id: str, endpoints: Sequence[Address]) -> dict[str, str]:
    """The TXT strings of our service. Endpoints that would not fit one TXT string
    (or beyond MAX_ENDPOINTS) are left out: peers learn them through gossip."""
    properties = {"id": node_id, "mesh": mesh_id, "v": TXT_VERSION}
    if len(f"id={node_id}".encode()) > MAX_TXT_BYTES:
        raise ValueError(f"node id of {len(node_id.encode())} bytes does not fit a TXT string")
    index = 0
    for endpoint in endpoints:
        if index == MAX_ENDPOINTS:
            break
        key, text = f"ep{index}", str(endpoint)
        if len(f"{key}={text}".encode()) <= MAX_TXT_BYTES:
            properties[key] = text
            index += 1
    return properties


def parse_txt(properties: dict[bytes, bytes | None]) -> tuple[dict[str, str], str | None]:
    """TXT bytes -> strings; ``(properties, None)`` or ``({}, reason)``."""
    decoded: dict[str, str] = {}
    try:
        for key, value in properties.items():
            decoded[key.decode("utf-8")] = value.decode("utf-8") if value is not None else ""
    except (UnicodeDecodeError, AttributeError):
        return {}, "bad_txt"
    return decoded, None


def endpoints_of(properties: dict[str, str], service_addresses: Sequence[str],
                 dropped: Counter[str]) -> list[Address]:
    """The endpoints a service advertises (``ep0``, ``ep1``, ... in order), with the
    service's addresses substituted for a wildcard host. Bad ones are counted."""
    found: list[Address] = []
    for index in range(MAX_ENDPOINTS):
        text = properties.get(f"ep{index}")
        if text is None:
            break
        try:
            address = Address.parse(text)
        except ValueError:
            dropped["bad_address"] += 1
            continue
        if not address.transport:
            dropped["bad_address"] += 1
            continue
        if address.is_wildcard:
            found.extend(address.with_host(host) for host in service_addresses)
        else:
            found.append(address)
    return list(dict.fromkeys(found))


def advertised_hosts(interfaces: Sequence[str] | None, ip_version: IPVersion | None) -> list[str]:
    """The IP addresses our service's A/AAAA records carry: the interfaces given,
    else every address of the host that a LAN peer could use (not loopback, not
    IPv6 link-local, which needs a scope the records cannot carry)."""
    v4 = ip_version in (None, IPVersion.V4Only, IPVersion.All)
    v6 = ip_version in (IPVersion.V6Only, IPVersion.All)
    if interfaces:
        hosts = []
        for interface in interfaces:
            try:
                ip = ipaddress.ip_address(interface)
            except ValueError:
                continue  # an interface index or name: its addresses are not known here
            hosts.append(str(ip))
        return hosts
    hosts = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            raw = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            ip = ipaddress.ip_address(raw)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast:
                continue
            if (ip.version == 4 and v4) or (ip.version == 6 and v6):
                hosts.append(str(ip))
    return list(dict.fromkeys(hosts))


class MdnsDiscovery:
    """Advertise this member and find the others of its mesh on the local network.

    ``endpoints()`` is asked at ``start`` and ``refresh``; ``found(node_id,
    endpoints)`` is called in the event loop for every member of the same mesh
    (never ourselves) each time its service is added or updated.
    ``interfaces``/``ip_version`` are zeroconf's (None: every interface, IPv4,
    zeroconf's default). ``dropped`` counts ignored services by reason.
    """

    def __init__(self, node_id: str, mesh_id: str, endpoints: Callable[[], list[Address]],
                 found: Found, *, interfaces: Sequence[str] | None = None,
                 ip_version: IPVersion | None = None):
        if not node_id:
            raise ValueError("a node id is needed")
        self.node_id = node_id
        self.mesh_id = mesh_id
        self._endpoints = endpoints
        self._found = found
        self.interfaces = list(interfaces) if interfaces else None
        self.ip_version = ip_version
        self.dropped: Counter[str] = Counter()
        #: services of our mesh reported to ``found``
        self.reported = 0
        self.name = f"{instance_label(node_id)}.{SERVICE_TYPE}"
        # a host name of our own: two members on one host must not share A records
        host = hashlib.sha256(f"{mesh_id}\x00{node_id}".encode()).hexdigest()[:16]
        self._server = f"flowmesh-{host}.local."
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._resolving: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self.interfaces:
            self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=self.ip_version)
        else:
            self._zc = AsyncZeroconf(ip_version=self.ip_version)
        try:
            await self._zc.zeroconf.async_wait_for_start()
            self._info = self._service_info()
            # a name already taken (another mesh's member of the same id) gets a suffix
            await (await self._zc.async_register_service(self._info, allow_name_change=True))
            self.name = self._info.name
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                                handlers=[self._on_change])
        except BaseException:
            await self.close()
            raise

    async def refresh(self) -> None:
        """Advertise our endpoints again when they changed (a transport started,
        an address moved); a no-op when they did not."""
        if self._zc is None or self._info is None:
            return
        info = self._service_info(name=self._info.name)
        if info.properties == self._info.properties and info.port == self._info.port and \
                sorted(info.parsed_addresses()) == sorted(self._info.parsed_addresses()):
            return
        self._info = info
        await (await self._zc.async_update_service(info))

    async def close(self) -> None:
        """Unregister (peers see the service go at once) and stop browsing."""
        for task in list(self._resolving):
            task.cancel()
        if self._resolving:
            await asyncio.gather(*self._resolving, return_exceptions=True)
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._info is not None:
            try:
                await (await zc.async_unregister_service(self._info))
            except Exception as exc:  # the socket may be gone already; close anyway
                log.debug("mdns: unregister failed: %s", exc)
            self._info = None
        await zc.async_close()

    def _service_info(self, name: str | None = None) -> AsyncServiceInfo:
        endpoints = list(self._endpoints())
        port = next((e.port for e in endpoints if e.transport == UDP), 0)
        return AsyncServiceInfo(
            SERVICE_TYPE, name or self.name, port=port,
            properties=txt_properties(self.node_id, self.mesh_id, endpoints),
            server=self._server,
            parsed_addresses=advertised_hosts(self.interfaces, self.ip_version),
        )

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        if self._info is not None and name.lower() == self._info.name.lower():
            return  # ourselves
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name),
                                                      name=f"mdns-resolve {name}")
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
        except BadTypeInNameException:
            self.dropped["bad_name"] += 1
            return
        try:
            answered = await info.async_request(zeroconf, RESOLVE_TIMEOUT_S * 1000)
        except Exception as exc:  # the zeroconf instance closing under us
            log.debug("mdns: resolving %s failed: %s", name, exc)
            return
        if not answered:
            self.dropped["unresolved"] += 1
            return
        self.consider(info.properties, info.parsed_addresses())

    def consider(self, raw_properties: dict[bytes, bytes | None], addresses: Sequence[str]) -> None:
        """Decide about one resolved service (its TXT and A/AAAA addresses): report it
        to ``found`` or count why not. Never raises."""
        properties, problem = parse_txt(raw_properties)
        if problem:
            self.dropped[problem] += 1
            return
        node_id = properties.get("id")
        if not node_id:
            self.dropped["missing_id"] += 1
            return
        if properties.get("v") != TXT_VERSION:
            self.dropped["unknown_version"] += 1
            return
        if properties.get("mesh") != self.mesh_id:
            self.dropped["other_mesh"] += 1
            return
        if node_id == self.node_id:
            return  # ourselves, under a renamed instance
        endpoints = endpoints_of(properties, addresses, self.dropped)
        if not endpoints:
            self.dropped["no_endpoints"] += 1
            return
        self.reported += 1
        try:
            self._found(node_id, endpoints)
        except Exception:
            self.dropped["found_raised"] += 1
            log.exception("mdns: the found callback raised for %s", node_id)
