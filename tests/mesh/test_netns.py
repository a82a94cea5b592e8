"""LAN broadcast discovery between two network namespaces this test creates.

Two namespaces joined by a veth pair form a private two-host LAN; a member
runs in each with the default settings (bind 0.0.0.0, port 9999, broadcast
discovery) and no peers: they must find each other from the mesh key alone.
Traffic never leaves the pair. Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = pytest.mark.netns

MEMBER = textwrap.dedent("""
    import asyncio, json, sys, time
    from flowmesh_edge import MeshNode
    async def main():
        node = MeshNode(sys.argv[1], mesh_key=b"netns-test-mesh-key-0001")
        await node.start({"role": sys.argv[1]})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alive = {k: str(p.address) for k, p in node.peers().items() if p.status == "alive"}
            if alive:
                await asyncio.sleep(1)  # let the other side see us too
                print(json.dumps(alive), flush=True)
                await node.stop()
                return
            await asyncio.sleep(0.1)
        await node.stop()
        sys.exit(1)
    asyncio.run(main())
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    a, b = f"fm-a-{tag}", f"fm-b-{tag}"
    try:
        _ip("netns", "add", a)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for ns, dev, addr in ((a, f"va{tag}", "10.231.7.1/24"), (b, f"vb{tag}", "10.231.7.2/24")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", addr, "broadcast", "+", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "dev", dev)  # so 255.255.255.255 has a way out
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_members_on_one_lan_find_each_other_by_broadcast(two_hosts):
    a, b = two_hosts
    procs = [
        subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", MEMBER, name],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ns, name in ((a, "pi-a"), (b, "pi-b"))
    ]
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        assert p.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert outputs[0] == {"pi-b": "udp:10.231.7.2:9999"}
    assert outputs[1] == {"pi-a": "udp:10.231.7.1:9999"}
