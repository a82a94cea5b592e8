"""The dashboard at fleet scale: page server time, live latency, memory.

    python bench/dashboard.py [--tetrahedrons 1000] [--nodes-per-tetrahedron 10]
                              [--heartbeats 10000000] [--requests 100] [--clients 50]
                              [--commits 60] [--database-url URL]

Fills a fresh database with --tetrahedrons tetrahedrons of
--nodes-per-tetrahedron nodes, --heartbeats heartbeats spread over two days,
a path between every two members of a tetrahedron and the alerts the check
opens, then starts `flowmesh dashboard` on it and measures in one run:

* server time of the overview (/api/fleet) and of a tetrahedron's page
  (/api/tetrahedrons/NAME, its heatmap and one node's page), --requests each
  over a kept-alive loopback connection, against the same SQL run straight
  through psycopg (the baseline: what the database alone costs);
* time from a heartbeat's commit to its `change` event at --clients SSE
  clients of /api/events, against a plain LISTEN connection (the floor);
* the dashboard's resident memory when idle, after the page load and with the
  SSE clients connected.

Goals: page p95 under 200 ms; commit to SSE event p95 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, free_ports, pct, q  # noqa: E402


def fill(conn, args) -> None:
    per_node = max(1, args.heartbeats // (args.tetrahedrons * args.nodes_per_tetrahedron))
    t0 = time.perf_counter()
    conn.execute(q("keep_forty_days"))
    for day in range(0, 4):
        conn.execute(q("ensure_partition_days_ago"), (day,))
    conn.execute(q("fill_tetrahedrons"), {"n": args.tetrahedrons, "every": 100})
    conn.execute(q("fill_fleet_nodes"), {"per_tetrahedron": args.nodes_per_tetrahedron})
    conn.execute(q("fill_vertices"))
    conn.execute(q("heartbeat_triggers_off"))
    g = 1
    while g <= per_node:
        last = min(g + 99, per_node)
        conn.execute(q("fill_heartbeats"), {"first": g, "last": last, "per_node": per_node,
                                            "span_s": 2 * 86400})
        print(f"  heartbeats per node: {last}/{per_node} ({time.perf_counter() - t0:.0f} s)", flush=True)
        g = last + 1
    conn.execute(q("heartbeat_triggers_on"))
    conn.execute(q("latest_heartbeat_each_node"), {})
    conn.execute(q("fill_mesh_links"))
    conn.execute(q("check_all"))
    conn.execute(q("prediction_pass"))
    conn.execute(q("vacuum_all"))
    rows = conn.execute(q("heartbeat_count")).fetchone()[0]
    print(f"filled {args.tetrahedrons} tetrahedrons, {args.tetrahedrons * args.nodes_per_tetrahedron} nodes, "
          f"{rows:,} heartbeats in {time.perf_counter() - t0:.0f} s", flush=True)


def start_dashboard(url: str, port: int) -> subprocess.Popen:
    flowmesh = Path(sys.executable).with_name("flowmesh")
    proc = subprocess.Popen([str(flowmesh), "dashboard", "--database-url", url, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the dashboard exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the dashboard did not answer within 30 s")


def http_times(port: int, paths: list[str]) -> list[float]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for path in paths:
        start = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        times.append((time.perf_counter() - start) * 1000)
        if r.status != 200:
            raise SystemExit(f"GET {path}: {r.status} {body[:300]!r}")
    c.close()
    return times


def sql_times(conn, name: str, params_list: list) -> list[float]:
    times = []
    for params in params_list:
        start = time.perf_counter()
        conn.execute(q(name), params).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    return times


def row(label: str, times: list[float], baseline: list[float] | None = None) -> str:
    text = f"{label:<46}{pct(times, 50):>9.1f}{pct(times, 95):>9.1f}{max(times):>9.1f} ms"
    if baseline:
        text += f"   SQL alone p95 {pct(baseline, 95):6.1f} ms ({pct(times, 95) / pct(baseline, 95):.1f}x)"
    return text


async def sse_client(port: int, clients: int, ready: asyncio.Event, arrivals: dict, key: int,
                     stop: asyncio.Event, connected: list) -> None:
    """One SSE stream, read line by line: the time each `change` event arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    connected.append(key)
    if len(connected) >= clients:
        ready.set()
    event = None
    try:
        while not stop.is_set():
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
            except TimeoutError:
                continue
            if not line:
                return
            text = line.decode(errors="replace").strip()
            if text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:") and event == "change":
                arrivals.setdefault(key, []).append(time.perf_counter())
    finally:
        writer.close()


