"""`flowmesh-edge pair` as two real processes on 127.0.0.1 (UDP, WebSocket), over BLE through
the mocked BlueZ, and finding members that accept (unicast DISCOVER and mDNS on loopback).

Every wait is bounded; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowmesh_edge.meshes import SavedMeshes

pytestmark = pytest.mark.timeout(60)

KEY, OLD_KEY = "the primary key of home 0001", "an older key still accepted"
TOKEN, CREDENTIAL = "relay-token-secret-77", "postgresql://flowmesh_dev_laptop:pw-secret-88@127.0.0.1:6432/flowmesh"
SECRETS = (KEY, OLD_KEY, TOKEN, "pw-secret-88")
WAIT_S = 20.0


class Cli:
    """One ``flowmesh-edge`` process, its output read without blocking past a deadline."""

    def __init__(self, args: list[str], env: dict, stdin: bytes | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "flowmesh_edge.cli", *args], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if stdin is not None:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()
        self.out = b""

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.out.decode(errors="replace"))
            if found:
                return found
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, min(left, 0.5)))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            self.out += chunk
            if left <= 0 or (ready and not chunk):  # out of time, or the process closed its output
                self.proc.kill()
                raise AssertionError(f"no {pattern!r} in {self.out.decode(errors='replace')!r}; "
                                     f"stderr {self.proc.stderr.read().decode(errors='replace')!r}")

    def finish(self, timeout: float = WAIT_S) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, (self.out + out).decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture
def env(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMESH_")}
    environment["FLOWMESH_DATA_DIR"] = str(tmp_path / "data")
    return environment


@pytest.fixture
def member_file(tmp_path) -> Path:
    """The accepting member's saved meshes: one mesh, its keyring of two keys, with a relay."""
    path = tmp_path / "member" / "meshes.json"
    store = SavedMeshes.load(path)
    store.add_or_update(KEY, "home", relay_url="wss://relay.example:8765", relay_token=TOKEN,
                        secondary_keys=[OLD_KEY], keyring_version=2, encrypt=True)
    store.save()
    return path


@pytest.fixture
async def bluez():
    """BlueZ mocked on a private system bus with adapters hci0..hci2 (tests/mesh/test_ble.py's)."""
    from tests.mesh.test_ble import MAC_A, MAC_B, MAC_C, release_bleak
    from tests.support.bluez import missing, mock_bluez

    reason = missing()
    if reason:
        pytest.skip(reason)

    def start(stack: contextlib.ExitStack):
        mock = stack.enter_context(mock_bluez())
        for name, mac in (("hci0", MAC_A), ("hci1", MAC_B), ("hci2", MAC_C)):
            mock.add_adapter(name, mac, f"member-{name}")
        return mock

    with contextlib.ExitStack() as stack:  # started and stopped off the loop: both block
        mock = await asyncio.to_thread(start, stack)
        try:
            yield mock
        finally:
            await release_bleak()
            await asyncio.to_thread(stack.close)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def accepting(env, member_file, *extra: str) -> Cli:
    return Cli(["pair", "--accept", "--yes", "--port", "0", "--bind", "127.0.0.1", "--timeout", "20",
                "--meshes-file", str(member_file), "--node-id", "pi-kitchen", *extra], env)


