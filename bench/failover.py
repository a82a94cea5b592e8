"""Failover between paths on loopback: how long a member takes to move a peer's traffic
from a cut LAN path to the relay, and back, and what is lost on the way.

Two members on 127.0.0.1, each with UDP (wrapped so that the benchmark can cut it:
the socket stays open, nothing gets through, both ways) and a relay this script
runs. Member a sends member b a numbered message every 20 ms throughout. Each cut
comes at a random moment, lasts ``--cut-s``, and is followed by a pause; per cut
it measures the time from the cut until a's messages to b go on the relay too
(the first one sent there), until a's path to b switches to the relay, and from
the restore until it is back on UDP. At the end: every message sent, received once?

The baseline, in the same run: the same train with Tailscale's timers (a direct
path probed every 3 s and trusted for 6.5 s after its last reply, the figures
Tailscale documents; a probe waits 6.5 s), so the two are compared on the same
machine and load. Its cuts last ``--baseline-cut-s``: two unanswered probes
take up to 3 + 2 x 6.5 s.

    python bench/failover.py [--cuts 20] [--baseline-cuts 6] [--cut-s 8] [--baseline-cut-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.support import pct  # noqa: E402
from flowmesh_edge.mesh import MeshConfig, MeshNode, MessageType  # noqa: E402
from flowmesh_edge.mesh.security import mesh_id_of  # noqa: E402
from flowmesh_edge.mesh.transports.lossy import CuttableTransport  # noqa: E402
from flowmesh_edge.mesh.transports.relay import RelayTransport  # noqa: E402
from flowmesh_edge.mesh.transports.udp import UdpTransport  # noqa: E402
from flowmesh_edge.relay.server import Relay  # noqa: E402

KEY = "failover-benchmark-mesh-key-0123"
TOKEN = "failover-benchmark-relay-token-0123"
#: Tailscale's timers (wgengine/magicsock): a direct path is pinged every 3 s while
#: in use and trusted for 6.5 s after its last pong; then traffic goes to DERP too.
TAILSCALE = replace(MeshConfig(), path_probe_active_s=3.0, path_trust_s=3.5, path_probe_timeout_s=6.5)


class WatchedRelay(RelayTransport):
    """Notes when each application message (DIRECT) goes out through the relay."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.direct_sent: list[float] = []

    def send(self, data: bytes, address) -> None:
        if len(data) > 1 and data[1] == MessageType.DIRECT:  # the frame's type byte (wire.py)
            self.direct_sent.append(time.monotonic())
        super().send(data, address)


async def member(name: str, relay: Relay, config: MeshConfig, peers=()
                 ) -> tuple[MeshNode, CuttableTransport, WatchedRelay]:
    lan = CuttableTransport(UdpTransport("127.0.0.1", 0))
    watched = WatchedRelay(name, mesh_id_of(KEY), [(relay.url, TOKEN)])
    node = MeshNode(name, mesh_key=KEY, peers=list(peers), config=config, transport=[lan, watched])
    await node.start()
    return node, lan, watched


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def switched_since(switches: list[tuple[float, str]], since: float, transport: str) -> float | None:
    """Seconds from ``since`` to the first switch to ``transport`` after it, if any."""
    return next((t - since for t, tr in switches if t >= since and tr == transport), None)


async def cut_once(lan: CuttableTransport, relay: WatchedRelay, switches: list[tuple[float, str]],
                   cut_s: float) -> tuple[float | None, float | None, float | None]:
    """Cut the LAN for ``cut_s``: seconds until messages go on the relay too, until
    the path switches to it, and back to UDP after the restore."""
    cut_at = time.monotonic()
    lan.cut()
    await wait_for(lambda: switched_since(switches, cut_at, "relay") is not None, cut_s)
    failover = switched_since(switches, cut_at, "relay")
    moved = next((t - cut_at for t in relay.direct_sent if t >= cut_at), None)
    await asyncio.sleep(max(0.0, cut_at + cut_s - time.monotonic()))
    back_at = time.monotonic()
    lan.restore()
    await wait_for(lambda: switched_since(switches, back_at, "udp") is not None, 30)
    return moved, failover, switched_since(switches, back_at, "udp")


