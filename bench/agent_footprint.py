"""The edge agent's steady footprint at its default interval.

    python bench/agent_footprint.py [--duration 120] [--warmup 15] [--interval 10]
                                    [--mesh-peers N] [--database-url URL]

Starts ``flowmesh-edge run`` as a child process (default interval: one
heartbeat every 10 s), lets it warm up, then samples its resident memory and
CPU time through psutil for ``--duration`` seconds. Reports steady RSS (max
and median over the window) and CPU as a percentage of one core (CPU seconds
used in the window / wall seconds). Goals: under 60 MB and under 1% of a
core. Without --database-url a throwaway embedded server is started.

With ``--mesh-peers N`` the agent also joins a mesh (on 127.0.0.1) of N other
members run by this script, so the figures include SWIM probing, gossip and
acks at the default mesh settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, q  # noqa: E402

from flowmesh_edge.mesh import MeshNode  # noqa: E402

MESH_KEY = "footprint-bench-mesh-key-0001"


def start_mesh_peers(n: int, agent_port: int):
    """N members on a loop in a thread, all pointing at the agent's port."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        nodes = []
        for i in range(n):
            node = MeshNode(f"peer-{i}", port=0, mesh_key=MESH_KEY, bind="127.0.0.1",
                            peers=[("127.0.0.1", agent_port)])
            await node.start()
            nodes.append(node)
        return nodes

    nodes = asyncio.run_coroutine_threadsafe(start(), loop).result(30)

    def stop():
        async def halt():
            for node in nodes:
                await node.stop()
        asyncio.run_coroutine_threadsafe(halt(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    return nodes, stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    ap.add_argument("--interval", type=float, default=10.0, help="agent heartbeat interval")
    ap.add_argument("--mesh-peers", type=int, default=0, help="mesh members for the agent to join")
    ap.add_argument("--database-url")
    args = ap.parse_args()

    agent = Path(sys.executable).parent / "flowmesh-edge"
    with bench_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        command = [str(agent), "run", "--database-url", url, "--node-id", "bench-node",
                   "--interval", str(args.interval), "--outbox", os.path.join(tmp, "o.sqlite3"),
                   "--log-level", "warning"]
        stop_peers = None
        if args.mesh_peers:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command += ["--mesh-key", MESH_KEY, "--mesh-bind", "127.0.0.1", "--mesh-port", str(port)]
        # a saved meshes file of its own: the user's saved meshes are neither joined nor written
        proc = subprocess.Popen(command, env={**os.environ,
                                              "FLOWMESH_MESHES_FILE": os.path.join(tmp, "meshes.json")})
        if args.mesh_peers:
            _, stop_peers = start_mesh_peers(args.mesh_peers, port)
        try:
            p = psutil.Process(proc.pid)
            time.sleep(args.warmup)
            cpu0 = sum(p.cpu_times()[:2])
            t0 = time.monotonic()
            rss = []
            while time.monotonic() - t0 < args.duration:
                rss.append(p.memory_info().rss / 2**20)
                time.sleep(1.0)
            cpu = sum(p.cpu_times()[:2]) - cpu0
            wall = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            if stop_peers is not None:
                stop_peers()
        with psycopg.connect(url) as c:
            (beats,) = c.execute(q("heartbeat_count")).fetchone()

    cpu_pct = 100 * cpu / wall
    mesh = f", in a mesh of {args.mesh_peers + 1}" if args.mesh_peers else ""
    print(f"flowmesh-edge run --interval {args.interval:g}{mesh}: {wall:.0f} s measured after "
          f"{args.warmup:g} s warm-up, {beats} heartbeats stored")
    print(f"resident memory: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB "
          f"(goal < 60 MB): {'met' if max(rss) < 60 else 'NOT met'}")
    print(f"CPU: {cpu:.2f} s in {wall:.0f} s = {cpu_pct:.2f}% of one core "
          f"(goal < 1%): {'met' if cpu_pct < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