def udp_port(member: Cli) -> int:
    return int(member.wait_for(r"on udp:127\.0\.0\.1:(\d+)").group(1))


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_two_processes_pair_over_udp_and_the_new_device_saves_the_mesh(env, member_file, tmp_path):
    credential = secret_file(tmp_path / "laptop.url", CREDENTIAL + "\n")
    member = accepting(env, member_file, "--device-credential", str(credential))
    port = udp_port(member)
    new_file = tmp_path / "laptop" / "meshes.json"
    new = Cli(["pair", "--with", f"127.0.0.1:{port}", "--yes", "--timeout", "20", "--node-id", "laptop",
               "--meshes-file", str(new_file)], env)
    code, new_out, new_err = new.finish()
    member_code, member_out, member_err = member.finish()
    assert (code, member_code) == (0, 0), (new_out, new_err, member_out, member_err)

    shown = re.findall(r"Code: (\d{3} \d{3})", new_out) + re.findall(r"Code: (\d{3} \d{3})", member_out)
    assert len(shown) == 2 and shown[0] == shown[1]
    no_secret_in(new_out, new_err, member_out, member_err)

    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    saved_member = next(iter(SavedMeshes.load(member_file)))
    (saved,) = list(SavedMeshes.load(new_file))
    assert saved.mesh_id == saved_member.mesh_id and saved.name == "home" and saved.founder == "pi-kitchen"
    assert saved.keys == saved_member.keys == [KEY, OLD_KEY]
    assert (saved.keyring_version, saved.encrypt) == (2, True)
    assert (saved.relay_url, saved.relay_token) == ("wss://relay.example:8765", TOKEN)
    assert [(e.node_id, e.address) for e in saved.endpoints] == [("pi-kitchen", "udp:127.0.0.1:9999")]
    # the member recorded the new device where it will listen
    assert [(e.node_id, e.address) for e in saved_member.endpoints] == [("laptop", "udp:127.0.0.1:9999")]
    written = tmp_path / "data" / "credentials" / "laptop.url"
    assert written.read_text() == CREDENTIAL + "\n" and stat.S_IMODE(written.stat().st_mode) == 0o600
    assert f'FLOWMESH_DATABASE_URL="$(cat {written})" flowmesh-edge run --node-id laptop' in new_out


async def test_the_paired_device_joins_the_members_mesh_with_the_saved_keys(env, member_file, tmp_path):
    """What pairing saved is enough to join: a member node on the accepting side's saved key
    and one on the new device's saved key see each other on loopback."""
    import asyncio

    from flowmesh_edge import MeshNode
    from flowmesh_edge.mesh import MeshConfig
    from tests.conftest import until

    member = accepting(env, member_file)
    port = await asyncio.to_thread(udp_port, member)
    new_file = tmp_path / "laptop.json"
    new = Cli(["pair", "--with", f"127.0.0.1:{port}", "--yes", "--node-id", "laptop",
               "--meshes-file", str(new_file)], env)
    (code, out, err), (member_code, _, _) = await asyncio.gather(asyncio.to_thread(new.finish),
                                                                   asyncio.to_thread(member.finish))
    assert code == member_code == 0, (out, err)
    (theirs,), (ours,) = list(SavedMeshes.load(member_file)), list(SavedMeshes.load(new_file))
    assert ours.keys == theirs.keys and ours.mesh_id == theirs.mesh_id
    first = MeshNode("pi-kitchen", port=0, mesh_key=theirs.keys, bind="127.0.0.1",
                     config=MeshConfig(encrypt=theirs.encrypt), keyring_version=theirs.keyring_version)
    await first.start()
    second = MeshNode("laptop", port=0, mesh_key=ours.keys, bind="127.0.0.1", peers=[first.address],
                      config=MeshConfig(encrypt=ours.encrypt), keyring_version=ours.keyring_version)
    await second.start()
    try:
        await until(lambda: "laptop" in first.peers() and first.peers()["laptop"].status == "alive"
                    and "pi-kitchen" in second.peers(), timeout=15)
    finally:
        await second.stop()
        await first.stop()


def test_a_wrong_code_exits_1_on_both_sides_and_saves_nothing(env, member_file, tmp_path):
    before = member_file.read_bytes()
    credential = secret_file(tmp_path / "laptop.url", CREDENTIAL)
    member = accepting(env, member_file, "--device-credential", str(credential))
    port = udp_port(member)
    new_file = tmp_path / "laptop.json"
    new = Cli(["pair", "--with", f"127.0.0.1:{port}", "--timeout", "20", "--node-id", "laptop",
               "--meshes-file", str(new_file)], env, stdin=b"n\n")
    code, new_out, new_err = new.finish()
    member_code, member_out, member_err = member.finish()
    assert (code, member_code) == (1, 1)
    assert "does the other screen show the same? [y/N]" in new_out
    assert "pairing failed: a user said the codes do not match" in new_err
    assert "pairing failed: the other device ended the pairing: a user said the codes do not match" \
        in member_err
    assert len(new_err.strip().splitlines()) == 1 and len(member_err.strip().splitlines()) == 1
    assert not new_file.exists() and member_file.read_bytes() == before
    assert not (tmp_path / "data" / "credentials").exists()
    no_secret_in(new_out, new_err, member_out, member_err)


