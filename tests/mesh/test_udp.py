"""The mesh on real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from flowmesh.limits import NODE_ID_MAX_BYTES
from flowmesh_edge import MeshNode, MessageType
from flowmesh_edge.mesh import wire
from flowmesh_edge.mesh.keyring import Keyring, MeshKey
from flowmesh_edge.mesh.wire import Frame
from tests.conftest import until

KEY = b"udp-test-mesh-key-0123456789"




async def mesh(n: int) -> list[MeshNode]:
    nodes: list[MeshNode] = []
    for i in range(n):
        node = MeshNode(f"udp-{i}", port=0, mesh_key=KEY, bind="127.0.0.1",
                        peers=[nodes[0].address] if nodes else [])
        await node.start({"fps": 30, "battery": 85})
        nodes.append(node)
    await until(lambda: all(sum(p.status == "alive" for p in n.peers().values()) == n_ - 1
                            for n_ in [len(nodes)] for n in nodes))
    return nodes


async def test_loopback_mesh_api_end_to_end():
    nodes = await mesh(6)
    try:
        alerts = []
        nodes[4].on(MessageType.ALERT, alerts.append)
        report = await nodes[0].broadcast_alert({"type": "intrusion"}, priority="critical")
        assert report.complete and len(report.acked) == 5
        await until(lambda: alerts)
        assert alerts[0].origin == "udp-0" and alerts[0].payload["alert"] == {"type": "intrusion"}
        nodes[2].update_state({"fps": 25})
        await until(lambda: nodes[5].peers()["udp-2"].node_state.get("fps") == 25)
        info = nodes[0].peers()["udp-1"]
        assert info.status == "alive" and info.address.host == "127.0.0.1"
        assert info.last_heard is not None
        await until(lambda: nodes[0].stats()["probes"] > 0)  # one per round: 0.5 s
        stats = nodes[0].stats()
        assert stats["sent"] > 0 and stats["received"] > 0 and stats["probes"] > 0
        assert stats["dropped_total"] == 0, stats["dropped"]
    finally:
        for n in nodes:
            await n.stop()


async def test_forged_replayed_and_malformed_datagrams_are_dropped_and_counted():
    node = MeshNode("victim", port=0, mesh_key=KEY, bind="127.0.0.1")
    await node.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        good_key, bad_key = MeshKey(KEY), MeshKey(b"an attacker's own key, long")
        ping = Frame(wire.MessageType.PING, "mallory", 5, 1, int(time.time()),
                     wire.encode_ping(1, "victim", (5, 0)))
        valid = wire.encode_frame(ping, good_key.tagged)
        bogus = [
            wire.encode_frame(ping, bad_key.tagged),            # forged
            valid[:-1] + bytes([valid[-1] ^ 1]),              # tampered tag
            valid,                                            # genuine once...
            valid,                                            # ...replayed
            valid[:12],                                       # truncated
            b"\x00" * 2000,                                   # oversized
            wire.encode_frame(Frame(wire.MessageType.PING, "mallory", 5, 2, int(time.time()) - 3600,
                                    wire.encode_ping(2, "victim", (5, 0))), good_key.tagged),  # stale clock
            wire.encode_frame(Frame(wire.MessageType.GOSSIP, "mallory", 5, 3, int(time.time()),
                                    b"\x01\x00\x05junk!"), good_key.tagged),          # malformed body
        ]
        for d in bogus:
            sock.sendto(d, (node.address.host, node.address.port))
        await until(lambda: node.stats()["received"] >= len(bogus))
        dropped = node.stats()["dropped"]
        assert dropped["forged"] == 2
        assert dropped["replayed"] == 1
        assert dropped["truncated"] == 1
        assert dropped["oversized"] == 1
        assert dropped["skew"] == 1
        assert dropped["malformed"] == 1
        # and the node still works: the genuine ping was answered
        sock.settimeout(2)
        reply, _ = sock.recvfrom(2048)
        assert reply[1] == wire.SEALED  # encrypted by default
        signed, _ = Keyring(KEY).open(reply)
        assert wire.decode_frame(signed).type == wire.MessageType.PROBE_ACK
    finally:
        sock.close()
        await node.stop()


MEMBER = textwrap.dedent("""
    import asyncio, sys
    from flowmesh_edge import MeshNode
    async def main():
        node = MeshNode("child", port=0, mesh_key=sys.argv[1].encode(), bind="127.0.0.1",
                        peers=[("127.0.0.1", int(sys.argv[2]))])
        await node.start()
        print("started", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_member_killed_with_sigkill_is_declared_dead():
    watcher = MeshNode("watcher", port=0, mesh_key=KEY, bind="127.0.0.1")
    await watcher.start()
    events = []
    watcher.on_member(lambda e, p: events.append(e.kind))
    proc = subprocess.Popen([sys.executable, "-c", MEMBER, KEY.decode(), str(watcher.address.port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        await until(lambda: watcher.peers().get("child") and watcher.peers()["child"].status == "alive", 20)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        await until(lambda: watcher.peers()["child"].status == "dead", 10)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        await watcher.stop()
    assert "joined" in events and "dead" in events
    # at most: the next probe of it, that probe's interval, then the longest suspicion a
    # two-member mesh can hold (nobody can confirm it), with a second for a busy machine
    cfg = watcher.config
    assert took < 2 * cfg.probe_interval_s + cfg.suspicion_max_s(2) + 1.0


def test_node_requires_a_key_and_a_sane_id():
    with pytest.raises(ValueError, match="mesh key"):
        MeshNode("a", port=0, bind="127.0.0.1")
    with pytest.raises(ValueError, match="node id") as info:
        MeshNode("x" * (NODE_ID_MAX_BYTES + 1), port=0, mesh_key=KEY, bind="127.0.0.1")
    assert "\n" not in str(info.value) and f"limit is {NODE_ID_MAX_BYTES}" in str(info.value)
    MeshNode("x" * NODE_ID_MAX_BYTES, port=0, mesh_key=KEY, bind="127.0.0.1")  # the limit itself is fine


def test_blocking_facade_for_scripts_without_asyncio():
    from flowmesh_edge.mesh import BlockingMeshNode

    with BlockingMeshNode("sync-a", port=0, mesh_key=KEY, bind="127.0.0.1") as a, \
            BlockingMeshNode("sync-b", port=0, mesh_key=KEY, bind="127.0.0.1") as b:
        a.start({"fps": 30})
        b.node.bootstrap = [a.address]
        b.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "sync-b" not in a.peers():
            time.sleep(0.05)
        got = []
        b.on(MessageType.ALERT, got.append)
        report = a.broadcast_alert({"type": "smoke"}, priority="critical")
        assert report.complete and report.acked == {"sync-b"}
        assert a.stats()["members"]["alive"] == 1