async def live_latency(port: int, url: str, name: str, clients: int, commits: int) -> tuple[list, list]:
    ready = asyncio.Event()
    stop = asyncio.Event()
    arrivals: dict[int, list[float]] = {}
    connected: list[int] = []
    tasks = [asyncio.create_task(sse_client(port, clients, ready, arrivals, k, stop, connected))
             for k in range(clients)]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(1.0)  # every stream past its headers
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute(q("listen_changes"))
    floor: list[float] = []
    sse: list[float] = []
    with psycopg.connect(url, autocommit=True) as writer:
        for _ in range(commits):
            for times in arrivals.values():
                times.clear()
            await asyncio.to_thread(lambda: writer.execute(q("bench_heartbeat"), (name,)).fetchall())
            committed = time.perf_counter()
            async for _n in listener.notifies(timeout=2.0, stop_after=1):
                floor.append((time.perf_counter() - committed) * 1000)
            deadline = time.perf_counter() + 3.0
            while time.perf_counter() < deadline and sum(1 for k in arrivals if arrivals[k]) < clients:
                await asyncio.sleep(0.005)
            sse.extend((min(ts) - committed) * 1000 for ts in arrivals.values() if ts)
            missing = clients - sum(1 for ts in arrivals.values() if ts)
            sse.extend([float("inf")] * missing)
            await asyncio.sleep(0.2 + random.random() * 0.1)
    await listener.close()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sse, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tetrahedrons", type=int, default=1000)
    ap.add_argument("--nodes-per-tetrahedron", type=int, default=10)
    ap.add_argument("--heartbeats", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--commits", type=int, default=60)
    ap.add_argument("--database-url", help="benchmark this server (fills it with data!)")
    args = ap.parse_args()
    random.seed(7)

    with bench_database(args.database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute(q("server_version")).fetchone()[0]
        fill(conn, args)
        names = [r[0] for r in conn.execute(q("fleet_tetrahedron_names"))]
        picks = [random.choice(names) for _ in range(args.requests)]
        (port,) = free_ports(1, udp=False)
        dashboard = start_dashboard(url, port)
        try:
            proc = psutil.Process(dashboard.pid)
            idle_mb = proc.memory_info().rss / 2**20
            http_times(port, ["/api/fleet"] * 3)  # warm: plans cached, pool filled
            fleet = http_times(port, ["/api/fleet"] * args.requests)
            fleet_sql = sql_times(conn, "sql_fleet", [None] * args.requests)
            tetra = http_times(port, [f"/api/tetrahedrons/{n}" for n in picks])
            heat = http_times(port, [f"/api/tetrahedrons/{n}/heatmap?bucket=5m&buckets=40" for n in picks])
            tetra_sql = sql_times(conn, "sql_tetrahedron", [(n,) for n in picks])
            node = http_times(port, [f"/api/tetrahedrons/{n}/nodes/n0{random.randrange(10)}?window=1h"
                                     for n in picks])
            loaded_mb = proc.memory_info().rss / 2**20
            sse, floor = asyncio.run(live_latency(port, url, picks[0], args.clients, args.commits))
            live_mb = proc.memory_info().rss / 2**20
        finally:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()

    report(args, version, fleet, fleet_sql, tetra, tetra_sql, heat, node, sse, floor,
           (idle_mb, loaded_mb, live_mb))


def report(args, version, fleet, fleet_sql, tetra, tetra_sql, heat, node, sse, floor, memory) -> None:
    idle_mb, loaded_mb, live_mb = memory
    nodes = args.tetrahedrons * args.nodes_per_tetrahedron
    print(f"\nPostgreSQL {version}: {args.tetrahedrons} tetrahedrons, {nodes} nodes, "
          f"{args.heartbeats:,} heartbeats; {args.requests} requests each, one kept-alive connection")
    print(f"{'server time (HTTP on loopback)':<46}{'p50':>9}{'p95':>9}{'max':>9}")
    print(row("overview: /api/fleet", fleet, fleet_sql))
    print(row("tetrahedron page: /api/tetrahedrons/NAME", tetra, tetra_sql))
    print(row("  its heatmap (5 min x 40)", heat))
    print(row("node page (1 h, 60 buckets)", node))
    worst = max(pct(fleet, 95), pct(tetra, 95), pct(heat, 95), pct(node, 95))
    print(f"page p95 under 200 ms: {'met' if worst < 200 else 'NOT met'} (worst p95 {worst:.1f} ms)")
    lost = sum(1 for v in sse if v == float("inf"))
    got = [v for v in sse if v != float("inf")]
    print(f"\ncommit -> SSE change event, {args.clients} clients x {args.commits} commits: "
          f"p50 {pct(got, 50):.0f} ms, p95 {pct(got, 95):.0f} ms, max {max(got):.0f} ms, {lost} missed; "
          f"plain LISTEN p50 {pct(floor, 50):.1f} ms, p95 {pct(floor, 95):.1f} ms")
    print(f"commit to SSE p95 under 1 s: {'met' if pct(sse, 95) < 1000 else 'NOT met'}")
    print(f"\ndashboard memory (RSS): idle {idle_mb:.0f} MB, after the page load {loaded_mb:.0f} MB, "
          f"with {args.clients} SSE clients {live_mb:.0f} MB")
    print(f"(medians of the SQL baseline: overview {statistics.median(fleet_sql):.1f} ms, "
          f"tetrahedron {statistics.median(tetra_sql):.1f} ms)")


if __name__ == "__main__":
    main()
