"""Mesh benchmark on loopback UDP: failure detection, false deaths, dissemination.

    python bench/mesh.py [--members 20] [--trials 10] [--soak-seconds 600]
                         [--loss 0.10] [--spread-members 100] [--spread-trials 10]
                         [--only detect|soak|spread]

All members run in this process on 127.0.0.1 with the default MeshConfig
(nothing tuned for the benchmark). Three measurements:

* detect: a member of a ``--members`` mesh is crashed (its socket closed, no
  goodbye); the time until each other member marks it dead is recorded, over
  ``--trials`` crashes (the crashed member restarts between trials). Goal:
  p99 under 3 s (seed 002's failover budget).
* soak: ``--members`` members run for ``--soak-seconds`` with ``--loss`` of
  every datagram dropped at the sender (LossyTransport). Goal: zero deaths.
* spread: in a ``--spread-members`` mesh, one member broadcasts; the time
  until 99% of the others have it. Goal: under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowmesh_edge.mesh import LossyTransport, MeshNode, MessageType, UdpTransport  # noqa: E402

KEY = b"benchmark-mesh-key-000000000000"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def start(name: str, seed_peer, loss: float = 0.0, seed: int = 0) -> MeshNode:
    transport = UdpTransport("127.0.0.1", 0)
    if loss:
        transport = LossyTransport(transport, loss, seed)
    node = MeshNode(name, port=0, mesh_key=KEY, bind="127.0.0.1", transport=transport,
                    peers=[seed_peer] if seed_peer else [], seed=seed)
    await node.start()
    return node


async def mesh(n: int, prefix: str, loss: float = 0.0) -> list[MeshNode]:
    nodes = [await start(f"{prefix}-000", None, loss, 0)]
    for i in range(1, n):
        nodes.append(await start(f"{prefix}-{i:03d}", nodes[0].address, loss, i))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(sum(p.status == "alive" for p in m.peers().values()) == n - 1 for m in nodes):
            return nodes
        await asyncio.sleep(0.05)
    raise SystemExit(f"a {n}-member mesh did not converge in 60 s")


async def stop(nodes: list[MeshNode]) -> None:
    for n in nodes:
        await n.stop(leave=False)


async def detect(members: int, trials: int) -> list[float]:
    nodes = await mesh(members, "det")
    times: list[float] = []
    try:
        for trial in range(trials):
            await asyncio.sleep(2)
            victim = nodes[1 + trial % (members - 1)]
            others = [n for n in nodes if n is not victim]
            seen: dict[str, float] = {}
            await victim.stop(leave=False)
            crashed = time.monotonic()
            while len(seen) < len(others) and time.monotonic() - crashed < 30:
                for n in others:
                    if n.node_id not in seen and n.peers()[victim.node_id].status == "dead":
                        seen[n.node_id] = time.monotonic() - crashed
                await asyncio.sleep(0.005)
            times += list(seen.values()) + [float("inf")] * (len(others) - len(seen))
            # restart it (a new process has a higher incarnation)
            again = MeshNode(victim.node_id, port=0, mesh_key=KEY, bind="127.0.0.1",
                             peers=[nodes[0].address])
            again.incarnation = victim.incarnation + 1
            await again.start()
            nodes[nodes.index(victim)] = again
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                    n.peers()[again.node_id].status == "alive" for n in nodes if n is not again):
                await asyncio.sleep(0.05)
    finally:
        await stop(nodes)
    return times


async def soak(members: int, seconds: float, loss: float) -> dict:
    nodes = await mesh(members, "soak", loss)
    deaths: list[tuple[str, str]] = []
    for n in nodes:
        n.on_member(lambda e, p, n=n: deaths.append((n.node_id, e.node_id)) if e.kind == "dead" else None)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    stats = [n.stats() for n in nodes]
    await stop(nodes)
    return {
        "seconds": time.monotonic() - started,
        "deaths": len(deaths),
        "suspicions": sum(s["suspicions"] for s in stats),
        "refutations": sum(s["refutations"] for s in stats),
        "dropped_by_loss": sum(n._transport.dropped for n in nodes),  # type: ignore[attr-defined]
        "sent": sum(s["sent"] for s in stats),
    }


async def spread(members: int, trials: int) -> list[float]:
    nodes = await mesh(members, "spr")
    times = []
    try:
        for trial in range(trials):
            got: set[str] = set()
            for n in nodes:
                n._handlers.pop(MessageType.ROUTE_BROADCAST, None)
                n.on(MessageType.ROUTE_BROADCAST, lambda m, n=n, got=got: got.add(n.node_id))
            need = int(0.99 * (members - 1) + 0.999)
            origin = nodes[trial % members]
            t0 = time.monotonic()
            await origin.broadcast({"trial": trial})
            while len(got) < need and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.002)
            times.append(time.monotonic() - t0 if len(got) >= need else float("inf"))
            await asyncio.sleep(1)
    finally:
        await stop(nodes)
    return times


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--soak-seconds", type=float, default=600)
    ap.add_argument("--loss", type=float, default=0.10)
    ap.add_argument("--spread-members", type=int, default=100)
    ap.add_argument("--spread-trials", type=int, default=10)
    ap.add_argument("--only", choices=["detect", "soak", "spread"])
    args = ap.parse_args()

    if args.only in (None, "detect"):
        t = await detect(args.members, args.trials)
        print(f"detect: {args.members} members, {args.trials} crashes, {len(t)} observations: "
              f"p50 {pct(t, 50):.2f} s, p99 {pct(t, 99):.2f} s, max {max(t):.2f} s "
              f"(goal p99 < 3 s): {'met' if pct(t, 99) < 3 else 'NOT met'}")
    if args.only in (None, "soak"):
        s = await soak(args.members, args.soak_seconds, args.loss)
        print(f"soak: {args.members} members, {s['seconds']:.0f} s at {args.loss:.0%} loss on every "
              f"link ({s['dropped_by_loss']} of {s['sent']} datagrams dropped): {s['deaths']} deaths, "
              f"{s['suspicions']} suspicions, {s['refutations']} refutations "
              f"(goal 0 deaths): {'met' if s['deaths'] == 0 else 'NOT met'}")
    if args.only in (None, "spread"):
        t = await spread(args.spread_members, args.spread_trials)
        print(f"spread: {args.spread_members} members, {len(t)} broadcasts, time to 99%: "
              f"p50 {statistics.median(t) * 1000:.0f} ms, max {max(t) * 1000:.0f} ms "
              f"(goal < 1 s): {'met' if max(t) < 1 else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
