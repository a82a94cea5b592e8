"""``flowmesh up``: the whole product on one machine, kept by a small supervisor.

The database comes first, in this process (the embedded server, migrated,
with its PgBouncer when installed, as ``flowmesh db up --pooler`` leaves
it; or the server of ``--database-url``). Then the long-running parts start as
child processes, each the same command an operator would run by hand:

* ``agent``: ``flowmesh-edge run``, this device's agent (through the pooler
  when it runs);
* ``checks``: ``python -m monitors.mesh_health --every 1m``, where the server
  has no pg_cron (with pg_cron, ``flowmesh schedule install`` runs the same SQL
  in the database and no child is needed);
* ``dashboard``: ``flowmesh dashboard``;
* ``demo``: ``flowmesh demo``, with ``--demo``.

Every line a child writes is printed with its name in front (``agent | ...``).
The children run in sessions of their own, so a Ctrl-C in the terminal reaches
the supervisor only; on SIGINT, SIGTERM or SIGHUP it sends SIGTERM to each child's process group
(also of a child that has exited: what it started may still run), waits for them
(SIGKILL after ``STOP_TIMEOUT_S``) and exits 0. A child that exits by itself
(told by its pid, not by its output closing) stops the others the same way, and
the exit code is 1. On Linux each
child also gets SIGTERM if the supervisor dies without stopping it
(PR_SET_PDEATHSIG), so none is left behind. The embedded database is left
running, as ``flowmesh db up`` leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from . import database, embedded, migrations, pooler, settings
from . import schedule as schedules
from .errors import FlowMeshError

#: Seconds the children get to stop after SIGTERM before they are killed (the
#: agent spends up to its flush timeout, 5 s, shipping what is queued).
STOP_TIMEOUT_S = 15.0
#: The scheduled checks' period in ``flowmesh up``.
CHECKS_EVERY = "1m"
#: Exit codes: stopped by a signal, every child stopped in time; a child exited by
#: itself (or had to be killed).
EXIT_STOPPED, EXIT_CHILD_FAILED = 0, 1
#: Bytes of a child's line printed whole (of a longer one, the rest is printed in pieces).
LINE_LIMIT = 64 * 1024
#: Seconds between looks at whether a child (or what it started) has exited.
EXIT_POLL_S = 0.1
#: The signals that stop the stack: Ctrl-C, a service manager's stop, the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Echo = Callable[[str], None]


@dataclass
class Database:
    """Where the stack's parts connect."""

    url: str  #: the server itself: operators, the checks, the dashboard (LISTEN needs a session)
    agent_url: str  #: the agent's: the pooled URL when the embedded pooler runs
    embedded: bool


def start_embedded(with_pooler: bool, listen: str | None = None,
                   echo: Echo | None = None) -> tuple[str, str | None]:
    """Start (or reuse) the embedded server, migrate it, keep its operator slots
    and, ``with_pooler``, start PgBouncer beside it; return its URL and the pooled
    URL (None without the pooler). What ``flowmesh db up`` does."""
    url = database.resolve_url(None, start=True, migrate=False)
    migrations.upgrade(url)
    admin_url = make_conninfo(url, dbname="postgres")
    if embedded.reserve_operator_connections(admin_url) and echo:
        echo(f"restarted the embedded PostgreSQL to keep {embedded.RESERVED_CONNECTIONS} "
             "connection slots for operator roles")
    if not with_pooler:
        return url, None
    host, port = embedded.address()
    pooled = pooler.start(pooler.embedded(), admin_url, server_host=host, server_port=port,
                          databases=(settings.EMBEDDED_DATABASE,), listen=listen)
    return url, pooled


def open_database(database_url: str | None, echo: Echo) -> Database:
    """The server of ``database_url`` (migrated when behind), else the embedded one
    with its pooler when PgBouncer is installed (as ``make run`` always ran it)."""
    if database_url:
        database.migrate_when_behind(database_url)
        return Database(database_url, database_url, embedded=False)
    with_pooler = pooler.binary() is not None
    if not with_pooler:
        echo("pgbouncer is not installed (apt-get install pgbouncer): the agent connects directly")
    url, pooled = start_embedded(with_pooler, echo=echo)
    return Database(url, pooled or url, embedded=True)


def install_schedules(url: str) -> str | None:
    """Install the pg_cron jobs when the server has pg_cron; None when it does not
    (the ``checks`` child then runs the same SQL)."""
    with database.connect(url) as conn:
        try:
            schedules.install(conn, CHECKS_EVERY)
        except (FlowMeshError, psycopg.Error):  # no pg_cron, or not ours to schedule on
            return None
    return CHECKS_EVERY


