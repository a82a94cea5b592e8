"""One mesh device for bench/mesh.py: a process hosting one (or a few) MeshNode(s).

    python bench/mesh_member.py --key KEY --name m-001 [--name m-002 ...]
                                [--peer 127.0.0.1:PORT] [--loss 0.1] [--seed 7]
                                [--encrypt on|off] [--eager-import]

Members bind 127.0.0.1 on a free port, default MeshConfig: what they send is
sealed (ChaCha20-Poly1305), or with ``--encrypt off`` only authenticated
(HMAC), as ``MeshConfig(encrypt=False)``. The process speaks
JSON lines: events on stdout, commands on stdin. Times are time.monotonic(),
which on Linux is one clock for every process, so the coordinator can
subtract its own readings from ours.

Events: {"ev": "ready", "ports": {name: port}, "t"}, {"ev": "member", "at",
"node", "kind", "t"} for each membership event a member sees, {"ev": "got",
"at", "trial", "t"} when a member receives a broadcast, and the answers below.

Commands: {"cmd": "stats"} -> {"ev": "stats", "stats": {name: {...}}};
{"cmd": "broadcast", "at": name, "trial": k} -> {"ev": "sent", "t"};
{"cmd": "profile", "seconds": s, "path": p} -> cProfile of the whole process
for s seconds, written to p, then {"ev": "profiled"}; {"cmd": "stop"}. The
process stops when stdin closes, so it never outlives the coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Out:
    """stdout without blocking the loop: a coordinator slow to read must not
    stall the members (a stalled loop misses probe deadlines and looks dead)."""

    writer: asyncio.WriteTransport | None = None


def emit(event: dict) -> None:
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    if Out.writer is None:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    else:
        Out.writer.write(line)  # buffered by the loop, written when the pipe has room


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--name", action="append", required=True)
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encrypt", choices=["on", "off"], default="on",
                    help="seal what the members send (the default), or only authenticate it")
    ap.add_argument("--eager-import", action="store_true",
                    help="import the agent, outbox and shipper too, as the package once did")
    args = ap.parse_args()
    if args.eager_import:
        import flowmesh_edge.agent  # noqa: F401
        import flowmesh_edge.outbox  # noqa: F401
        import flowmesh_edge.shipper  # noqa: F401
    from flowmesh_edge.mesh import LossyTransport, MeshConfig, MeshNode, MessageType, UdpTransport

    loop = asyncio.get_running_loop()
    Out.writer, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    config = MeshConfig(encrypt=args.encrypt == "on")
    peers = [(h, int(p)) for h, p in (x.rsplit(":", 1) for x in args.peer)]
    nodes: dict[str, MeshNode] = {}
    lossy: dict[str, LossyTransport] = {}
    for i, name in enumerate(args.name):
        transport = UdpTransport("127.0.0.1", 0)
        if args.loss:
            transport = lossy[name] = LossyTransport(transport, args.loss, args.seed + i)
        node = MeshNode(name, port=0, mesh_key=args.key, bind="127.0.0.1", peers=peers,
                        transport=transport, seed=args.seed + i, config=config)
        node.on_member(lambda e, p, at=name: emit(
            {"ev": "member", "at": at, "node": e.node_id, "kind": e.kind, "t": time.monotonic()}))
        node.on(MessageType.ROUTE_BROADCAST, lambda m, at=name: emit(
            {"ev": "got", "at": at, "trial": m.payload.get("trial"), "t": time.monotonic()}))
        await node.start()
        nodes[name] = node
        peers = peers or [node.address]  # the next ones join through the first
    emit({"ev": "ready", "ports": {n: node.address.port for n, node in nodes.items()},
          "t": time.monotonic()})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            if not await serve(json.loads(line), nodes, lossy):
                break
    finally:
        for node in nodes.values():
            await node.stop(leave=False)


async def serve(cmd: dict, nodes: dict, lossy: dict) -> bool:
    """Answer one command; False when told to stop."""
    what = cmd.get("cmd")
    if what == "stats":
        emit({"ev": "stats", "t": time.monotonic(), "stats": {
            n: {"sent": s["sent"], "received": s["received"], "suspicions": s["suspicions"],
                "refutations": s["refutations"], "deaths": s["deaths"],
                "incarnation": s["incarnation"], "members": s["members"],
                "dropped_by_loss": lossy[n].dropped if n in lossy else 0}
            for n, s in ((n, node.stats()) for n, node in nodes.items())}})
    elif what == "broadcast":
        t = time.monotonic()
        await nodes[cmd["at"]].broadcast({"trial": cmd["trial"]})
        emit({"ev": "sent", "at": cmd["at"], "trial": cmd["trial"], "t": t})
    elif what == "profile":
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
        await asyncio.sleep(float(cmd["seconds"]))
        profiler.disable()
        profiler.dump_stats(cmd["path"])
        emit({"ev": "profiled", "path": cmd["path"]})
    elif what == "stop":
        return False
    return True

if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, BrokenPipeError):
        pass
