"""mDNS discovery: members find each other over real multicast on 127.0.0.1.

Several zeroconf instances bound to 127.0.0.1 in one process hear each other
(python-zeroconf's own tests rely on it). Mesh and node ids are unique per
run, so another test run on the same machine cannot be mistaken for ours.
The TXT decisions are tested on their own first, with no socket.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.mdns import (
    MAX_LABEL_BYTES,
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    MdnsDiscovery,
    endpoints_of,
    instance_label,
    txt_properties,
)
from flowmesh_edge.mesh.security import mesh_id_of

LOOPBACK = ["127.0.0.1"]
WAIT_S = 8.0


def _txt(**values: str) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in values.items()}


def _discovery(mesh: str, node: str = "me") -> tuple[MdnsDiscovery, list]:
    seen: list = []
    return MdnsDiscovery(node, mesh, list, lambda n, e: seen.append((n, e))), seen


def test_instance_names_fit_one_dns_label():
    assert instance_label("pi-kitchen") == "pi-kitchen"
    for node_id in ("x" * 64, "é" * 40, "a.b.c", "sensor\n1"):
        label = instance_label(node_id)
        assert len(label.encode()) <= MAX_LABEL_BYTES and "." not in label and label.isprintable()
    assert instance_label("x" * 64) != instance_label("x" * 65)  # the hash tells long ids apart


def test_txt_strings_stay_within_255_bytes_and_carry_the_endpoints_in_order():
    endpoints = [Address.parse("udp:0.0.0.0:7946"), Address("ws", "h" * 250, 80),
                 Address.parse("relay:n1@relay.example:8765")]
    txt = txt_properties("n1", "0123456789abcdef", endpoints)
    assert txt == {"id": "n1", "mesh": "0123456789abcdef", "v": "1", "ep0": "udp:0.0.0.0:7946",
                   "ep1": "relay:n1@relay.example:8765"}  # the over-long one left out
    assert all(len(f"{k}={v}".encode()) <= MAX_TXT_BYTES for k, v in txt.items())


def test_wildcard_hosts_take_the_services_addresses():
    dropped: Counter[str] = Counter()
    found = endpoints_of({"ep0": "udp:0.0.0.0:7946", "ep1": "ble:[AA:BB:CC:DD:EE:FF]:0",
                          "ep2": "udp::7947", "ep3": "nonsense"},
                         ["192.0.2.7", "2001:db8::7"], dropped)
    assert found == [Address("udp", "192.0.2.7", 7946), Address("udp", "2001:db8::7", 7946),
                     Address("ble", "AA:BB:CC:DD:EE:FF", 0), Address("udp", "192.0.2.7", 7947),
                     Address("udp", "2001:db8::7", 7947)]
    assert dropped == Counter(bad_address=1)


def test_malformed_or_foreign_services_are_counted_never_raised():
    mesh = mesh_id_of("k" * 16)
    discovery, seen = _discovery(mesh)
    addresses = ["192.0.2.1"]
    discovery.consider({b"mesh": mesh.encode(), b"v": b"1", b"ep0": b"udp::1"}, addresses)
    discovery.consider(_txt(id="x", mesh="f" * 16, v="1", ep0="udp::1"), addresses)
    discovery.consider(_txt(id="x", mesh=mesh, v="2", ep0="udp::1"), addresses)
    discovery.consider(_txt(id="x", mesh=mesh, v="1", ep0="garbage"), addresses)
    discovery.consider({b"id": b"\xff", b"mesh": mesh.encode()}, addresses)
    discovery.consider(_txt(id="me", mesh=mesh, v="1", ep0="udp::1"), addresses)  # ourselves
    assert seen == []
    assert discovery.dropped == Counter(missing_id=1, other_mesh=1, unknown_version=1, bad_address=1,
                                        no_endpoints=1, bad_txt=1)
    discovery.consider(_txt(id="peer", mesh=mesh, v="1", ep0="udp::1"), addresses)
    assert seen == [("peer", [Address("udp", "192.0.2.1", 1)])]


def test_a_raising_callback_is_counted():
    mesh = mesh_id_of("k" * 16)
    discovery = MdnsDiscovery("me", mesh, list, lambda n, e: 1 / 0)
    discovery.consider(_txt(id="peer", mesh=mesh, v="1", ep0="udp::1"), ["192.0.2.1"])
    assert discovery.dropped["found_raised"] == 1


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.05)


async def test_two_members_find_each_other_on_loopback_and_ignore_other_meshes():
    run = uuid.uuid4().hex[:8]
    mesh, other_mesh = mesh_id_of(f"mesh key {run} one"), mesh_id_of(f"mesh key {run} two")
    found: dict[str, list[tuple[str, list[Address]]]] = {"a": [], "b": [], "c": []}
    b_endpoints = [Address("udp", "0.0.0.0", 7002)]

    def member(name: str, mesh_id: str, endpoints) -> MdnsDiscovery:
        return MdnsDiscovery(f"{name}-{run}", mesh_id, endpoints,
                             lambda n, e: found[name].append((n, e)), interfaces=LOOPBACK)

    a = member("a", mesh, lambda: [Address("udp", "0.0.0.0", 7001), Address("ws", "192.0.2.9", 8765)])
    b = member("b", mesh, lambda: list(b_endpoints))
    c = member("c", other_mesh, lambda: [Address("udp", "0.0.0.0", 7003)])
    # a service of our mesh whose only endpoint does not parse, and one with no id
    rogue = AsyncZeroconf(interfaces=LOOPBACK)
    malformed = [
        AsyncServiceInfo(SERVICE_TYPE, f"bad-{run}.{SERVICE_TYPE}", port=1, server=f"bad-{run}.local.",
                         properties={"id": f"bad-{run}", "mesh": mesh, "v": "1", "ep0": "not an address"},
                         parsed_addresses=["127.0.0.1"]),
        AsyncServiceInfo(SERVICE_TYPE, f"anon-{run}.{SERVICE_TYPE}", port=1, server=f"anon-{run}.local.",
                         properties={"mesh": mesh, "v": "1", "ep0": "udp::1"},
                         parsed_addresses=["127.0.0.1"]),
    ]
    started = time.monotonic()
    try:
        await asyncio.gather(a.start(), b.start(), c.start())
        await asyncio.gather(*[await rogue.async_register_service(info) for info in malformed])
        await _until(lambda: found["a"] and found["b"], "a and b find each other")
        elapsed = time.monotonic() - started
        assert found["a"][0] == (f"b-{run}", [Address("udp", "127.0.0.1", 7002)])
        assert found["b"][0] == (f"a-{run}", [Address("udp", "127.0.0.1", 7001),
                                              Address("ws", "192.0.2.9", 8765)])
        # the malformed services are counted by every member of the mesh, never reported
        await _until(lambda: a.dropped["no_endpoints"] and a.dropped["missing_id"]
                     and b.dropped["no_endpoints"] and b.dropped["missing_id"], "malformed TXT counted")
        assert a.dropped["bad_address"] >= 1
        # c (another mesh) counts a and b as foreign; nobody ever reports c or the rogues
        await _until(lambda: c.dropped["other_mesh"] >= 2, "c sees the other mesh")
        reported = {n for member_found in found.values() for n, _ in member_found}
        assert reported == {f"a-{run}", f"b-{run}"}
        assert found["c"] == []
        # b's endpoints change: a hears the new ones
        b_endpoints.append(Address("ws", "192.0.2.8", 9000))
        await b.refresh()
        await _until(lambda: any(len(e) == 2 for n, e in found["a"]), "a hears b's new endpoints")
        assert found["a"][-1] == (f"b-{run}", [Address("udp", "127.0.0.1", 7002),
                                               Address("ws", "192.0.2.8", 9000)])
        # closing unregisters: a browser sees the service go (a goodbye, not a TTL expiry)
        removed: list[str] = []
        watcher = AsyncServiceBrowser(rogue.zeroconf, SERVICE_TYPE, handlers=[
            lambda zeroconf, service_type, name, state_change:
            removed.append(name) if state_change is ServiceStateChange.Removed else None])
        try:
            b_name = b.name
            await b.close()
            await _until(lambda: b_name in removed, "b's service removed on close")
        finally:
            await watcher.async_cancel()
    finally:
        await asyncio.gather(a.close(), b.close(), c.close())
        await rogue.async_close()
    assert elapsed < WAIT_S