def test_pairing_over_websocket(env, member_file, tmp_path):
    member = accepting(env, member_file, "--ws-port", "0")
    ws_port = int(member.wait_for(r"ws:127\.0\.0\.1:(\d+)").group(1))
    new_file = tmp_path / "laptop.json"
    new = Cli(["pair", "--with", f"ws://127.0.0.1:{ws_port}", "--yes", "--node-id", "laptop",
               "--meshes-file", str(new_file)], env)
    code, out, err = new.finish()
    member_code, member_out, member_err = member.finish()
    assert (code, member_code) == (0, 0), (out, err, member_out, member_err)
    assert re.search(r"Code: (\d{3} \d{3})", out).group(1) == re.search(r"Code: (\d{3} \d{3})",
                                                                       member_out).group(1)
    (saved,) = list(SavedMeshes.load(new_file))
    assert saved.keys == [KEY, OLD_KEY]
    assert [(e.node_id, e.address) for e in saved.endpoints] == [("pi-kitchen", "udp:127.0.0.1:9999")]
    assert [(e.node_id, e.address) for e in next(iter(SavedMeshes.load(member_file))).endpoints] == \
        [("laptop", "udp:127.0.0.1:9999")]


def test_keys_are_refused_on_the_command_line_and_secret_files_must_be_0600(env, member_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "flowmesh_edge.cli", "pair", "--accept",
                             "--mesh-key", KEY], env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 1 and "never taken on the command line" in result.stderr
    assert KEY not in result.stderr + result.stdout
    loose = secret_file(tmp_path / "key", KEY, mode=0o644)
    result = subprocess.run([sys.executable, "-m", "flowmesh_edge.cli", "pair", "--accept",
                             "--mesh-key-file", str(loose)], env=env, capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode == 1 and "readable by others (mode 0644)" in result.stderr
    result = subprocess.run([sys.executable, "-m", "flowmesh_edge.cli", "pair", "--accept", "--yes",
                             "--port", "0", "--bind", "127.0.0.1", "--timeout", "1",
                             "--meshes-file", str(member_file)], env=env, capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode == 1 and "no pairing request within 1 s" in result.stderr


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


def test_a_member_offers_the_mesh_of_a_key_file_and_keeps_it(env, tmp_path):
    key_file = secret_file(tmp_path / "office.key", "the office mesh key 000001\n")
    member_file = tmp_path / "member.json"
    member = Cli(["pair", "--accept", "--yes", "--port", "0", "--bind", "127.0.0.1", "--timeout", "20",
                  "--mesh-key-file", str(key_file), "--mesh-name", "office", "--node-id", "pi-office",
                  "--meshes-file", str(member_file)], env)
    port = udp_port(member)
    new_file = tmp_path / "laptop.json"
    code, out, err = Cli(["pair", "--with", f"127.0.0.1:{port}", "--yes", "--node-id", "laptop",
                          "--meshes-file", str(new_file)], env).finish()
    member_code, member_out, member_err = member.finish()
    assert (code, member_code) == (0, 0), (out, err, member_out, member_err)
    (ours,), (theirs,) = list(SavedMeshes.load(new_file)), list(SavedMeshes.load(member_file))
    assert ours.name == theirs.name == "office" and ours.keys == theirs.keys == ["the office mesh key 000001"]
    assert ours.mesh_id == theirs.mesh_id and [e.node_id for e in theirs.endpoints] == ["laptop"]
    assert "the office mesh key" not in out + err + member_out + member_err
