"""The BLE transport through BlueZ mocked on a private system bus (no hardware).

bleak (the central) and bless (the peripheral) run unchanged, speaking D-Bus to
python-dbusmock with tests/support/bluez_radio.py, which joins its adapters by
a simulated radio: one member's advertisement and GATT application appear as a
device with services on the other's adapter, and writes and notifications
cross over. Every link has the ATT MTU the fixture gives (23 by default, so a
1400-byte datagram is 175 fragments).

A test on a real adapter is opt-in: FLOWMESH_BLE_HARDWARE=1 (see the end).
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from tests.conftest import until
from tests.support.bluez import missing, mock_bluez

pytestmark = pytest.mark.timeout(60)

MAC_A, MAC_B, MAC_C = "00:11:22:33:44:0A", "00:11:22:33:44:0B", "00:11:22:33:44:0C"
KEY = b"ble-test-mesh-key-0123456789"


@pytest.fixture
async def bluez(request):
    """Mocked BlueZ with adapters hci0 (MAC_A), hci1 (MAC_B), hci2 (MAC_C). After the test,
    bleak's per-loop BlueZ manager lets go of the bus before the bus goes away."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    with mock_bluez(mtu=getattr(request, "param", 23)) as mock:
        for name, mac in (("hci0", MAC_A), ("hci1", MAC_B), ("hci2", MAC_C)):
            mock.add_adapter(name, mac, f"member-{name}")
        try:
            yield mock
        finally:
            await release_bleak()


async def release_bleak() -> None:
    from bleak.backends.bluezdbus import manager

    instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is not None and instance._bus is not None:
        instance._bus.disconnect()
        await asyncio.wait_for(instance._bus.wait_for_disconnect(), 5)
    watcher = getattr(instance, "_bus_watcher_task", None)
    if watcher is not None and not watcher.done():
        await asyncio.wait({watcher}, timeout=5)


def transport(adapter: str, **kwargs):
    from flowmesh_edge.mesh.transports.ble import BleTransport

    # scan all the time: the mock radio has no airtime to save
    return BleTransport(adapter, scan_window_s=60, scan_interval_s=60, connect_timeout_s=5, **kwargs)


async def test_a_member_finds_connects_to_and_exchanges_frames_with_a_peer(bluez):
    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.mesh.transports import ble_fragments
    from flowmesh_edge.mesh.wire import MAX_DATAGRAM

    a, b = transport("hci0"), transport("hci1")
    got_a, got_b, found = [], [], []
    a.on_discovered(found.append)
    await a.start(lambda data, src: got_a.append((data, src)))
    await b.start(lambda data, src: got_b.append((data, src)))
    try:
        assert a.address == Address("ble", MAC_A, 0) and b.address == Address("ble", MAC_B, 0)
        assert str(b.address) == f"ble:[{MAC_B}]:0" and Address.parse(str(b.address)) == b.address
        await until(lambda: b.address in found, timeout=10)

        rng = random.Random(9)
        small, big = b"ping", rng.randbytes(MAX_DATAGRAM)
        assert len(ble_fragments.split(big, 0, MAC_A, 23)) == 175
        a.send(small, b.address)   # connects on this first send
        a.send(big, b.address)
        await until(lambda: len(got_b) == 2, timeout=15)
        assert got_b == [(small, a.address), (big, a.address)]  # in order, byte-exact

        # b answers on a's own connection: notifications addressed to a
        answer = rng.randbytes(MAX_DATAGRAM - 1)
        b.send(answer, got_b[1][1])
        await until(lambda: got_a, timeout=15)
        assert got_a == [(answer, b.address)]
        assert b.stats()["centrals"] == [MAC_A] and MAC_A in b.stats()["peers"]
        assert not b.stats()["peers"][MAC_A]["linked"]  # b never connected to a: a's link carried it
        state = await asyncio.to_thread(bluez.state)
        assert state["connected"] == [f"/org/bluez/hci0/dev_{MAC_B.replace(':', '_')}"]
        assert state["applications"] == ["/org/bluez/hci0", "/org/bluez/hci1"]

        for t in (a, b):
            assert t.errors[0] == 0 and not t.send_failures, t.stats()
            assert sum(t.dropped.values()) == 0, t.stats()
    finally:
        await a.close()
        await b.close()
    assert (await asyncio.to_thread(bluez.state))["applications"] == []


