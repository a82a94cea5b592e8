"""The clusters bench/mesh.py drives: FlowMesh members, and HashiCorp Serf beside them.

Both clusters run one OS process per member on 127.0.0.1 and offer the same
small interface (start, kill, restart, wait, pid, port), and both keep, for
every member, its view of every other: ``view[observer][node]`` is "alive",
"suspect" or "dead". Every membership change a member sees arrives as an
event with a time:

* FlowMesh: bench/mesh_member.py reports each event (on_member) on stdout,
  stamped with time.monotonic() in the member process itself, at the moment
  the member decides. Resolution: microseconds.
* Serf: each agent logs ``serf: EventMemberJoin: NAME ADDR`` and
  ``serf: EventMemberFailed: NAME ADDR`` (at INFO) the moment memberlist
  tells it; the coordinator stamps each line when it reads it from the
  agent's pipe, a few milliseconds later at most (the coordinator is idle).
  Serf's logs carry whole seconds only, and its event handlers are coalesced
  (up to 3 s), so neither of those would do. ``serf members`` polling would
  add its own process start-up (~10 ms) and poll interval.

Each cluster runs with or without its encryption (``encrypt``): FlowMesh
members seal what they send (the default) or only authenticate it; Serf
agents get ``-encrypt`` (memberlist's AES-GCM under a random 32-byte key of
the run) or run unencrypted. ``label`` names the cluster with its mode.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Children, die_with_parent, free_ports  # noqa: E402

HERE = Path(__file__).resolve().parent
MESH_KEY = "benchmark-mesh-key-000000000000"

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
STATUS_OF = {"joined": ALIVE, "recovered": ALIVE, "suspect": SUSPECT, "dead": DEAD, "left": DEAD,
             "removed": DEAD}


@dataclass
class Startup:
    """When a cluster was started and when it had converged (monotonic seconds)."""

    spawned: float    #: the first of the joining members was started
    ready: float      #: the last member reported itself up (process started, listening)
    converged: float  #: every member saw every other alive (the event that completed it)

    @property
    def from_spawn(self) -> float:
        return self.converged - self.spawned

    @property
    def from_ready(self) -> float:
        return self.converged - self.ready


class Cluster:
    """What both clusters share: the views and the bounded waits on them."""

    system = "?"
    #: what the mode is called, encrypted and not
    MODES = ("encrypted", "unencrypted")

    def __init__(self, children: Children, logdir: Path, encrypt: bool = True):
        self.children = children
        self.encrypt = encrypt
        self.logdir = logdir
        self.names: list[str] = []
        self.view: dict[str, dict[str, str]] = {}
        #: per observer: the time its view last became complete, or None
        self.complete_since: dict[str, float | None] = {}
        #: per observer: how many of the other members it sees alive
        self.alive_count: dict[str, int] = {}
        self.known: set[str] = set()
        #: (time, observer, node, kind), every event seen
        self.events: list[tuple[float, str, str, str]] = []
        self.listeners: list[Callable[[float, str, str, str], None]] = []
        self._changed = asyncio.Event()

    @property
    def label(self) -> str:
        """The system and its mode: "FlowMesh sealed", "Serf unencrypted", ..."""
        return f"{self.system} {self.MODES[0] if self.encrypt else self.MODES[1]}"

    def _member_event(self, t: float, observer: str, node: str, kind: str) -> None:
        if observer == node or observer not in self.view:
            return
        self.events.append((t, observer, node, kind))
        view = self.view[observer]
        before = view.get(node) == ALIVE
        view[node] = STATUS_OF.get(kind, view.get(node, ALIVE))
        if node in self.known:
            self.alive_count[observer] += (view[node] == ALIVE) - before
        complete = self.alive_count[observer] == len(self.names) - 1
        if complete and self.complete_since.get(observer) is None:
            self.complete_since[observer] = t
        elif not complete:
            self.complete_since[observer] = None
        for listener in self.listeners:
            listener(t, observer, node, kind)
        self._changed.set()


    def converged(self) -> bool:
        return all(self.complete_since.get(n) is not None for n in self.names)

    def progress(self) -> str:
        """How far from converged: for a message when a wait ran out."""
        alive = sorted(sum(self.view[o].get(n) == ALIVE for n in self.names if n != o)
                       for o in self.names)
        done = sum(self.complete_since.get(n) is not None for n in self.names)
        least = [o for o in self.names
                 if sum(self.view[o].get(n) == ALIVE for n in self.names if n != o) == alive[0]]
        return (f"{done} of {len(self.names)} members see all others alive; alive seen: "
                f"min {alive[0]}, median {alive[len(alive) // 2]}, of {len(self.names) - 1}; "
                f"seeing fewest: {', '.join(self.describe(o) for o in least[:3])}")

    def describe(self, name: str) -> str:
        """A member, for a message: its name (and what became of its process)."""
        return name

    def converged_at(self) -> float:
        return max(self.complete_since[n] for n in self.names)  # type: ignore[type-var]

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until predicate() holds (True) or timeout seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return True

    def _reset_view(self, name: str) -> None:
        self.known = set(self.names)
        self.view[name] = {}
        self.alive_count[name] = 0
        self.complete_since[name] = None
        for other in self.names:
            if other != name and self.complete_since.get(other) is not None \
                    and self.view[other].get(name) != ALIVE:
                self.complete_since[other] = None


class SerfCluster(Cluster):
    """``serf agent`` processes on 127.0.0.1, LAN profile (Serf's defaults), with
    ``-encrypt`` (gossip encryption) or without."""

    system = "Serf"
    LINE = re.compile(r"serf: (EventMember\w+): (\S+)")
    KINDS = {"EventMemberJoin": "joined", "EventMemberFailed": "dead", "EventMemberLeave": "left",
             "EventMemberReap": "removed"}

    @staticmethod
    def available() -> bool:
        return shutil.which("serf") is not None

    @staticmethod
    def version() -> str:
        import subprocess
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "serf"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown version"

    def __init__(self, children: Children, logdir: Path, encrypt: bool = True):
        super().__init__(children, logdir, encrypt)
        # a throwaway key of this run, as `serf keygen` makes one (base64 of 32 bytes)
        self.key = base64.b64encode(os.urandom(32)).decode() if encrypt else None
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.bind: dict[str, int] = {}
        self.rpc: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []

    async def _spawn(self, name: str, ready: dict[str, float]) -> None:
        args = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{self.bind[name]}",
                "-rpc-addr", f"127.0.0.1:{self.rpc[name]}", "-log-level", "info"]
        if name != self.names[0]:
            args += ["-join", f"127.0.0.1:{self.bind[self.names[0]]}"]
        if self.key:
            args += ["-encrypt", self.key]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=die_with_parent)
        self.children.add(proc.pid)
        self.procs[name] = proc
        self._reset_view(name)
        self.tasks.append(asyncio.create_task(self._read(name, proc, ready)))

    async def _read(self, name: str, proc: asyncio.subprocess.Process, ready: dict[str, float]):
        assert proc.stdout is not None
        with open(self.logdir / f"serf-{name}.log", "ab") as log:
            while line := await proc.stdout.readline():
                t = time.monotonic()
                log.write(line)
                text = line.decode(errors="replace")
                if "Log data will now stream in" in text:
                    ready[name] = t
                    self._changed.set()
                m = self.LINE.search(text)
                if m and m.group(1) in self.KINDS and self.procs.get(name) is proc:
                    self._member_event(t, name, m.group(2), self.KINDS[m.group(1)])

    async def start(self, n: int, timeout: float = 60) -> Startup | None:
        self.names = [f"serf-{i:03d}" for i in range(n)]
        ports = free_ports(2 * n)
        self.bind = dict(zip(self.names, ports[:n], strict=True))
        self.rpc = dict(zip(self.names, ports[n:], strict=True))
        ready: dict[str, float] = {}
        await self._spawn(self.names[0], ready)
        if not await self.wait(lambda: self.names[0] in ready, 30):
            return None
        spawned = time.monotonic()
        for name in self.names[1:]:
            await self._spawn(name, ready)
        ok = await self.wait(lambda: len(ready) == n and self.converged(), timeout)
        if not ok:
            return None
        return Startup(spawned, max(ready[x] for x in self.names[1:]), self.converged_at())

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def port(self, name: str) -> int:
        return self.bind[name]

    async def kill(self, name: str) -> float:
        proc = self.procs.pop(name)
        t = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.children.discard(proc.pid)
        return t

    async def restart(self, name: str) -> None:
        await self._spawn(name, {})

    async def close(self) -> None:
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
            self.children.discard(proc.pid)
        self.procs.clear()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


class FlowMeshCluster(Cluster):
    """bench/mesh_member.py processes, each hosting ``per_process`` members."""

    system = "FlowMesh"
    MODES = ("sealed", "authenticated")

    def __init__(self, children: Children, logdir: Path, per_process: int = 1, loss: float = 0.0,
                 eager_import: bool = False, prefix: str = "fm", encrypt: bool = True):
        super().__init__(children, logdir, encrypt)
        self.per_process = per_process
        self.loss = loss
        self.eager_import = eager_import
        self.prefix = prefix
        self.procs: dict[str, asyncio.subprocess.Process] = {}  # member -> its process
        self.ports: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.replies: dict[int, asyncio.Queue] = {}  # pid -> answers to commands
        self.got: dict[int, dict[str, float]] = {}   # broadcast trial -> member -> time
        self.sent: dict[int, float] = {}
        self._seed = 0

    async def _spawn(self, names: list[str], ready: dict[str, float],
                     peer: int | None) -> asyncio.subprocess.Process:
        args = [sys.executable, str(HERE / "mesh_member.py"), "--key", MESH_KEY,
                "--seed", str(self._seed), "--encrypt", "on" if self.encrypt else "off"]
        self._seed += len(names)
        for name in names:
            args += ["--name", name]
        if peer is not None:
            args += ["--peer", f"127.0.0.1:{peer}"]
        if self.loss:
            args += ["--loss", str(self.loss)]
        if self.eager_import:
            args.append("--eager-import")
        with open(self.logdir / f"{names[0]}.err", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                preexec_fn=die_with_parent, limit=2**20)
        self.children.add(proc.pid)
        self.replies[proc.pid] = asyncio.Queue()
        for name in names:
            self.procs[name] = proc
            self._reset_view(name)
        self.tasks.append(asyncio.create_task(self._read(proc, ready)))
        return proc

    async def _read(self, proc: asyncio.subprocess.Process, ready: dict[str, float]) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            e = json.loads(line)
            ev = e["ev"]
            if ev == "member":
                if self.procs.get(e["at"]) is proc:
                    self._member_event(e["t"], e["at"], e["node"], e["kind"])
            elif ev == "got":
                self.got.setdefault(e["trial"], {}).setdefault(e["at"], e["t"])
                self._changed.set()
            elif ev == "ready":
                for name, port in e["ports"].items():
                    self.ports[name] = port
                    ready[name] = e["t"]
                self._changed.set()
            else:
                if ev == "sent":
                    self.sent[e["trial"]] = e["t"]
                self.replies[proc.pid].put_nowait(e)

    async def start(self, n: int, timeout: float = 60) -> Startup | None:
        self.names = [f"{self.prefix}-{i:03d}" for i in range(n)]
        groups = [self.names[i:i + self.per_process] for i in range(0, n, self.per_process)]
        ready: dict[str, float] = {}
        await self._spawn(groups[0], ready, None)
        if not await self.wait(lambda: self.names[0] in ready, 30):
            return None
        seed_port = self.ports[self.names[0]]
        spawned = time.monotonic()
        for group in groups[1:]:
            await self._spawn(group, ready, seed_port)
        if not await self.wait(lambda: len(ready) == n and self.converged(), timeout):
            return None
        return Startup(spawned, max(ready[x] for x in self.names[self.per_process:]) if n > 1
                       else spawned, self.converged_at())

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def port(self, name: str) -> int:
        return self.ports[name]

    def describe(self, name: str) -> str:
        proc = self.procs.get(name)
        if proc is None or proc.returncode is None:
            return f"{name} (running)"
        err = (self.logdir / f"{name}.err").read_text(errors="replace").strip().splitlines()
        return f"{name} (exited {proc.returncode}: {err[-1] if err else 'nothing on stderr'})"

    def processes(self) -> list[asyncio.subprocess.Process]:
        return list({p.pid: p for p in self.procs.values()}.values())

    async def command(self, proc: asyncio.subprocess.Process, cmd: dict, timeout: float = 30) -> dict:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()
        return await asyncio.wait_for(self.replies[proc.pid].get(), timeout)

    async def stats(self) -> dict[str, dict]:
        """member -> its stats() figures, from every process at once."""
        answers = await asyncio.gather(*(self.command(p, {"cmd": "stats"})
                                         for p in self.processes()))
        return {name: s for a in answers for name, s in a["stats"].items()}

    async def kill(self, name: str) -> float:
        proc = self.procs.pop(name)
        assert self.per_process == 1, "a crash kills the whole process"
        t = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.children.discard(proc.pid)
        return t

    async def restart(self, name: str) -> None:
        await self._spawn([name], {}, self.ports[self.names[0]])

    async def close(self) -> None:
        for proc in self.processes():
            with contextlib.suppress(Exception):
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.processes():
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
            self.children.discard(proc.pid)
        self.procs.clear()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

