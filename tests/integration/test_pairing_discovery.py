"""Finding members that accept pairing (a DISCOVER datagram and mDNS on loopback, a BLE scan
through the mocked BlueZ), and `flowmesh-edge pair` over BLE. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from flowmesh_edge.meshes import SavedMeshes
from tests.support.pairing import (
    KEY,
    OLD_KEY,
    Cli,
    accepting,
    cli_env,
    mocked_bluez,
    no_secret_in,
    saved_member_file,
    udp_port,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


@pytest.fixture
def member_file(tmp_path) -> Path:
    return saved_member_file(tmp_path)


@pytest.fixture
async def bluez():
    from tests.support.bluez import missing

    reason = missing()
    if reason:
        pytest.skip(reason)
    async with mocked_bluez() as mock:
        yield mock


async def test_discovery_finds_an_accepting_member_by_datagram_and_by_mdns_on_loopback():
    import uuid

    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.mesh.transports.udp import UdpTransport
    from flowmesh_edge.pairing.channel import Channel
    from flowmesh_edge.pairing.discovery import MdnsAdvertiser, find_members
    from flowmesh_edge.pairing.guard import PairingGuard
    from flowmesh_edge.pairing.protocol import Credentials, Offer

    node = f"pi-{uuid.uuid4().hex[:8]}"  # unique: another run on this machine is not ours
    credentials = Credentials(mesh_id="0123456789abcdef", name="home", keys=[KEY], node_id=node)
    channel = Channel(UdpTransport("127.0.0.1", 0))
    await channel.start()
    guard = PairingGuard(node, credentials, Offer(node, "home", tuple(str(e) for e in channel.endpoints())))
    channel.handler = lambda data, source: [channel.send(d, a) for d, a in guard.receive(data, source)]
    advertiser = MdnsAdvertiser(node, "home", channel.endpoints(), interfaces=["127.0.0.1"])
    await advertiser.start()
    try:
        found = await find_members(broadcast=False, targets=[channel.transport.address], bind="127.0.0.1",
                                   mdns=True, mdns_interfaces=["127.0.0.1"], wait_s=3)
    finally:
        await advertiser.close()
        await channel.close()
    address = Address("udp", "127.0.0.1", channel.transport.address.port)
    ours = [m for m in found if m.node_id == node]
    assert [(m.mesh_name, m.address) for m in ours] == [("home", address)]  # one entry, found both ways
    assert sorted(ours[0].via.split(", ")) == ["mdns", "udp"]
    assert guard.offers >= 1 and guard.started == 0  # a DISCOVER costs no key work


def test_the_new_device_lists_members_found_over_mdns_and_pairs_with_the_only_one(env, member_file, tmp_path):
    member = accepting(env, member_file, "--mdns", "--mdns-interface", "127.0.0.1")
    port = udp_port(member)
    new_file = tmp_path / "laptop.json"
    new = Cli(["pair", "--yes", "--mdns", "--mdns-interface", "127.0.0.1", "--port", str(port),
               "--broadcast-address", "127.255.255.255", "--node-id", "laptop",
               "--meshes-file", str(new_file)], env)
    code, out, err = new.finish()
    member_code, member_out, member_err = member.finish()
    assert (code, member_code) == (0, 0), (out, err, member_out, member_err)
    assert re.search(rf"1\. pi-kitchen \(mesh home\) at udp:127\.0\.0\.1:{port}, found over mdns", out)
    assert json.loads(new_file.read_text())["meshes"][0]["name"] == "home"


async def test_pairing_over_ble_through_the_mocked_bluez(bluez, env, member_file, tmp_path):
    """The member serves the FlowMesh GATT service on hci1; the new device's scan finds it
    (a DISCOVER over the link, answered with an OFFER), then `pair --with ble:MAC` runs
    the same protocol over GATT writes and notifications."""
    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.pairing.discovery import find_members
    from tests.mesh.test_ble import MAC_B

    env = {**env, "DBUS_SYSTEM_BUS_ADDRESS": os.environ["DBUS_SYSTEM_BUS_ADDRESS"]}  # the private bus
    member = accepting(env, member_file, "--ble", "--ble-adapter", "hci1")
    await asyncio.to_thread(member.wait_for, re.escape(f"ble:[{MAC_B}]:0"))
    found = await find_members(broadcast=False, ble=True, ble_adapter="hci0", wait_s=5)
    assert [(m.node_id, m.address, m.via) for m in found] == [("pi-kitchen", Address("ble", MAC_B, 0), "ble")]

    new_file = tmp_path / "laptop.json"
    new = Cli(["pair", "--with", f"ble:{MAC_B}", "--ble-adapter", "hci2", "--yes", "--node-id", "laptop",
               "--timeout", "20", "--meshes-file", str(new_file)], env)
    (code, out, err), (member_code, member_out, member_err) = await asyncio.gather(
        asyncio.to_thread(new.finish, 40), asyncio.to_thread(member.finish, 40))
    assert (code, member_code) == (0, 0), (out, err, member_out, member_err)
    assert re.search(r"Code: (\d{3} \d{3})", out).group(1) == re.search(r"Code: (\d{3} \d{3})",
                                                                       member_out).group(1)
    (saved,) = list(SavedMeshes.load(new_file))
    assert saved.keys == [KEY, OLD_KEY] and saved.founder == "pi-kitchen"
    # over BLE the member's UDP endpoint has no host to take: only the laptop's record says where
    assert saved.endpoints == []
    no_secret_in(out, err, member_out, member_err)