async def test_a_peripheral_answers_each_of_two_centrals_on_its_own(bluez):
    """Every subscribed central receives every notification: each keeps only those
    addressed to it, so answers do not cross."""
    a, b, c = transport("hci0"), transport("hci1", scan=False), transport("hci2")
    got = {"a": [], "b": [], "c": []}
    for name, t in (("a", a), ("b", b), ("c", c)):
        await t.start(lambda data, src, name=name: got[name].append((data, src)))
    try:
        a.send(b"from a", b.address)
        c.send(b"from c", b.address)
        await until(lambda: len(got["b"]) == 2, timeout=10)
        for data, src in list(got["b"]):
            b.send(b"answer to " + data, src)
        await until(lambda: got["a"] and got["c"], timeout=10)
        await asyncio.sleep(0.2)  # anything misdelivered would arrive by now
        assert got["a"] == [(b"answer to from a", b.address)]
        assert got["c"] == [(b"answer to from c", b.address)]
        assert a.overheard >= 1 and c.overheard >= 1  # each saw the other's answer go by
        assert sorted(b.stats()["centrals"]) == [a.address.host, c.address.host]
    finally:
        for t in (a, b, c):
            await t.close()


async def test_malformed_and_incomplete_fragments_are_dropped_and_counted(bluez):
    """A raw GATT client writes garbage to a member's write characteristic; the member
    counts every piece, raises nothing, and still takes a good datagram afterwards."""
    from bleak import BleakClient, BleakScanner

    from flowmesh_edge.mesh.transports import ble_fragments as bf
    from flowmesh_edge.mesh.transports.ble import SERVICE_UUID, WRITE_UUID

    b = transport("hci1", scan=False)
    got = []
    await b.start(lambda data, src: got.append((data, src)))
    client = None
    try:
        device = await BleakScanner.find_device_by_filter(
            lambda d, adv: SERVICE_UUID in adv.service_uuids, timeout=10, bluez={"adapter": "hci2"})
        assert device is not None and device.address == MAC_B
        client = BleakClient(device, timeout=10, bluez={"adapter": "hci2"})
        await client.connect()
        good = bf.split(b"x" * 30, 7, MAC_C, 23)                 # 3 fragments
        for raw in [b"\x10",                                      # shorter than a header
                    b"\x70" + good[0][1:],                        # unknown version
                    good[1],                                      # starts in the middle
                    good[0], good[2],                             # a gap: the message is lost
                    good[0], bf.split(b"y", 8, MAC_C, 23)[0],     # a new message before the end
                    *good]:                                       # and then a whole one
            await client.write_gatt_char(WRITE_UUID, raw, response=True)
        await until(lambda: got, timeout=5)
        assert got == [(b"y", b.address.with_host(MAC_C)), (b"x" * 30, b.address.with_host(MAC_C))]
        assert dict(b.dropped) == {"malformed": 2, "out_of_order": 2, "incomplete": 2}, b.stats()
    finally:
        if client is not None:
            await client.disconnect()
        await b.close()


async def test_send_never_raises_and_counts_what_it_cannot_deliver(bluez):
    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.mesh.wire import MAX_DATAGRAM

    a = transport("hci0", serve=False, scan=False, queue_limit=2)
    a.connect_timeout_s = 0.5
    await a.start(lambda data, src: None)
    try:
        nowhere = Address("ble", "00:11:22:33:44:EE", 0)  # no such device on the radio
        a.send(b"x" * (MAX_DATAGRAM + 1), nowhere)
        a.send(b"x", Address("udp", "127.0.0.1", 9))
        a.send(b"x", Address("ble", "not-a-mac", 0))
        for _ in range(4):                               # 1 in flight, 2 queued, 1 refused
            a.send(b"x", nowhere)
        await until(lambda: a.send_failures["link"] >= 1, timeout=10)
        a.send(b"x", nowhere)                            # while backing off
        failures = dict(a.send_failures)
        assert failures["oversized"] == failures["not_ble"] == failures["bad_address"] == 1
        assert failures["queue_full"] >= 1 and failures["backoff"] >= 1, failures
        assert a.errors[0] == sum(failures.values())
        # peers are bounded: idle ones make room, busy ones do not
        a.max_peers = 2
        a.send(b"x", Address("ble", "00:11:22:33:44:E1", 0))  # retires the idle "nowhere"
        a.send(b"x", Address("ble", "00:11:22:33:44:E2", 0))
        a.send(b"x", Address("ble", "00:11:22:33:44:E3", 0))  # both still have theirs queued
        assert len(a.stats()["peers"]) <= 2 and a.send_failures["too_many_peers"] >= 1
    finally:
        await a.close()