async def measure(label: str, config: MeshConfig, cuts: int, cut_s: float, seed: int) -> dict:
    rng = random.Random(seed)
    relay = Relay("127.0.0.1", 0, [TOKEN])
    await relay.start()
    a, a_lan, a_relay = await member("a", relay, config)
    b, _, _ = await member("b", relay, config, [a.address])
    received: list[int] = []
    b.on(MessageType.DIRECT, lambda m: received.append(m.payload["n"]))
    switches: list[tuple[float, str]] = []
    a.on_path(lambda peer, address, previous, rtt: switches.append((time.monotonic(), address.transport)))
    deaths: list[str] = []
    a.on_member(lambda e, p: deaths.append(e.kind) if e.kind in ("suspect", "dead") else None)
    sent = 0
    sending = True

    async def stream() -> None:
        nonlocal sent
        while sending:
            await a.send("b", {"n": sent})
            sent += 1
            await asyncio.sleep(0.02)

    moves: list[float] = []
    failovers: list[float] = []
    returns: list[float] = []
    misses = 0
    try:
        if not await wait_for(lambda: a.stats().paths.get("b", {}).get("transport") == "udp"
                              and len(a.stats().paths["b"]["endpoints"]) == 2, 20):
            raise SystemExit(f"{label}: the two members did not find both paths")
        await asyncio.sleep(config.path_probe_standby_s + 1)  # both paths confirmed, steady
        sender = asyncio.create_task(stream())
        for _ in range(cuts):
            await asyncio.sleep(rng.uniform(1.0, 3.0))  # a random phase against the probes
            moved, failover, back = await cut_once(a_lan, a_relay, switches, cut_s)
            if moved is not None:
                moves.append(moved)
            if failover is None:
                misses += 1
            else:
                failovers.append(failover)
            if back is not None:
                returns.append(back)
        sending = False
        await sender
        await wait_for(lambda: len(set(received)) >= sent, 10)
        await asyncio.sleep(0.5)
    finally:
        sending = False
        probes = a.stats().sent_by_type.get("PATH_PROBE", 0)
        await a.stop()
        await b.stop()
        await relay.close()
    return {"label": label, "moves": moves, "failovers": failovers, "returns": returns, "misses": misses,
            "sent": sent,
            "lost": sent - len(set(received)), "duplicates": len(received) - len(set(received)),
            "suspicions": deaths.count("suspect"), "deaths": deaths.count("dead"), "probes": probes}


def report(r: dict) -> None:
    f, back = r["failovers"], r["returns"]
    print(f"{r['label']}: {len(f)} cuts")
    if r["moves"]:
        m = r["moves"]
        print(f"  messages on the relay  p50 {pct(m, 50):.2f} s  p99 {pct(m, 99):.2f} s  max {max(m):.2f} s")
    if f:
        print(f"  switch to the relay    p50 {pct(f, 50):.2f} s  p99 {pct(f, 99):.2f} s  max {max(f):.2f} s"
              f"  (not within the cut: {r['misses']})")
    if back:
        print(f"  back to UDP            p50 {pct(back, 50):.2f} s  p99 {pct(back, 99):.2f} s  "
              f"max {max(back):.2f} s")
    print(f"  messages: {r['sent']} sent, {r['lost']} lost, {r['duplicates']} delivered twice; "
          f"suspicions {r['suspicions']}, deaths {r['deaths']}; path probes sent by a: {r['probes']}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=20, help="cuts with FlowMesh's defaults")
    parser.add_argument("--baseline-cuts", type=int, default=6,
                        help="cuts with Tailscale's timers (0: skip)")
    parser.add_argument("--cut-s", type=float, default=8.0, help="seconds each cut lasts")
    parser.add_argument("--baseline-cut-s", type=float, default=20.0,
                        help="seconds each cut of the baseline lasts")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ours = await measure("FlowMesh defaults", MeshConfig(), args.cuts, args.cut_s, args.seed)
    report(ours)
    if args.baseline_cuts:
        theirs = await measure("Tailscale's timers (baseline)", TAILSCALE, args.baseline_cuts,
                               args.baseline_cut_s, args.seed)
        report(theirs)
        if ours["moves"] and theirs["moves"]:
            print(f"  messages on the relay, p50 ratio, baseline / ours: "
                  f"{pct(theirs['moves'], 50) / pct(ours['moves'], 50):.1f}x")
    goal = ours["failovers"] and pct(ours["failovers"], 99) <= 3.0 and not ours["lost"] and not ours["misses"]
    print(f"goal (p99 <= 3 s, nothing lost): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
