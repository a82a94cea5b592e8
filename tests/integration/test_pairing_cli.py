"""`flowmesh-edge pair` as two real processes on 127.0.0.1: over UDP and WebSocket, a wrong
code, keys refused on the command line, a mesh offered from a key file. Discovery and BLE
are in test_pairing_discovery.py.

Every wait is bounded; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flowmesh_edge.meshes import SavedMeshes
from tests.support.pairing import (
    CREDENTIAL,
    KEY,
    OLD_KEY,
    TOKEN,
    WAIT_S,
    Cli,
    DropsDone,
    accepting,
    cli_env,
    no_secret_in,
    saved_member_file,
    secret_file,
    udp_port,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


@pytest.fixture
def member_file(tmp_path) -> Path:
    return saved_member_file(tmp_path)


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


async def test_the_paired_device_joins_the_members_mesh_with_nothing_but_what_it_saved(env, member_file,
                                                                                      tmp_path):
    """The member's mesh node runs (on the keyring of its saved mesh, encrypting); pairing
    tells the new device its mesh port; the new device's agent mesh layer (links.py, as
    `flowmesh-edge run` builds it) then joins with no key and no peer given: the saved
    keyring and the member's saved endpoint are enough."""
    from flowmesh_edge import MeshNode
    from flowmesh_edge.links import MeshLinks, MeshOptions
    from flowmesh_edge.mesh import MeshConfig
    from tests.conftest import until

    (theirs,) = list(SavedMeshes.load(member_file))
    running = MeshNode("pi-kitchen", port=0, mesh_key=theirs.keys, bind="127.0.0.1",
                       config=MeshConfig(encrypt=theirs.encrypt), keyring_version=theirs.keyring_version)
    await running.start()
    links = None
    try:
        member = accepting(env, member_file, "--mesh-port", str(running.address.port))
        port = await asyncio.to_thread(udp_port, member)
        new_file = tmp_path / "laptop.json"
        new = Cli(["pair", "--with", f"127.0.0.1:{port}", "--yes", "--node-id", "laptop",
                   "--meshes-file", str(new_file)], env)
        (code, out, err), (member_code, _, _) = await asyncio.gather(asyncio.to_thread(new.finish),
                                                                       asyncio.to_thread(member.finish))
        assert code == member_code == 0, (out, err)
        (ours,) = list(SavedMeshes.load(new_file))
        assert [e.address for e in ours.endpoints] == [str(running.address)]

        links = MeshLinks("laptop", MeshOptions(port=0, bind="127.0.0.1", meshes_file=new_file))
        assert [link.mesh_id for link in links.build()] == [theirs.mesh_id]
        await links.start()
        await until(lambda: running.peers().get("laptop") is not None
                    and running.peers()["laptop"].status == "alive", timeout=15)
        assert running.keyring.ids() == links.links[0].node.keyring.ids()
    finally:
        if links is not None:
            await links.stop()
        await running.stop()


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


def test_a_member_cannot_overwrite_another_mesh_saved_on_the_new_device(env, tmp_path):
    """The member offers a mesh under the id of the new device's "office" mesh, with keys
    of its own: the new device refuses in one line and its file is unchanged."""
    new_file = tmp_path / "laptop.json"
    ours = SavedMeshes.load(new_file)
    office = ours.add_or_update("the office mesh key 000001", "office", relay_url="wss://office:1",
                                relay_token="office-token")
    ours.save()
    before = new_file.read_bytes()
    member_file = tmp_path / "member.json"
    theirs = SavedMeshes.load(member_file)
    theirs.add_or_update(KEY, "office", mesh_id=office.mesh_id, relay_url="wss://attacker:1")
    theirs.save()
    member = accepting(env, member_file)
    port = udp_port(member)
    code, out, err = Cli(["pair", "--with", f"127.0.0.1:{port}", "--yes", "--node-id", "laptop",
                          "--meshes-file", str(new_file)], env).finish()
    member.finish()
    assert code == 1 and len(err.strip().splitlines()) == 1, (out, err)
    assert f"mesh {office.mesh_id} (office) is already saved here with other keys; nothing was saved" in err
    assert new_file.read_bytes() == before


