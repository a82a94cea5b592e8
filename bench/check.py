"""Check and prediction at fleet scale.

    python bench/check.py [--tetrahedrons 100000] [--heartbeats 10000000] [--nodes 10000]
                          [--stale 0.01] [--repeat 11] [--database-url URL]

Fills a fresh database with --tetrahedrons tetrahedrons (--stale of them
silent for hours, the rest heard from in the last half hour) and --nodes nodes,
then times check_mesh_heartbeats_and_alert(60) twice in the same run: with a
heartbeat log of 100,000 rows, and again after growing it to --heartbeats
rows (30 days of history). Each time: the first run (which opens one alert per
stale tetrahedron) and the steady run (median of --repeat; nothing new to
open). Then times run_prediction_pass() over the nodes. Prints the figures,
the ratios against the goals, and the query plans that explain them.

Goals: the check under 250 ms; its time at the large log within 2x its time
at 100k rows; the prediction pass over 10,000 nodes under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, q  # noqa: E402


def timed(conn, sql: str, params=None) -> float:
    start = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return (time.perf_counter() - start) * 1000


def check_times(conn, repeat: int) -> tuple[float, float]:
    # both phases start alike: no alerts, and no dead index entries left behind
    conn.execute(q("delete_alerts"))
    conn.execute(q("vacuum_check_tables"))
    first = timed(conn, q("check_all"))
    steady = statistics.median(
        timed(conn, q("check_all")) for _ in range(repeat))
    return first, steady


def grow(conn, total_per_node: int, have_per_node: int, span_s: float, chunk_per_node: int) -> None:
    g = have_per_node + 1
    while g <= total_per_node:
        last = min(g + chunk_per_node - 1, total_per_node)
        conn.execute(q("fill_heartbeats"),
                     {"first": g, "last": last, "per_node": total_per_node, "span_s": span_s})
        print(f"  heartbeats per node: {last}/{total_per_node}", flush=True)
        g = last + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tetrahedrons", type=int, default=100_000)
    ap.add_argument("--heartbeats", type=int, default=10_000_000)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--stale", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--database-url", help="benchmark this server (fills it with data!)")
    args = ap.parse_args()
    small_per_node = max(1, 100_000 // args.nodes)
    total_per_node = max(small_per_node, args.heartbeats // args.nodes)

    with bench_database(args.database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute(q("server_version")).fetchone()[0]
        t0 = time.perf_counter()
        conn.execute(q("keep_forty_days"))
        for day in range(0, 32):
            conn.execute(q("ensure_partition_days_ago"), (day,))
        conn.execute(q("fill_tetrahedrons"), {"n": args.tetrahedrons, "every": max(1, round(1 / args.stale))})
        conn.execute(q("fill_nodes"), (args.nodes,))
        conn.execute(q("fill_vertices"))
        conn.execute(q("heartbeat_trigger_off"))
        grow(conn, small_per_node, 0, 1800, small_per_node)
        conn.execute(q("vacuum_all"))
        (stale,) = conn.execute(q("stale_count")).fetchone()
        small_rows = conn.execute(q("heartbeat_count")).fetchone()[0]
        small = check_times(conn, args.repeat)
        print(f"filled {args.tetrahedrons} tetrahedrons, {args.nodes} nodes, {small_rows} heartbeats "
              f"in {time.perf_counter() - t0:.0f} s; {stale} stale", flush=True)

        grow(conn, total_per_node, small_per_node, 30 * 86400, 100)
        conn.execute(q("heartbeat_trigger_on"))
        conn.execute(q("vacuum_all"))
        big_rows = conn.execute(q("heartbeat_count")).fetchone()[0]
        big = check_times(conn, args.repeat)
        predict = [timed(conn, q("prediction_pass")) for _ in range(3)]
        plan_check = "\n".join(r[0] for r in conn.execute(q("plan_check")))
        node = conn.execute(q("any_node")).fetchone()
        plan_predict = "\n".join(r[0] for r in conn.execute(q("plan_predict"), node))

    print(f"\nPostgreSQL {version}: {args.tetrahedrons} tetrahedrons ({stale} stale), {args.nodes} nodes")
    print(f"{'check_mesh_heartbeats_and_alert(60)':<44}{'first run':>12}{'steady':>12}")
    print(f"{f'  heartbeat log of {small_rows:,} rows':<44}{small[0]:>10.1f}ms{small[1]:>10.1f}ms")
    print(f"{f'  heartbeat log of {big_rows:,} rows':<44}{big[0]:>10.1f}ms{big[1]:>10.1f}ms")
    ratio = big[1] / small[1]
    print(f"check under 250 ms: {'met' if max(big) < 250 else 'NOT met'} (worst {max(big):.1f} ms); "
          f"large/small log = {ratio:.2f}x (goal <= 2x): {'met' if ratio <= 2 else 'NOT met'}")
    p = statistics.median(predict)
    print(f"run_prediction_pass() over {args.nodes} nodes: median {p:.0f} ms of 3 "
          f"(goal < 2000 ms): {'met' if p < 2000 else 'NOT met'}")
    print("\nplan of the stale scan inside the check:\n" + plan_check)
    print("\nplan of one node's window inside the prediction:\n" + plan_predict)


if __name__ == "__main__":
    main()
