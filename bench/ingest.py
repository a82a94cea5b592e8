"""Ingest benchmark: the RPCs against raw writes into the same table.

    python bench/ingest.py [--rows 100000] [--batch-size 500] [--single 5000]
                           [--repeat 3] [--database-url URL]

Measured in one run, on one server, into the same table (emptied before every
phase, so each starts from the same state):

* batched: ``record_mesh_heartbeats`` with ``--batch-size`` heartbeats per
  call, one call per transaction, against a raw ``COPY`` of the same rows in
  transactions of the same size;
* single: ``record_mesh_heartbeat`` calls, one per transaction, against plain
  single-row ``INSERT`` statements, one per transaction.

Both baselines fire the same trigger (it maintains last_heartbeat_at and the
nodes rows for every write path), so the ratios measure what the RPCs add:
authorization, validation, JSON parsing and idempotency. Goals: batched >=
50% of COPY, single >= 70% of INSERT. Each phase runs ``--repeat`` times;
the median is reported. Without --database-url a throwaway embedded server is
started in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, q  # noqa: E402


def payload(i: int) -> str:
    return json.dumps({
        "metrics": {"cpu_percent": i % 100, "memory_percent": 41.5, "latency_ms": 28.0,
                    "packet_loss": 0.02, "battery_percent": 82.0, "temperature_c": 48.5},
        "agent": {"version": "0.1.0"},
    }, separators=(",", ":"))


def sources(i: int) -> str:
    return f"node-{i % 50:02d}"


def reset(conn: psycopg.Connection) -> None:
    for statement in ("truncate_heartbeats", "forget_last_heartbeats", "delete_nodes", "vacuum_heartbeats"):
        conn.execute(q(statement))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="heartbeats per batched/COPY phase")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--single", type=int, default=5_000, help="calls per single-row phase")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url", help="benchmark this server (its data is truncated!)")
    args = ap.parse_args()

    with bench_database(args.database_url) as url, psycopg.connect(url, autocommit=True) as conn:
        (tid,) = conn.execute(q("register_bench_node")).fetchone()
        version = conn.execute(q("server_version")).fetchone()[0]
        now = time.time()
        rows = [(sources(i), i + 1, now - (args.rows - i) * 0.001, payload(i))
                for i in range(args.rows)]
        batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
        batch_json = [
            "[" + ",".join(f'{{"src":"{s}","seq":{seq},"at":{a!r},"payload":{p}}}'
                           for s, seq, a, p in b) + "]"
            for b in batches
        ]

        def copy_phase():
            for b in batches:
                with conn.transaction(), conn.cursor().copy(q("copy_heartbeats")) as cp:
                    for s, seq, a, p in b:
                        cp.write_row((tid, s, seq, time.strftime(
                            "%Y-%m-%d %H:%M:%S+00", time.gmtime(a)), p))

        def batched_phase():
            for text in batch_json:
                conn.execute(q("record_batch"), (tid, text))

        single_rows = rows[: args.single]

        def insert_phase():
            for s, _, _, p in single_rows:
                conn.execute(q("insert_heartbeat"), (tid, s, p))

        def single_phase():
            for s, _, _, p in single_rows:
                conn.execute(q("record_one"), (tid, s, p))

        results: dict[str, list[float]] = {k: [] for k in ("copy", "batched", "insert", "single")}
        phases = {"copy": copy_phase, "batched": batched_phase,
                  "insert": insert_phase, "single": single_phase}
        for _ in range(args.repeat):
            for name, fn in phases.items():  # interleaved: drift hits all alike
                reset(conn)
                results[name].append(timed(fn))
                expected = args.rows if name in ("copy", "batched") else args.single
                (n,) = conn.execute(q("heartbeat_count")).fetchone()
                assert n == expected, (name, n, expected)
        # replaying every batch must insert nothing
        reset(conn)
        batched_phase()
        replay = timed(batched_phase)
        (n,) = conn.execute(q("heartbeat_count")).fetchone()
        assert n == args.rows, "replay duplicated rows"

    rate = {k: (args.rows if k in ("copy", "batched") else args.single) / statistics.median(v)
            for k, v in results.items()}
    print(f"PostgreSQL {version}; {args.rows} rows in batches of {args.batch_size}, "
          f"{args.single} single calls; median of {args.repeat}")
    print(f"{'phase':<44}{'rows/s':>12}")
    print(f"{'COPY (baseline)':<44}{rate['copy']:>12,.0f}")
    print(f"{'record_mesh_heartbeats (batched RPC)':<44}{rate['batched']:>12,.0f}")
    print(f"{'INSERT, one row per transaction (baseline)':<44}{rate['insert']:>12,.0f}")
    print(f"{'record_mesh_heartbeat (single RPC)':<44}{rate['single']:>12,.0f}")
    print(f"{'replay of every batch (all duplicates)':<44}{args.rows / replay:>12,.0f}")
    batched_ratio = rate["batched"] / rate["copy"]
    single_ratio = rate["single"] / rate["insert"]
    print(f"batched / COPY   = {batched_ratio:6.1%}  (goal >= 50%): "
          f"{'met' if batched_ratio >= 0.5 else 'NOT met'}")
    print(f"single / INSERT  = {single_ratio:6.1%}  (goal >= 70%): "
          f"{'met' if single_ratio >= 0.7 else 'NOT met'}")


if __name__ == "__main__":
    main()