def test_the_member_says_in_one_line_what_it_refused_while_waiting(env, member_file):
    import socket

    member = Cli(["pair", "--accept", "--yes", "--port", "0", "--bind", "127.0.0.1", "--timeout", "2",
                  "--meshes-file", str(member_file), "--node-id", "pi-kitchen"], env)
    port = udp_port(member)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"FMPAIR1\x10", b"FMPAIR1\x10", b"FMPAIR1\x01" + bytes(17)):  # malformed, short DISCOVER
            sock.sendto(junk, ("127.0.0.1", port))
        code, out, err = member.finish()
    assert code == 1 and "no pairing request within 2 s" in err
    assert "refused while waiting: malformed 2, short_discover 1" in err.splitlines()


def test_the_refusal_summary_leaves_out_what_was_not_refused():
    from flowmesh_edge.pairing_cli import refused_summary

    assert refused_summary({}) is None and refused_summary({"duplicate": 3}) is None
    assert refused_summary({"rate_limited": 1, "busy": 3, "duplicate": 2}) == \
        "refused while waiting: busy 3, rate_limited 1"


def test_saving_credentials_never_replaces_a_mesh_saved_under_their_id_with_other_keys(tmp_path):
    from flowmesh_edge.pairing.protocol import Credentials
    from flowmesh_edge.pairing_cli import MeshTakeover, _add_mesh

    store = SavedMeshes.load(tmp_path / "meshes.json")
    office = store.add_or_update("the office mesh key 000001", "office", relay_url="wss://office:1")
    evil = Credentials(mesh_id=office.mesh_id, name="office", keys=["attacker chosen key 0000"],
                       relay_url="wss://attacker:1", node_id="pi-home")
    with pytest.raises(MeshTakeover):
        _add_mesh(store, evil, founder="pi-home")
    kept = store.get(office.mesh_id)
    assert kept.keys == ["the office mesh key 000001"] and kept.relay_url == "wss://office:1"
    assert kept.founder is None
    # the same mesh, its keyring rotated since (one key in common): updated as before
    rotated = Credentials(mesh_id=office.mesh_id, name="office", keys=["a newer office key 0002",
                                                                       "the office mesh key 000001"],
                          keyring_version=1, node_id="pi-office")
    _add_mesh(store, rotated, founder="pi-office")
    assert store.get(office.mesh_id).keys == rotated.keys


async def test_a_member_whose_done_never_comes_exits_0_saying_so_and_records_nothing(env, member_file):
    """The new device (here in this process, over UDP that loses every DONE) saved the
    mesh; the member hears no DONE for 10 s after sending the credentials."""
    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.mesh.transports.udp import UdpTransport
    from flowmesh_edge.pairing.channel import Channel, pair

    async def yes(code: str, peer: str) -> bool:
        return True

    member = accepting(env, member_file)
    port = await asyncio.to_thread(udp_port, member)
    channel = Channel(DropsDone(UdpTransport("127.0.0.1", 0)))
    await channel.start()
    saved = []
    try:
        paired = await pair(channel, Address.udp("127.0.0.1", port), "laptop", yes, saved.append,
                            timeout_s=20, mesh_endpoints=["udp:0.0.0.0:9999"])
    finally:
        await channel.close()
    code, out, err = await asyncio.to_thread(member.finish, 40)
    assert paired.ok and len(saved) == 1 and channel.transport.dropped >= 1
    assert code == 0, (out, err)
    assert "paired: credentials sent; the new device did not confirm it saved them (laptop" in out
    assert "its endpoint is not recorded" in out
    assert next(iter(SavedMeshes.load(member_file))).endpoints == []
