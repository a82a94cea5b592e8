"""Round trip of one datagram through a relay, beside a direct WebSocket and UDP, on 127.0.0.1.

    python bench/relay.py [--rounds 2000] [--size 200] [--json FILE]

One process, one event loop: a relay server (flowmesh_edge.relay.server), two
RelayTransports, two WebSocketTransports and two UdpTransports. For each path,
member a sends a datagram of ``--size`` bytes to b, b sends it back, and a
times the round trip (after 100 warm-up rounds); rounds run one after the
other. Then a throughput run: a sends ``--rounds`` datagrams back to back
through the relay and we time until b has them all. Everything shares one
core, so these are the costs of the code paths, not of a network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowmesh_edge.mesh.address import Address  # noqa: E402
from flowmesh_edge.mesh.security import mesh_id_of  # noqa: E402
from flowmesh_edge.mesh.transports.relay import RelayTransport  # noqa: E402
from flowmesh_edge.mesh.transports.udp import UdpTransport  # noqa: E402
from flowmesh_edge.mesh.transports.websocket import WebSocketTransport  # noqa: E402
from flowmesh_edge.relay.server import Relay  # noqa: E402

TOKEN = "bench-relay-token-0123456789"
WARMUP = 100


async def round_trips(a, b, target, rounds: int, size: int) -> list[float]:
    """a -> b -> a, ``rounds`` times; each round trip in ms. ``target(b)``: b's address
    for a, once b is started."""
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future | None = None

    def at_a(data: bytes, source: Address) -> None:
        if waiting is not None and not waiting.done():
            waiting.set_result(data)

    await b.start(b.send)  # back the way it came
    await a.start(at_a)
    if isinstance(a, RelayTransport):
        await connected(a, b)
    address, payload, times = target(b), bytes(size), []
    for i in range(WARMUP + rounds):
        waiting = loop.create_future()
        started = time.perf_counter()
        a.send(payload, address)
        await asyncio.wait_for(waiting, 10)
        if i >= WARMUP:
            times.append((time.perf_counter() - started) * 1000)
    await a.close()
    await b.close()
    return times


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3), "max_ms": round(ordered[-1], 3)}


async def connected(*transports: RelayTransport) -> None:
    deadline = time.monotonic() + 10
    while not all(t.connected() for t in transports):
        if time.monotonic() > deadline:
            raise SystemExit("the relay transports did not connect")
        await asyncio.sleep(0.01)


async def main(rounds: int, size: int) -> dict:
    results = {}
    mesh = mesh_id_of(b"bench-relay-mesh-key-0123456789")
    async with Relay("127.0.0.1", 0, [TOKEN], rate=1e9, burst=10**9) as relay:
        a = RelayTransport("a", mesh, [(relay.url, TOKEN)])
        b = RelayTransport("b", mesh, [(relay.url, TOKEN)])
        results["relay"] = summary(await round_trips(
            a, b, lambda b: Address("relay", "b@127.0.0.1", relay.port), rounds, size))
        results["relay_throughput"] = await _throughput(relay, mesh, rounds, size)
    results["websocket"] = summary(await round_trips(
        WebSocketTransport("127.0.0.1", None), WebSocketTransport("127.0.0.1", 0), lambda b: b.address,
        rounds, size))
    results["udp"] = summary(await round_trips(
        UdpTransport("127.0.0.1", 0), UdpTransport("127.0.0.1", 0), lambda b: b.address, rounds, size))
    return results


async def _throughput(relay: Relay, mesh: str, count: int, size: int) -> dict:
    got = asyncio.Event()
    seen = [0]

    def at_b(data: bytes, source: Address) -> None:
        seen[0] += 1
        if seen[0] == count:
            got.set()

    a = RelayTransport("ta", mesh, [(relay.url, TOKEN)], queue_limit=count)
    b = RelayTransport("tb", mesh, [(relay.url, TOKEN)])
    await b.start(at_b)
    await a.start(lambda data, source: None)
    await connected(a, b)
    target = Address("relay", "tb@127.0.0.1", relay.port)
    started = time.perf_counter()
    sent = 0
    while sent < count:  # in slices, so the writes never outrun the transport's write limit
        for _ in range(min(100, count - sent)):
            a.send(bytes(size), target)
            sent += 1
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(got.wait(), 30)
    finally:
        elapsed = time.perf_counter() - started
        await a.close()
        await b.close()
    return {"datagrams": count, "delivered": seen[0], "per_second": round(seen[0] / elapsed),
            "dropped_at_sender": sum(a.dropped.values())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = asyncio.run(main(args.rounds, args.size))
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
