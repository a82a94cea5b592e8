"""Server CPU per heartbeat, in the fleet's shape: what one device's call costs the server.

    python bench/heartbeat_cost.py [--devices 2000] [--calls 4000] [--threads 8]
                                   [--repeat 3] [--profile] [--database-url URL]

bench/fleet.py shows that the server's CPU per heartbeat is what bounds the
fleet one server carries. This measures that cost alone, with no simulated
devices competing for the machine: --threads connections (psycopg,
autocommit, ``prepare_threshold=None``, as the shipper connects through a
transaction pooler: the top-level statement is parsed and planned on every
call) each ship for their own devices, every device its own tetrahedron with
one registered node, one heartbeat per call with the agent's payload
(metrics and version), seq increasing, at = now. Phases, interleaved and
repeated (median reported, with the range over the repeats):

* ``rpc``: the shipper's own statement (flowmesh/queries.sql
  ``record_heartbeats``), ``record_mesh_heartbeats`` with a one-element batch;
* ``insert`` (baseline): a plain single-row INSERT of the same row into
  mesh_heartbeats per transaction, which fires the same trigger (the node
  record, the tetrahedron, the status history) but skips the RPC's
  authorization, validation and partition check.

Figures per phase: server CPU per call (every postgres process: postmaster,
its live children and the reaped ones, as bench/fleet.py measures it), the
CPU of the calling backends alone (less noisy: no checkpointer or autovacuum),
and wall time per call. The ratio rpc / insert is what the RPC adds on top of
a write. --profile also prints, for one extra rpc phase, the PL/pgSQL
functions' time per call (track_functions = 'pl', pg_stat_user_functions).
Without --database-url a throwaway embedded server is started in a temporary
directory; with it, the server must be on this machine (its processes are
measured) and the caller a superuser.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, q, server_cpu_s  # noqa: E402

from flowmesh import __version__, database  # noqa: E402
from flowmesh.queries import query  # noqa: E402


def payload(device: int, seq: int) -> str:
    """The agent's heartbeat payload (MetricsSampler.sample()'s shape), varying a little."""
    cpu = 5 + (device * 7 + seq * 3) % 60
    return json.dumps({
        "metrics": {"cpu_percent": float(cpu), "memory_percent": 41.5 + seq % 5,
                    "uptime_s": 86_400 + seq * 10, "load_1m": round(cpu / 50, 2),
                    "battery_percent": 90.0 - (seq % 40) / 10, "power_plugged": False,
                    "temperature_c": 45.0 + device % 10},
        "agent": {"version": __version__},
    }, separators=(",", ":"))


def backends_cpu_s(backends: list[psutil.Process]) -> float:
    total = 0.0
    for b in backends:
        t = b.cpu_times()
        total += t.user + t.system
    return total


class Fleet:
    """The devices (tetrahedron id, node id, next seq) and one connection per thread."""

    def __init__(self, url: str, devices: int, threads: int):
        with database.connect(url) as conn:
            self.ids = [str(conn.execute(q("register_device"), (f"cost-{i:05d}", node(i))).fetchone()[0])
                        for i in range(devices)]
        self.seq = [0] * devices
        self.conns = [database.connect(url, application_name="heartbeat_cost") for _ in range(threads)]
        self.backends = [psutil.Process(c.execute(q("backend_pid")).fetchone()[0]) for c in self.conns]

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def run(self, calls: int, one_call) -> float:
        """calls calls spread over the threads, device after device; wall seconds."""
        threads = len(self.conns)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            conn, devices = self.conns[k], len(self.ids)
            try:
                for n in range(k, calls, threads):
                    d = n % devices
                    self.seq[d] += 1  # a device belongs to one thread (devices % threads == 0)
                    one_call(conn, d, self.seq[d])
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        return wall


def node(i: int) -> str:
    return f"device-{i:05d}"


def apply_sql_dir(admin_url: str, name: str, sql_dir: Path) -> str:
    """A database named name with the sql/ files of sql_dir applied in order (as
    the Alembic chain applies them, one file per revision); returns its URL."""
    database.create_database(admin_url, name)
    url = make_conninfo(admin_url, dbname=name)
    with database.connect(url) as conn:
        for f in sorted(sql_dir.glob("[0-9][0-9][0-9][0-9]_*.sql")):
            conn.execute(f.read_text())
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--calls", type=int, default=4_000, help="calls per phase")
    ap.add_argument("--threads", type=int, default=8, help="concurrent connections")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="also time the PL/pgSQL functions of one rpc phase (track_functions)")
    ap.add_argument("--before-sql", type=Path, metavar="DIR",
                    help="also measure, interleaved on the same server, a database made from "
                         "another revision's sql/ (git archive REV sql | tar -x -C DIR/..)")
    ap.add_argument("--database-url", help="benchmark this local server (it gains tetrahedrons)")
    args = ap.parse_args()
    if args.devices % args.threads:
        ap.error("--devices must be a multiple of --threads (each device ships from one thread)")

    record = query("record_heartbeats")  # the shipper's own statement

    def rpc(fleet: Fleet, conn: psycopg.Connection, d: int, seq: int) -> None:
        batch = f'[{{"src":"{node(d)}","seq":{seq},"at":{time.time()!r},"payload":{payload(d, seq)}}}]'
        row = conn.execute(record, {"tetrahedron_id": fleet.ids[d], "batch": batch}).fetchone()
        received, inserted, _ = row
        assert (received, inserted) == (1, 1), (received, inserted)

    def insert(fleet: Fleet, conn: psycopg.Connection, d: int, seq: int) -> None:
        conn.execute(q("insert_device_heartbeat"), (fleet.ids[d], node(d), seq, payload(d, seq), time.time()))

    labels = {"insert": "INSERT, one row per transaction (baseline)",
              "rpc": "record_mesh_heartbeats, one heartbeat per call"}
    cpu: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}

    with bench_database(args.database_url) as url:
        with database.connect(url) as admin:
            version = admin.execute(q("server_version")).fetchone()[0]
            postmaster = psutil.Process(admin.execute(q("backend_pid")).fetchone()[0]).parent()
        targets = {"": url}
        if args.before_sql:
            targets[", before"] = apply_sql_dir(url, "flowmesh_bench_before", args.before_sql)
        fleets = {suffix: Fleet(u, args.devices, args.threads) for suffix, u in targets.items()}
        try:
            for suffix, fleet in fleets.items():
                fleet.run(args.devices, functools.partial(rpc, fleet))  # every device's first heartbeat
                with database.connect(targets[suffix]) as admin:
                    admin.execute(q("vacuum_all"))
            for _ in range(args.repeat):
                for name, fn in (("insert", insert), ("rpc", rpc)):
                    for suffix, fleet in fleets.items():  # interleaved: drift hits all alike
                        key = name + suffix
                        s0, b0 = server_cpu_s(postmaster), backends_cpu_s(fleet.backends)
                        wall.setdefault(key, []).append(
                            fleet.run(args.calls, functools.partial(fn, fleet)) / args.calls)
                        cpu.setdefault(key, []).append((server_cpu_s(postmaster) - s0) / args.calls)
                        own.setdefault(key, []).append((backends_cpu_s(fleet.backends) - b0) / args.calls)
            profile = (run_profile(url, fleets[""], args.calls, functools.partial(rpc, fleets[""]))
                       if args.profile else None)
        finally:
            for fleet in fleets.values():
                fleet.close()

    report(version, args, labels, list(fleets), cpu, own, wall, profile)


def report(version: str, args, labels: dict[str, str], suffixes: list[str], cpu: dict, own: dict,
           wall: dict, profile) -> None:
    ms = {k: {m: statistics.median(v[k]) * 1000 for m, v in
              (("cpu", cpu), ("own", own), ("wall", wall))} for k in cpu}
    print(f"PostgreSQL {version}; {args.devices} devices (a tetrahedron and a node each), "
          f"{args.threads} connections, {args.calls} one-heartbeat calls per phase; "
          f"median of {args.repeat}")
    print(f"{'phase':<56}{'server CPU ms':>14}{'(range)':>16}{'backends ms':>13}{'wall ms':>9}")
    for suffix in suffixes:
        for name, label in labels.items():
            key = name + suffix
            lo, hi = min(cpu[key]) * 1000, max(cpu[key]) * 1000
            print(f"{label + suffix:<56}{ms[key]['cpu']:>14.3f}{f'({lo:.3f}-{hi:.3f})':>16}"
                  f"{ms[key]['own']:>13.3f}{ms[key]['wall']:>9.3f}")
    for suffix in suffixes:
        r, i = ms["rpc" + suffix]["cpu"], ms["insert" + suffix]["cpu"]
        print(f"rpc / INSERT{suffix} (server CPU per call) = {r / i:.2f}x; the RPC adds {r - i:.3f} ms")
    if args.before_sql:
        for name in labels:
            now, before = ms[name]["cpu"], ms[name + ", before"]["cpu"]
            print(f"{name}: {before:.3f} ms before, {now:.3f} ms now = {now / before:.2f}x")
    if profile:
        print(f"\nPL/pgSQL functions in one rpc phase ({args.calls} calls), ms per call:")
        print(f"{'function':<44}{'calls/call':>11}{'total':>9}{'self':>9}")
        for fname, calls, total, self_ in profile:
            print(f"{fname:<44}{calls / args.calls:>11.2f}{total / args.calls:>9.3f}"
                  f"{self_ / args.calls:>9.3f}")


def run_profile(url: str, fleet: Fleet, calls: int, rpc) -> list[tuple[str, int, float, float]]:
    """One more rpc phase with track_functions = 'pl' on the calling connections:
    each function's calls, total and self time (ms) in that phase."""
    for c in fleet.conns:
        c.execute(q("track_pl_functions"))
    with database.connect(url) as admin:
        before = {r[0]: r[1:] for r in admin.execute(q("function_times")).fetchall()}
        fleet.run(calls, rpc)
        for c in fleet.conns:  # each backend sends its counts now, not when next idle
            c.execute(q("flush_stats"))
            c.execute(q("backend_pid"))
        admin.execute(q("clear_stats_snapshot"))
        after = admin.execute(q("function_times")).fetchall()
    rows = []
    for fname, n, total, self_ in after:
        n0, t0, s0 = before.get(fname, (0, 0.0, 0.0))
        if n > n0:
            rows.append((fname, n - n0, total - t0, self_ - s0))
    return sorted(rows, key=lambda r: -r[3])


if __name__ == "__main__":
    main()
