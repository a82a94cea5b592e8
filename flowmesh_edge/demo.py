"""``flowmesh demo``: a small simulated fleet on loopback, to watch on the dashboard.

The design's three devices (a phone, the sensor; a Raspberry Pi, the
orchestrator; a laptop, the witness) form a tetrahedron named ``demo``. Each
is a real agent of this package: an :class:`~flowmesh_edge.agent.Agent` with its
own :class:`~flowmesh_edge.outbox.Outbox` (in a temporary directory, never the
user's), :class:`~flowmesh_edge.shipper.Shipper` and
:class:`~flowmesh_edge.mesh.MeshNode` on 127.0.0.1 UDP, all three in one asyncio
loop. Only the metrics are simulated (the agent's ``sample`` callable), and they
drift the same way on every run (seeded):

* the phone's battery drains fast and its latency rises: it turns degraded,
  and the prediction pass sees it coming (node-failure-predicted);
* the Pi overheats from ``PI_HEATS_AT_S``; the prediction pass opens an alert
  for it too, and at ``PI_FAILS_AT_S`` it stops dead (its mesh node goes silent
  without saying goodbye, so its peers declare it dead), then goes offline
  once silent past the tetrahedron's node timeout (set to ``NODE_TIMEOUT_S``);
* the laptop stays healthy and witnesses it all.

Every ``PASS_EVERY_S`` the demo runs the prediction pass (which also logs
offline transitions), as the scheduled checks do, and prints a line for each
stage it sees in the database. Times are in scenario seconds; ``speed``
compresses them (the tests run it 5 times faster). Starting (or ``--reset``)
removes the previous demo tetrahedron, so reruns are clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from flowmesh import database
from flowmesh.errors import FlowMeshError, describe
from flowmesh.queries import query

from .agent import Agent
from .config import AgentConfig
from .mesh import MeshNode
from .outbox import Outbox
from .shipper import Shipper

TETRAHEDRON = "demo"
#: Scenario seconds between heartbeats: enough samples for the trend model
#: (three make a slope) within the first few seconds.
HEARTBEAT_S = 2.0
#: Scenario seconds between prediction passes.
PASS_EVERY_S = 5.0
#: When the Pi starts to overheat, and when it stops dead.
PI_HEATS_AT_S = 12.0
PI_FAILS_AT_S = 35.0
#: The demo tetrahedron's node_timeout_seconds: the Pi is offline this long
#: after its last heartbeat (the default, 300 s, is too long to watch).
NODE_TIMEOUT_S = 20.0
#: The heartbeats per node the prediction pass looks at (its default).
WINDOW_SIZE = 30
SEED = 10

Echo = Callable[[str], None]


@dataclass
class Device:
    """One simulated device: its metrics drift with each heartbeat, deterministically."""

    node_id: str
    role: str
    clock: Callable[[], float]  #: scenario seconds since the demo started
    rng: random.Random
    beats: int = 0

    def sample(self) -> dict:
        # Only the metrics that are meant to drift move: the trend model reads a slope from
        # three samples, so noise on a healthy node's latency or temperature would read
        # as a trend. The rest (CPU, memory) carry a little seeded noise.
        n, t = self.beats, self.clock()
        self.beats += 1
        noise = self.rng.uniform
        if self.node_id == "phone":  # battery draining fast, latency and loss rising
            return {"battery_percent": max(1.0, 40 - 2.0 * n), "latency_ms": 35 + 12.0 * n,
                    "packet_loss": round(min(0.2, 0.01 + 0.003 * n), 3),
                    "cpu_percent": round(30 + noise(-5, 5), 1), "memory_percent": round(55 + noise(-2, 2), 1),
                    "temperature_c": 36.0}
        if self.node_id == "pi":  # fine, then overheating (and busier) until it fails
            heating = max(0.0, t - PI_HEATS_AT_S) / HEARTBEAT_S
            return {"temperature_c": round(52 + 2.5 * heating, 1), "latency_ms": 12.0, "packet_loss": 0.0,
                    "cpu_percent": round(min(100.0, 40 + 3 * heating + noise(-3, 3)), 1),
                    "memory_percent": round(48 + noise(-2, 2), 1)}
        return {"latency_ms": 18.0, "packet_loss": 0.0, "temperature_c": 45.0,  # a steady witness
                "cpu_percent": round(22 + noise(-6, 6), 1), "memory_percent": round(61 + noise(-2, 2), 1),
                "battery_percent": min(100.0, 88 + 0.1 * n)}


#: The design's devices: (node id, role).
DEVICES = (("phone", "sensor"), ("pi", "orchestrator"), ("laptop", "witness"))


def _remove(conn, tetrahedron: str) -> bool:
    """Remove the demo's tetrahedron, refusing one with devices the demo does not make
    (someone's real tetrahedron of that name); True when there was one."""
    ours = {node_id for node_id, _ in DEVICES}
    foreign = sorted({n for (n,) in conn.execute(query("tetrahedron_members"), {"tetrahedron": tetrahedron})}
                     - ours)
    if foreign:
        raise FlowMeshError(f"tetrahedron {tetrahedron!r} has devices the demo does not make "
                            f"({', '.join(foreign)}): not removing it; run the demo under another "
                            "name with --tetrahedron NAME")
    return conn.execute(query("delete_tetrahedron"), {"tetrahedron": tetrahedron}).fetchone() is not None


def reset(url: str, tetrahedron: str = TETRAHEDRON) -> bool:
    """Remove the demo tetrahedron and everything of it; True when there was one."""
    with database.connect(url, autocommit=False) as conn:
        removed = _remove(conn, tetrahedron)
        conn.commit()
    return removed


def prepare(url: str, tetrahedron: str, node_timeout_s: int) -> str:
    """A fresh demo tetrahedron with its three vertices and a short node timeout; its id."""
    with database.connect(url, autocommit=False) as conn:
        _remove(conn, tetrahedron)
        for node_id, role in DEVICES:
            (tetra_id,) = conn.execute(query("register_node"), {
                "tetrahedron": tetrahedron, "node_id": node_id, "role": role}).fetchone()
        conn.execute(query("set_node_timeout"), {"tetrahedron": tetrahedron, "seconds": node_timeout_s})
        conn.commit()
    return str(tetra_id)


@dataclass
class Watch:
    """What the demo has already announced, so each stage is said once."""

    said: set[str] = field(default_factory=set)

    def once(self, key: str, line: str, echo: Echo) -> None:
        if key not in self.said:
            self.said.add(key)
            echo(line)


class Demo:
    """The fleet, its scenario and its narration."""

    def __init__(self, url: str, echo: Echo, speed: float = 1.0, tetrahedron: str = TETRAHEDRON):
        self.url = url
        self.tetrahedron = tetrahedron
        self.echo = echo
        self.speed = speed
        self.watch = Watch()
        self._started = time.monotonic()

    def scenario_time(self) -> float:
        return (time.monotonic() - self._started) * self.speed

    def seconds(self, scenario_s: float) -> float:
        """Real seconds for a span of scenario seconds."""
        return scenario_s / self.speed

    async def run(self, stop: asyncio.Event) -> None:
        node_timeout = max(1, round(self.seconds(NODE_TIMEOUT_S)))
        tetra_id = await asyncio.to_thread(prepare, self.url, self.tetrahedron, node_timeout)
        self.echo(f"tetrahedron {self.tetrahedron}: phone (sensor), pi (orchestrator) and laptop (witness) "
                  f"on 127.0.0.1; a heartbeat every {self.seconds(HEARTBEAT_S):g}s, node timeout "
                  f"{node_timeout}s")
        self._started = time.monotonic()
        key = secrets.token_urlsafe(24)  # this run's mesh only
        with tempfile.TemporaryDirectory(prefix="flowmesh-demo-") as tmp:
            async with contextlib.AsyncExitStack() as stack:
                agents: dict[str, tuple[Agent, asyncio.Event, asyncio.Task]] = {}
                first: MeshNode | None = None
                for index, (node_id, role) in enumerate(DEVICES):
                    mesh = MeshNode(node_id, port=0, bind="127.0.0.1", mesh_key=key,
                                    peers=[first.address] if first else [],
                                    meta={"tetrahedron": self.tetrahedron, "role": role}, seed=SEED + index)
                    if first is None:
                        await mesh.start()  # the others join through its address
                        first = mesh
                    device = Device(node_id, role, self.scenario_time, random.Random(SEED + index))
                    outbox = stack.enter_context(Outbox(Path(tmp) / f"{node_id}.sqlite3"))
                    config = AgentConfig(node_id=node_id, tetrahedron=self.tetrahedron, role=role,
                                         interval_s=self.seconds(HEARTBEAT_S), flush_timeout_s=2.0,
                                         database_url=self.url, outbox_path=outbox.path)
                    agent = Agent(config, outbox, Shipper(outbox, self.url), sample=device.sample, mesh=mesh)
                    agent_stop = asyncio.Event()
                    task = asyncio.create_task(agent.run(agent_stop), name=f"demo-{node_id}")
                    agents[node_id] = (agent, agent_stop, task)
                self.echo("phone: battery draining fast, latency rising; pi: fine for now; "
                          "laptop: steady")
                try:
                    await self._scenario(stop, tetra_id, agents)
                finally:
                    for _, agent_stop, _ in agents.values():
                        agent_stop.set()
                    await asyncio.gather(*(task for _, _, task in agents.values()), return_exceptions=True)

    async def _scenario(self, stop: asyncio.Event, tetra_id: str,
                        agents: dict[str, tuple[Agent, asyncio.Event, asyncio.Task]]) -> None:
        next_pass = PASS_EVERY_S
        failure: str | None = None
        pi_mesh = agents["pi"][0].mesh
        while not stop.is_set():
            now = self.scenario_time()
            if now >= PI_HEATS_AT_S:
                self.watch.once("heat", "pi: overheating (temperature rising 2.5 C a heartbeat)", self.echo)
            if now >= PI_FAILS_AT_S and "fail" not in self.watch.said:
                # dead, not a clean stop: no goodbye to the mesh, no more heartbeats
                await pi_mesh.stop(leave=False)
                agents["pi"][1].set()
                self.watch.once("fail", "pi stopped: its peers will declare it dead; watch it go offline "
                                f"on the dashboard in {self.seconds(NODE_TIMEOUT_S):g}s", self.echo)
            if now >= next_pass:
                next_pass += PASS_EVERY_S
                try:
                    await asyncio.to_thread(self._observe, tetra_id)
                    failure = None
                except (FlowMeshError, psycopg.Error) as exc:
                    # an outage: the fleet goes on and the next pass retries; said once, not every pass
                    if describe(exc).message != failure:
                        failure = describe(exc).message
                        self.echo(f"prediction pass failed: {failure}")
            wait = min(next_pass, PI_FAILS_AT_S if "fail" not in self.watch.said else next_pass) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.05, self.seconds(min(wait, 1.0))))

    def _observe(self, tetra_id: str) -> None:
        """Run the prediction pass, then say what changed in the database."""
        with database.connect(self.url) as conn:
            conn.execute(query("prediction_pass"), {"window_size": WINDOW_SIZE})
            cur = conn.cursor(row_factory=dict_row)
            nodes = {n["node_id"]: n for n in cur.execute(query("tetrahedron_nodes"),
                                                           {"tetrahedron_id": tetra_id})}
            alerts = cur.execute(query("open_alerts"), {"tetrahedron_id": tetra_id}).fetchall()
            links = cur.execute(query("mesh_links_count"), {"tetrahedron_id": tetra_id}).fetchone()["links"]
        echo, once = self.echo, self.watch.once
        if links >= len(DEVICES) * (len(DEVICES) - 1):
            once("mesh", "mesh: phone, pi and laptop hear each other over UDP on 127.0.0.1", echo)
        for node_id, node in nodes.items():
            metrics = node["metrics"] or {}
            if node["status"] == "degraded":
                detail = ", ".join(f"{k} {metrics[k]}" for k in node["problems"] or ())
                once(f"degraded {node_id}", f"{node_id} degraded ({detail or 'health score low'})", echo)
            if node["mesh_status"] == "dead":
                once(f"dead {node_id}", f"mesh: {node_id} declared dead by {node['mesh_reported_by']}", echo)
            if node["status"] == "offline":
                once(f"offline {node_id}", f"{node_id} offline since {node['status_since']:%H:%M:%S} "
                     f"(silent past the {self.tetrahedron} tetrahedron's node timeout)", echo)
        for alert in alerts:
            once(f"alert {alert['id']}", f"alert opened: {alert['alert_type']} ({alert['severity']}): "
                 f"{alert['message']}", echo)
        said = self.watch.said
        stages = {"mesh", "degraded phone", "dead pi", "offline pi"}
        if stages <= said and any(k.startswith("alert ") for k in said):
            once("shown", "every stage shown; phone and laptop keep reporting until Ctrl-C", echo)


def run(url: str, echo: Echo, speed: float = 1.0, tetrahedron: str = TETRAHEDRON) -> None:
    """Run the demo until SIGINT or SIGTERM."""
    logging.getLogger("flowmesh_edge").setLevel(logging.WARNING)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Demo(url, echo, speed, tetrahedron).run(stop)
        echo(f"demo stopped; the {tetrahedron} tetrahedron stays in the database until the next "
             "`flowmesh demo` (or `flowmesh demo --reset`)")

    asyncio.run(main())
