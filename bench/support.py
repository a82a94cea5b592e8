"""What the benchmarks share: a database to run against, and child processes
measured from the outside (CPU, memory, wakeups, datagrams on loopback)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def bench_database(url: str | None):
    """The URL given (migrated), or a throwaway embedded server's fresh database."""
    from flowmesh import database, embedded, migrations  # only the database benchmarks need them

    if url:
        migrations.upgrade(url)
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp, \
            embedded.package().get_server(Path(tmp) / "pg", cleanup_mode="delete") as pg:
        database.create_database(pg.get_uri(), "flowmesh_bench")
        url = pg.get_uri(database="flowmesh_bench")
        migrations.upgrade(url)
        yield url


def q(name: str) -> str:
    """One of the benchmarks' named statements (bench/queries.sql)."""
    from flowmesh.queries import named

    return named(Path(__file__).with_name("queries.sql"), name)


# -- figures -------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    """The p-th percentile, nearest rank (so p99 of 190 values is the 189th)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def server_cpu_s(postmaster) -> float:
    """CPU seconds of a PostgreSQL server: its postmaster (a psutil.Process), the
    children it reaped, and the ones alive now (backends that exited are in
    the reaped figure, so a server's whole cost is counted)."""
    import psutil  # noqa: PLC0415 (only the database benchmarks need it)

    t = postmaster.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


# -- child processes -----------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the child if this process dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the explicit cleanup still runs
        pass


class Children:
    """Every child process started by a benchmark, killed when it ends.

    Children are killed on the way out of the ``with`` block (normal end,
    exception, Ctrl-C, or SIGTERM, which is turned into KeyboardInterrupt),
    and by the kernel if the benchmark itself is killed (``die_with_parent``).
    """

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def add(self, pid: int) -> None:
        self.pids.add(pid)

    def discard(self, pid: int) -> None:
        self.pids.discard(pid)

    def kill_all(self) -> None:
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.pids):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        self.pids.clear()

    def __enter__(self) -> Children:
        def interrupted(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        self._previous = signal.signal(signal.SIGTERM, interrupted)
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()
        signal.signal(signal.SIGTERM, self._previous)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One process read from /proc: CPU seconds (user + system, all threads),
    resident memory, and voluntary context switches (each one a sleep that
    ended: a timer or a socket waking the process), summed over its threads.
    ``pss_mb`` is the resident memory with each page shared by k processes
    counted 1/k: what one member of many on a device costs (NaN where the
    kernel has no smaps_rollup)."""

    cpu_s: float
    rss_mb: float
    wakeups: int
    pss_mb: float = math.nan

    @classmethod
    def read(cls, pid: int) -> ProcSample:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        rss = 0.0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        wakeups = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        wakeups += int(line.split()[1])
        pss = math.nan
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
        return cls(cpu, rss, wakeups, pss)


def free_ports(n: int, udp: bool = True) -> list[int]:
    """n ports on 127.0.0.1 free for TCP (and UDP) right now, held until all are chosen."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind(("127.0.0.1", 0))
            held.append(t)
            port = t.getsockname()[1]
            if udp:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    u.close()
                    continue
                held.append(u)
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


# -- datagrams counted by the kernel ---------------------------------------------

#: IPv4 and UDP headers (no IP options on loopback), in the byte counts nftables keeps.
IP_UDP_HEADERS = 20 + 8


class PortCount(NamedTuple):
    """What the kernel counted on one port: datagrams, and their payload bytes."""

    sent: int
    received: int
    sent_bytes: int
    received_bytes: int


class LoopbackCounters:
    """UDP datagrams sent from and received on given ports of 127.0.0.1, counted
    by nftables rules (counters only, policy accept: nothing is dropped or
    changed) in a table of this process's own, removed at exit.

    This counts what each process really puts on the wire, whatever the
    program is, so Serf (which keeps no such counter) and FlowMesh are counted
    the same way. Needs root and the ``nft`` command; ``available`` says
    whether both are there.
    """

    def __init__(self) -> None:
        self.table = f"flowmesh_bench_{os.getpid()}"
        self.available = shutil.which("nft") is not None and os.geteuid() == 0
        self.ports: set[int] = set()
        self.created = False

    def _nft(self, script: str) -> str:
        out = subprocess.run(["nft", "-f", "-"] if script else ["nft", "-j", "list", "table", "inet",
                                                                self.table],
                             input=script or None, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"nft: {out.stderr.strip()}")
        return out.stdout

    def watch(self, ports: list[int]) -> bool:
        """Count these ports from now on; False if counting is not possible here."""
        if not self.available:
            return False
        lines = []
        if not self.created:
            lines += [f"add table inet {self.table}",
                      f"add chain inet {self.table} out {{ type filter hook output priority 0; "
                      "policy accept; }",
                      f"add chain inet {self.table} in {{ type filter hook input priority 0; "
                      "policy accept; }"]
        for port in ports:
            if port in self.ports:
                continue
            lines += [f"add rule inet {self.table} out ip saddr 127.0.0.1 udp sport {port} counter",
                      f"add rule inet {self.table} in ip daddr 127.0.0.1 udp dport {port} counter"]
        try:
            self._nft("\n".join(lines) + "\n")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"note: datagrams are not counted by the kernel here ({exc})", file=sys.stderr)
            self.available = False
            return False
        self.created = True
        self.ports.update(ports)
        return True

    def read(self) -> dict[int, PortCount]:
        """port -> datagrams and bytes sent from it and received on it, since watch()."""
        if not self.created:
            return {}
        counts: dict[int, list[int]] = {}
        for item in json.loads(self._nft(""))["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            port = direction = packets = size = None
            for expr in rule["expr"]:
                match = expr.get("match")
                if match and match["left"].get("payload", {}).get("protocol") == "udp":
                    port = match["right"]
                    direction = 0 if match["left"]["payload"]["field"] == "sport" else 1
                if "counter" in expr:
                    packets, size = expr["counter"]["packets"], expr["counter"]["bytes"]
            if port is not None and packets is not None:
                count = counts.setdefault(port, [0, 0, 0, 0])
                count[direction] = packets
                # the kernel counts whole IPv4 packets: the datagram's own bytes without the headers
                count[2 + direction] = size - IP_UDP_HEADERS * packets
        return {p: PortCount(*c) for p, c in counts.items()}

    def close(self) -> None:
        if self.created:
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                self._nft(f"delete table inet {self.table}\n")
            self.created = False

    def __enter__(self) -> LoopbackCounters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