async def test_a_peer_that_goes_away_costs_counted_failures_and_is_reached_again_when_back(bluez):
    a, b = transport("hci0"), transport("hci1")
    got_b = []
    await a.start(lambda data, src: None)
    await b.start(lambda data, src: got_b.append(data))
    try:
        a.send(b"one", b.address)
        await until(lambda: got_b == [b"one"], timeout=10)
        await b.close()                                   # the peer's server goes: the link drops
        a.send(b"lost", b.address)
        await until(lambda: a.send_failures["link"] >= 1, timeout=10)
        assert not a.stats()["peers"][b.address.host]["linked"]

        b = transport("hci1")
        await b.start(lambda data, src: got_b.append(data))
        for _ in range(100):  # a backs off (about 1 s), then finds b again and connects anew
            if b"two" in got_b:
                break
            a.send(b"two", b.address)
            await asyncio.sleep(0.1)
        assert got_b[:2] == [b"one", b"two"] and a.stats()["peers"][b.address.host]["linked"]
        assert a.errors[0] == sum(a.send_failures.values()) and set(a.send_failures) <= {"link", "backoff"}
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("bluez", [23, 185], indirect=True)  # ATT MTU: the default, a common one
async def test_two_mesh_nodes_over_ble_exchange_direct_messages(bluez):
    """Two MeshNodes whose only transport is BLE: b knows a's BLE address, joins
    through it, and each delivers a DIRECT message to the other."""
    from flowmesh_edge import MeshNode, MessageType
    from flowmesh_edge.mesh.address import Address

    node_a = MeshNode("ble-a", mesh_key=KEY, transport=transport("hci0"))
    node_b = MeshNode("ble-b", mesh_key=KEY, transport=transport("hci1"),
                      peers=[Address("ble", MAC_A, 0)])
    inbox_a, inbox_b = [], []
    node_a.on(MessageType.DIRECT, inbox_a.append)
    node_b.on(MessageType.DIRECT, inbox_b.append)
    await node_a.start()
    await node_b.start()
    try:
        await until(lambda: node_a.peers().get("ble-b") and node_b.peers().get("ble-a")
                    and node_a.peers()["ble-b"].status == node_b.peers()["ble-a"].status == "alive",
                    timeout=15)
        assert node_a.peers()["ble-b"].address == Address("ble", MAC_B, 0)
        await node_b.send("ble-a", {"hello": "over ble", "pad": "z" * 600})
        await node_a.send("ble-b", {"hello": "back"})
        await until(lambda: inbox_a and inbox_b, timeout=10)
        assert inbox_a[0].payload["hello"] == "over ble" and inbox_a[0].origin == "ble-b"
        assert inbox_b[0].payload["hello"] == "back" and inbox_b[0].origin == "ble-a"
        assert node_a.stats()["dropped_total"] == 0 and node_b.stats()["dropped_total"] == 0
    finally:
        await node_b.stop()
        await node_a.stop()


async def test_two_mesh_nodes_with_no_peers_find_each_other_by_scanning(bluez):
    """No address given: each one's scan reports the other (on_discovered), the node
    sends it a discovery, and they join."""
    from flowmesh_edge import MeshNode

    node_a = MeshNode("ble-a", mesh_key=KEY, transport=transport("hci0"))
    node_b = MeshNode("ble-b", mesh_key=KEY, transport=transport("hci1"))
    await node_a.start()
    await node_b.start()
    try:
        await until(lambda: node_a.peers().get("ble-b") and node_b.peers().get("ble-a")
                    and node_a.peers()["ble-b"].status == node_b.peers()["ble-a"].status == "alive",
                    timeout=20)
    finally:
        await node_b.stop()
        await node_a.stop()


def test_a_member_without_ble_loads_none_of_its_libraries():
    from tests.unit.test_imports import loaded

    libraries = ("bleak", "bless", "dbus_fast", "dbus_next")
    assert loaded("from flowmesh_edge.mesh import MeshNode", libraries) == []
    assert loaded("from flowmesh_edge.mesh.transports import ble_fragments", libraries) == []
    assert loaded("from flowmesh_edge.mesh.transports import ble", libraries) == list(libraries)


HARDWARE_ENV = "FLOWMESH_BLE_HARDWARE"


@pytest.mark.hardware
@pytest.mark.skipif(not os.environ.get(HARDWARE_ENV),
                    reason=f"needs a real Bluetooth adapter under BlueZ; set {HARDWARE_ENV}=1 to run")
async def test_real_adapter_serves_and_scans():
    """On a real adapter (hci0, or FLOWMESH_BLE_ADAPTER): the GATT server registers
    and advertises, and a scan runs without error for a few seconds."""
    from flowmesh_edge.mesh.transports.ble import BleTransport
    from flowmesh_edge.mesh.transports.ble_fragments import mac_bytes

    t = BleTransport(os.environ.get("FLOWMESH_BLE_ADAPTER", "hci0"), scan_window_s=3, scan_interval_s=3)
    await t.start(lambda data, src: None)
    try:
        assert len(mac_bytes(t.address.host)) == 6 and t.address.host != "00:00:00:00:00:00"
        await asyncio.sleep(4)
        assert t.errors[0] == 0, t.stats()
    finally:
        await t.close()
