"""The edge agent's steady footprint at its default interval.

    python bench/agent_footprint.py [--duration 120] [--warmup 15] [--interval 10]
                                    [--database-url URL]

Starts ``flowmesh-edge run`` as a child process (default interval: one
heartbeat every 10 s), lets it warm up, then samples its resident memory and
CPU time through psutil for ``--duration`` seconds. Reports steady RSS (max
and median over the window) and CPU as a percentage of one core (CPU seconds
used in the window / wall seconds). Goals: under 60 MB and under 1% of a
core. Without --database-url a throwaway embedded server is started.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    ap.add_argument("--interval", type=float, default=10.0, help="agent heartbeat interval")
    ap.add_argument("--database-url")
    args = ap.parse_args()

    agent = Path(sys.executable).parent / "flowmesh-edge"
    with bench_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [str(agent), "run", "--database-url", url, "--node-id", "bench-node",
             "--interval", str(args.interval), "--outbox", os.path.join(tmp, "o.sqlite3"),
             "--log-level", "warning"],
        )
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
        with psycopg.connect(url) as c:
            (beats,) = c.execute("select count(*) from mesh_heartbeats").fetchone()

    cpu_pct = 100 * cpu / wall
    print(f"flowmesh-edge run --interval {args.interval:g}: {wall:.0f} s measured after "
          f"{args.warmup:g} s warm-up, {beats} heartbeats stored")
    print(f"resident memory: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB "
          f"(goal < 60 MB): {'met' if max(rss) < 60 else 'NOT met'}")
    print(f"CPU: {cpu:.2f} s in {wall:.0f} s = {cpu_pct:.2f}% of one core "
          f"(goal < 1%): {'met' if cpu_pct < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
