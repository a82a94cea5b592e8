"""The edge agent's main loop: sample, queue durably, ship, back off, stop cleanly.

Two tasks share one outbox: the sampler writes a heartbeat every interval
whatever the database's state, and the shipper drains the outbox whenever
there is something to send, backing off exponentially (with jitter) while the
database is unreachable. Blocking work (SQLite, psycopg) runs in worker
threads so the event loop only schedules.

The shipper's calls run, one at a time, on a thread of their own, a daemon:
a call stuck on a dead path can then never hold the process at exit, and a
stop always ends within the flush timeout (the call in flight is aborted, its
batch stays queued).

What the agent knows of itself (the last metrics sampled, the last shipment
and the last error; the outbox keeps its own depth) is kept in memory, so
that its own endpoints (``--http-port``, http_endpoints.py, imported only
then) answer without touching SQLite or the database from the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flowmesh import __version__
from flowmesh.errors import redact_secrets

from .backoff import backoff_delay
from .config import AgentConfig
from .links import MeshLinks
from .mesh import Address, MeshMessage, MeshNode, MessageType
from .mesh.membership import MemberEvent, PeerInfo
from .mesh.registry import HashEntry
from .metrics import MetricsSampler
from .outbox import EVENT, HASH, Outbox
from .shipper import Rejected, Shipper, ShipReport, Unreachable

#: Membership events worth a row in mesh_events (``removed`` is bookkeeping).
RECORDED_EVENTS = frozenset({"joined", "suspect", "dead", "left", "recovered"})
#: Metrics shared with mesh peers as this node's versioned state.
SHARED_METRICS = ("cpu_percent", "memory_percent", "battery_percent", "temperature_c")

log = logging.getLogger("flowmesh_edge.agent")

class ShipperThread:
    """One daemon thread running blocking calls in the order submitted.

    Not ``asyncio.to_thread``: its pool's threads are joined at exit, so a
    call blocked on a silent network path would keep a stopped agent alive.
    """

    def __init__(self, name: str = "flowmesh-shipper"):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)

    def run(self, call: Callable[[], object]) -> asyncio.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((call, future))
        return asyncio.wrap_future(future)

    def close(self) -> None:
        """Let the thread end after the calls already submitted."""
        self._calls.put(None)


@dataclass
class AgentStats:
    sampled: int = 0
    events: int = 0
    #: Hash registry entries added on this node and queued (MeshNode.add_hash).
    hashes: int = 0
    #: The shipper's own count (Shipper.shipped), kept batch by batch.
    shipped: ShipReport = field(default_factory=ShipReport)
    failures: int = 0
    #: The failure of the last shipment attempt; None once one succeeds.
    last_error: str | None = None
    #: The most recent failure and its wall-clock time, kept after a recovery.
    last_failure: str | None = None
    last_failure_at: float | None = None
    #: Wall-clock time of the last flush that moved entries into the database.
    last_shipped_at: float | None = None
    #: The last heartbeat's metrics and when they were sampled (wall clock).
    last_metrics: dict | None = None
    last_sampled_at: float | None = None


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        outbox: Outbox,
        shipper: Shipper,
        sample: Callable[[], dict] | None = None,
        mesh: MeshNode | None = None,
        links: MeshLinks | None = None,
    ):
        """``mesh``: one mesh node to run; ``links``: every mesh the agent joins
        (links.py), the first of which reports in the heartbeats."""
        self.config = config
        self.outbox = outbox
        self.shipper = shipper
        self.links = links
        self.mesh = links.primary if links is not None else mesh
        self._pending_events: set[asyncio.Task] = set()
        self._sample = sample or MetricsSampler().sample
        self._wake = asyncio.Event()
        self.stats = AgentStats(shipped=shipper.shipped)
        #: Loop-independent start time, for the uptime the endpoints report.
        self.started_monotonic = time.monotonic()
        self.started_at = time.time()
        #: The agent's own endpoints while they run (http_endpoints.AgentEndpoints).
        self.http = None

    def meshes(self) -> list[tuple[str | None, MeshNode]]:
        """(mesh id, node) of every mesh joined, the primary first; the id is None
        for a node given directly (``mesh=``), whose key the agent never saw."""
        if self.links is not None:
            return [(link.mesh_id, link.node) for link in self.links.links]
        return [(None, self.mesh)] if self.mesh is not None else []

    def heartbeat_payload(self) -> dict:
        metrics = self._sample()
        self.stats.last_metrics, self.stats.last_sampled_at = metrics, time.time()
        payload: dict = {"metrics": metrics, "agent": {"version": __version__}}
        if self.config.role:
            payload["role"] = self.config.role
        # the first mesh still joined (a forgotten one is left while the agent runs)
        mesh = self.links.primary if self.links is not None else self.mesh
        if mesh is not None:
            stats = mesh.stats()
            gossip = stats.gossip
            payload["mesh"] = {**stats["members"], "incarnation": mesh.incarnation,
                               # read by SQL's gossip_summary(): three integers, a few dozen bytes
                               "gossip": {"seen": gossip.seen, "duplicates": gossip.duplicates,
                                          "propagated": gossip.propagated}}
            mesh.update_state({k: metrics[k] for k in SHARED_METRICS if k in metrics})
        return payload

    # -- mesh observations -> outbox ----------------------------------------------
    def _record_event(self, event: dict) -> None:
        """Queue a mesh event durably (in a worker thread) and wake the shipper."""

        async def put() -> None:
            await asyncio.to_thread(self.outbox.put, self.config.tetrahedron, self.config.node_id,
                                    event, role=self.config.role, kind=EVENT)
            self.stats.events += 1
            self._wake.set()

        task = asyncio.get_running_loop().create_task(put())
        self._pending_events.add(task)
        task.add_done_callback(self._pending_events.discard)

    def _on_hash(self, entry: HashEntry) -> None:
        """An entry added on this node (``mesh.add_hash``): queue it durably for
        ``register_hashes``, so that it reaches Postgres across any outage."""
        record = entry.record()

        async def put() -> None:
            await asyncio.to_thread(self.outbox.put, self.config.tetrahedron, self.config.node_id,
                                    record, role=self.config.role, kind=HASH)
            self.stats.hashes += 1
            self._wake.set()

        task = asyncio.get_running_loop().create_task(put())
        self._pending_events.add(task)
        task.add_done_callback(self._pending_events.discard)

    def _on_member(self, event: MemberEvent, peer: PeerInfo | None) -> None:
        if event.kind in RECORDED_EVENTS:
            details = {"address": str(peer.address), "meta": peer.meta} if peer else {}
            self._record_event({"kind": event.kind, "subject": event.node_id,
                                "incarnation": event.incarnation, "details": details})

    def _on_path(self, peer: str, address: Address, previous: Address | None, rtt_s: float | None) -> None:
        """The path to a member changed (the connection train): record it, so that an
        operator sees a device alive over the relay (nodes.mesh_transport)."""
        self._record_event({"kind": "path", "subject": peer, "details": {
            "transport": address.transport, "address": str(address),
            "previous": str(previous) if previous is not None else None,
            "rtt_ms": round(rtt_s * 1000, 3) if rtt_s is not None else None}})

    def _on_alert(self, message: MeshMessage) -> None:
        self._record_event({
            "kind": "alert", "subject": message.origin,
            "details": {"priority": message.payload.get("priority", "normal"),
                        "alert": message.payload.get("alert", {}),
                        "message_id": message.message_id, "hops": message.hops},
        })

    async def beat(self) -> int:
        """Sample and queue one heartbeat; wake the shipper."""
        payload = self.heartbeat_payload()
        seq = await asyncio.to_thread(
            self.outbox.put,
            self.config.tetrahedron,
            self.config.node_id,
            payload,
            role=self.config.role,
        )
        self.stats.sampled += 1
        self._wake.set()
        return seq

    async def run(self, stop: asyncio.Event) -> AgentStats:
        """Run until ``stop`` is set, then try to ship what is queued."""
        if self.config.http_port is not None:
            # starlette and uvicorn, only when asked for; loaded (about 0.1 s) before the mesh
            # runs, whose timers the import would otherwise hold up
            from .http_endpoints import AgentEndpoints
        nodes = [link.node for link in self.links.links] if self.links is not None else \
            [self.mesh] if self.mesh is not None else []
        for node in nodes:
            node.on_member(self._on_member)
            node.on(MessageType.ALERT, self._on_alert)
            node.on_path(self._on_path)
            node.on_hash(self._on_hash)
        if self.links is not None:
            await self.links.start()
        elif self.mesh is not None:
            await self.mesh.start()
        self._shipper_thread = ShipperThread()
        if self.config.http_port is not None:
            try:  # a view of the device, never a reason for it to stop reporting
                self.http = await AgentEndpoints.start(self, self.config.http_bind, self.config.http_port)
            except Exception:
                log.exception("http endpoints off: they could not start")
        sampler = asyncio.create_task(self._sample_loop(stop), name="flowmesh-sampler")
        shipper = asyncio.create_task(self._ship_loop(stop), name="flowmesh-shipper")
        try:
            await stop.wait()
        finally:
            # the whole stop, goodbyes and flush included, fits in flush_timeout_s
            deadline = time.monotonic() + self.config.flush_timeout_s
            if self.http is not None:
                await self.http.stop(timeout=min(1.0, self.config.flush_timeout_s))
                self.http = None
            # the sampler is not cancelled: it ends at once, after the heartbeat
            # it may be writing (a cancelled write would be queued but not counted)
            shipper.cancel()  # a call in flight goes on in its thread; the flush queues behind it
            if self.links is not None:
                await self.links.stop()  # says goodbye, so peers record "left" at once
            elif self.mesh is not None:
                await self.mesh.stop()
            await asyncio.gather(*self._pending_events, return_exceptions=True)
            await asyncio.gather(sampler, shipper, return_exceptions=True)
            await self._final_flush(deadline)
            closed = self._shipper_thread.run(self.shipper.close)
            self._shipper_thread.close()
            with contextlib.suppress(Exception):  # an aborted call may hold the thread a moment
                await asyncio.wait_for(closed, timeout=max(0.1, deadline - time.monotonic()))
        return self.stats

    async def _sample_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.interval_s
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                await self.beat()
            except Exception:  # a failing disk must not kill the agent silently
                log.exception("could not queue a heartbeat")
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended laptop): skip, do not burst
                next_at = time.monotonic() + interval
                delay = interval
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _ship_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.0
        attempt = 0  # failures in a row
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            if stop.is_set():
                break
            try:
                report = await self._shipper_thread.run(self.shipper.flush)
            except (Unreachable, Rejected) as exc:
                backoff = self._backoff(attempt)
                attempt += 1
                self._report_failure(exc, backoff)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    self._wake.set()  # retry even when nothing new was sampled
                continue
            except Exception as exc:
                backoff = self._backoff(attempt)
                attempt += 1
                log.exception("unexpected error while shipping; retrying in %.1fs", backoff)
                self.stats.failures += 1
                self._failed(f"unexpected error while shipping: {type(exc).__name__}")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    self._wake.set()
                continue
            if report.shipped or report.dead_lettered:
                self.stats.last_shipped_at = time.time()
            if backoff:
                log.warning("database reachable again; shipped %d queued heartbeats", report.shipped)
            elif report.shipped or report.dead_lettered:
                log.debug("shipped %d heartbeats (%d duplicates)", report.shipped, report.duplicates)
            backoff = 0.0
            attempt = 0
            self.stats.last_error = None

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.config.backoff_initial_s, self.config.backoff_max_s)

    def _report_failure(self, exc: Exception, backoff: float) -> None:
        self.stats.failures += 1
        message = str(exc)
        if isinstance(exc, Unreachable):
            message = f"database unreachable: {message}"
        else:
            message = f"database refused the shipment [{exc.sqlstate}]: {message}"
        # say it once per kind of failure, not once per retry
        message = redact_secrets(message)  # a resolver's or driver's text may quote a URL
        level = logging.WARNING if message != self.stats.last_error else logging.DEBUG
        log.log(level, "%s; %d heartbeats kept in the outbox; retrying in %.1fs",
                message, sum(self.outbox.depth.values()), backoff)  # no SQL on the loop
        self._failed(message)

    def _failed(self, message: str) -> None:
        self.stats.last_error = self.stats.last_failure = message
        self.stats.last_failure_at = time.time()

    async def _final_flush(self, deadline: float) -> None:
        """Ship what is queued until ``deadline`` (monotonic); then abort the call
        in flight, so that stopping never waits on the network."""
        flush = self._shipper_thread.run(lambda: self.shipper.flush(deadline=deadline))
        try:
            await asyncio.wait_for(flush, timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # Unreachable, Rejected, TimeoutError, or a surprise
            self.shipper.abort()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.warning(
                "stopping with %d heartbeats in the outbox (%s); they ship on the next start",
                await asyncio.to_thread(self.outbox.pending), reason,
            )