@dataclass
class Child:
    """One long-running part of the stack: a name for its lines, a command, its environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args``, with this interpreter (the venv's)."""
    return [sys.executable, "-m", module, *args]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, before exec)
    """Ask Linux to send this child SIGTERM when the supervisor dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Supervisor:
    """Runs children until a signal or until one exits; then stops them all."""

    def __init__(self, children: list[Child], echo: Echo, stop_timeout_s: float = STOP_TIMEOUT_S):
        self.children = children
        self.echo = echo
        self.stop_timeout_s = stop_timeout_s
        self._width = max((len(c.name) for c in children), default=0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        received: list[int] = []

        def on_signal(sig: int) -> None:
            received.append(sig)
            signalled.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        pumps: list[asyncio.Task] = []
        exits: dict[asyncio.Task, Child] = {}
        try:
            for child in self.children:
                if signalled.is_set():
                    break
                await self._start(child)
                pumps.append(asyncio.create_task(self._pump(child)))
                exits[asyncio.create_task(_exited(child.process))] = child
            waiter = asyncio.create_task(signalled.wait())
            done, _ = await asyncio.wait([waiter, *exits], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            failed = next((exits[t] for t in exits if t in done), None)
            if failed is not None and not signalled.is_set():
                self.echo(f"{failed.name} exited with code {failed.process.returncode}: "
                          "stopping the others")
            else:
                failed = None
                self.echo(f"{signal.Signals(received[0]).name} received: stopping "
                          f"{', '.join(c.name for c in self.children if c.process)}")
            killed = await self._stop_all()
            await asyncio.wait(pumps, timeout=5)
        finally:
            for task in exits:
                task.cancel()
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            for child in self.children:  # an error half-way: nothing is left behind
                if child.process:
                    _signal_group(child.process.pid, signal.SIGKILL)
        for child in self.children:
            if child.process:
                self.echo(f"{child.name} stopped (exit code {child.process.returncode})")
        return EXIT_CHILD_FAILED if failed is not None or killed else EXIT_STOPPED

    async def _start(self, child: Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env}
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, limit=LINE_LIMIT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.echo(f"started {child.name} (pid {child.process.pid}): {' '.join(_shown(child.argv))}")

    async def _pump(self, child: Child) -> None:
        """Print the child's lines, its name in front."""
        prefix = f"{child.name:<{self._width}} | "
        stream = child.process.stdout
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line past the limit (readline dropped what it had): read on
                line = await stream.read(LINE_LIMIT)
            if not line:
                return
            self.echo(prefix + line.decode(errors="replace").rstrip("\r\n"))

    async def _stop_all(self) -> bool:
        """SIGTERM to every started child's process group, also of a child that has
        exited (what it started may still run); a bounded wait for the children and
        their groups, then SIGKILL to what is left; True when something had to be killed."""
        started = [c for c in self.children if c.process]
        for child in started:
            _signal_group(child.process.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout_s
        while any(map(_running, started)) and loop.time() < deadline:
            await asyncio.sleep(EXIT_POLL_S)
        late = [c for c in started if _running(c)]
        for child in late:
            what = child.name if child.process.returncode is None else f"what {child.name} started"
            self.echo(f"{what} did not stop within {self.stop_timeout_s:g}s: killing it")
            _signal_group(child.process.pid, signal.SIGKILL)
        deadline = loop.time() + 5
        while any(map(_running, late)) and loop.time() < deadline:
            await asyncio.sleep(EXIT_POLL_S)
        return bool(late)


async def _exited(process: asyncio.subprocess.Process) -> int:
    """The child's exit code, once its pid has exited. Not ``Process.wait()``: that also
    waits for the child's stdout to close, which a process it started may hold open long
    after; ``returncode`` is set by asyncio's child watcher as soon as the pid is reaped."""
    while process.returncode is None:
        await asyncio.sleep(EXIT_POLL_S)
    return process.returncode


def _running(child: Child) -> bool:
    """Whether the child, or anything left in its process group, still runs."""
    return child.process.returncode is None or _group_exists(child.process.pid)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the child's process group (its session: anything it started goes too),
    whether or not the child itself still runs."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _group_exists(pid: int) -> bool:
    """Whether the child's process group still has a live member we may signal. Signal
    0 asks the kernel without sending; it also counts a member that has exited and
    waits to be reaped (an orphan waits for init, which may be slow), so then the
    members are looked at one by one."""
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pid:
                return True
    return False


def _shown(argv: list[str]) -> list[str]:
    """The command as printed: the interpreter by its short name."""
    return ["python" if i == 0 and a == sys.executable else a for i, a in enumerate(argv)]


def run(children: list[Child], echo: Echo) -> int:
    """Supervise ``children`` until a signal or a failure; the exit code."""
    return asyncio.run(Supervisor(children, echo).run())
