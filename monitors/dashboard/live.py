"""Live updates: Postgres NOTIFY on ``flowmesh_changes``, fanned out as Server-Sent Events.

One dedicated connection LISTENs (pooled connections cannot: a LISTEN lives
in a session). When the database goes away it reconnects with the edge's
backoff schedule, and every client hears ``event: database`` when
reachability changes. Each client has a bounded queue: a client too slow to
read loses events (and then gets one ``change`` with ``tetrahedrons: null``,
"refresh everything") instead of growing the server's memory.

A client is sent only the tetrahedrons it may see: which ones is asked of
Postgres as the client's identity (row-level security decides), shared by
the clients of one identity and refreshed every ``refresh_s`` seconds, or
sooner when a notification names a tetrahedron it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from flowmesh import database
from flowmesh.errors import DatabaseUnreachable, FlowMeshError, describe
from flowmesh_edge.backoff import backoff_delay

from .access import Identity, Unauthorized
from .api import identify, unauthorized
from .reader import APPLICATION_NAME, Reader, q

log = logging.getLogger("monitors.dashboard.live")

CHANNEL = "flowmesh_changes"
#: The kinds sql/0014's triggers notify. Anyone who may connect can NOTIFY the
#: channel: anything else on it is dropped (and counted), never passed on.
KINDS = frozenset({"heartbeat", "status", "alert", "decision", "mesh_event"})
#: Events a client may have queued before further ones are dropped.
QUEUE_SIZE = 256
#: Seconds between keep-alive comments on an idle stream (proxies close silent ones).
KEEPALIVE_S = 15.0
#: What the browser waits before reconnecting a dropped stream, in ms (the SSE ``retry:``).
RETRY_MS = 2000
#: Seconds between checks of an idle LISTEN connection (a query, so a dead one is noticed).
PING_S = 5.0
#: Reconnection backoff of the LISTEN connection: first wait and cap, in seconds.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0
#: Seconds a client's view of which tetrahedrons it may see stays fresh; a
#: notification naming one it does not know refreshes it at most every
#: UNKNOWN_REFRESH_S seconds.
REFRESH_S = 30.0
UNKNOWN_REFRESH_S = 1.0

_CLOSE = object()


def _shown_to(identity: Identity, state: dict) -> dict:
    """The database's state as ``identity`` may see it: a JWT's user (no operator)
    learns that it is unreachable, not the server's names in the reason."""
    if identity.role is not None and "error" in state:
        return {**state, "error": "database unreachable"}
    return state


def sse(event: str, data: object) -> str:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)  # one per client: hashed by identity
class Subscriber:
    identity: Identity
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    #: Set when an event was dropped for want of room; cleared by the next read.
    overflowed: bool = False
    dropped: int = 0

    def offer(self, item: object) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            self.dropped += 1

    def close(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSE)


@dataclass
class _View:
    """Which tetrahedrons one identity may see: id -> name."""

    names: dict[str, str] = field(default_factory=dict)
    #: Ids met in notifications and not visible at the last look-up.
    hidden: set[str] = field(default_factory=set)
    fetched_at: float = float("-inf")
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Live:
    """The LISTEN connection, the subscribers and what each may see."""

    def __init__(self, url: str, reader: Reader, *, keepalive_s: float = KEEPALIVE_S,
                 refresh_s: float = REFRESH_S, ping_s: float = PING_S,
                 backoff_max_s: float = BACKOFF_MAX_S):
        self.url = url
        self.reader = reader
        self.keepalive_s = keepalive_s
        self.refresh_s = refresh_s
        self.ping_s = ping_s
        self.backoff_max_s = backoff_max_s
        #: None until the first attempt to connect has ended.
        self.reachable: bool | None = None
        self.error: str | None = None
        self.subscribers: set[Subscriber] = set()
        #: Notifications dropped, by reason (not JSON, an unknown kind, ids that are not uuids).
        self.dropped: Counter[str] = Counter()
        self._views: dict[tuple, _View] = {}
        self._task: asyncio.Task | None = None
        self.closing = False

    # the LISTEN connection --------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="dashboard-listen")

    async def stop(self) -> None:
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def close_streams(self) -> None:
        """End every open stream (the server is stopping)."""
        self.closing = True
        for subscriber in list(self.subscribers):
            subscriber.close()

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            conn = None
            try:
                conn = await database.connect_async(self.url, application_name=f"{APPLICATION_NAME}-live")
                await conn.execute(q("listen_changes"))
                self._set_reachable(True, None)
                failures = 0
                while True:
                    async for notify in conn.notifies(timeout=self.ping_s):
                        self._dispatch(notify.payload)
                    await self._ping(conn)
            except (psycopg.Error, FlowMeshError, OSError) as exc:
                self._set_reachable(False, describe(exc).message)
            except Exception as exc:  # a bug must not end live updates for good
                log.exception("the live connection failed")
                self._set_reachable(False, describe(exc).message)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            delay = backoff_delay(failures, BACKOFF_INITIAL_S, self.backoff_max_s)
            failures += 1
            await asyncio.sleep(delay)

    async def _ping(self, conn) -> None:
        """A query on the idle connection: one whose path died says so here, one whose
        path went silent (no reset) within ``2 * ping_s``."""
        deadline = 2 * self.ping_s
        alarm = asyncio.get_running_loop().call_later(deadline, database.cut, conn)
        try:
            await conn.execute(q("ping"))
        except psycopg.OperationalError:
            if alarm.when() <= asyncio.get_running_loop().time():  # cut by the alarm
                raise DatabaseUnreachable(f"no answer from the database within {deadline:g} s") from None
            raise
        finally:
            alarm.cancel()

    def _set_reachable(self, reachable: bool, message: str | None) -> None:
        if reachable == self.reachable:
            return
        self.reachable, self.error = reachable, message
        if reachable:
            log.info("database reachable; listening on %s", CHANNEL)
        else:
            log.warning("database unreachable: %s", message)
        for subscriber in list(self.subscribers):
            subscriber.offer(("database", self.database_state()))

    def database_state(self) -> dict:
        state: dict = {"reachable": bool(self.reachable)}
        if not self.reachable and self.error:
            state["error"] = f"database unreachable: {self.error.removeprefix('cannot reach the database: ')}"
        return state

    def _dispatch(self, payload: str) -> None:
        try:
            change = json.loads(payload)
            kind, ids = change["kind"], change["tetrahedrons"]
        except (ValueError, KeyError, TypeError):
            return self._drop("malformed")
        if kind not in KINDS:
            return self._drop("unknown kind")
        if ids is not None:
            try:
                ids = [str(uuid.UUID(i)) for i in ids]
            except (ValueError, TypeError, AttributeError):
                return self._drop("bad ids")
        for subscriber in list(self.subscribers):
            subscriber.offer(("change", (kind, ids)))

    def _drop(self, reason: str) -> None:
        if not self.dropped[reason]:
            log.warning("dropped a notification on %s that no FlowMesh trigger sends (%s); "
                        "such ones are counted, not logged again", CHANNEL, reason)
        self.dropped[reason] += 1

    # subscribers and what they may see ---------------------------------------

    def subscribe(self, identity: Identity) -> Subscriber:
        subscriber = Subscriber(identity)
        self.subscribers.add(subscriber)
        self._views.setdefault(identity.key, _View()).users += 1
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        view = self._views[subscriber.identity.key]
        view.users -= 1
        if view.users == 0:
            del self._views[subscriber.identity.key]

    async def visible(self, identity: Identity, ids: list[str]) -> dict[str, str]:
        """Of ``ids``, those ``identity`` may see, with their names.

        An id never met before (a tetrahedron created since the last look-up)
        triggers a look-up, at most one every UNKNOWN_REFRESH_S per identity;
        one still not visible then is remembered as hidden until the next
        periodic refresh, so another member's busy tetrahedron costs no query.
        """
        view = self._views.get(identity.key) or _View()
        age = time.monotonic() - view.fetched_at
        if age > self.refresh_s:
            await self._refresh(identity, view, age)
        elif any(i not in view.names and i not in view.hidden for i in ids):
            if age < UNKNOWN_REFRESH_S:
                await asyncio.sleep(UNKNOWN_REFRESH_S - age)
            await self._refresh(identity, view, time.monotonic() - view.fetched_at)
        view.hidden.update(i for i in ids if i not in view.names)
        return {i: view.names[i] for i in ids if i in view.names}

    async def _refresh(self, identity: Identity, view: _View, age: float) -> None:
        asked = time.monotonic()
        async with view.lock:
            if view.fetched_at > asked - age:
                return  # another client of this identity refreshed it meanwhile
            try:
                async with self.reader.session(identity) as session:
                    rows = await session.rows("visible_tetrahedrons")
                view.names = {str(row["id"]): row["name"] for row in rows}
            except (psycopg.Error, FlowMeshError, OSError, TimeoutError) as exc:
                found = describe(exc)
                if found.sqlstate == "42501":  # the role may not read tetrahedrons: it sees none
                    view.names = {}
                else:  # unreachable: keep what was known, try again on the next event
                    log.warning("cannot refresh a live client's tetrahedrons: %s", found.message)
                    return
            view.hidden = set()
            view.fetched_at = time.monotonic()

    async def stream(self, identity: Identity):
        """The Server-Sent Events of one client, until it goes or the server stops."""
        subscriber = self.subscribe(identity)
        try:
            yield f"retry: {RETRY_MS}\n\n"
            if self.reachable is not None:
                yield sse("database", _shown_to(identity, self.database_state()))
            await self.visible(identity, [])  # what it may see, looked up as it connects
            while not self.closing:
                wait = self.keepalive_s
                if identity.expires_at is not None:  # a JWT's stream ends when it expires, as a request would
                    wait = min(wait, identity.expires_at - time.time())
                    if wait <= 0:
                        return
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), wait)
                except TimeoutError:
                    if identity.expires_at is None or time.time() < identity.expires_at:
                        yield ": keep-alive\n\n"
                    continue
                if item is _CLOSE:
                    return
                event, data = item
                if event == "database":
                    yield sse("database", _shown_to(identity, data))
                    continue
                if subscriber.overflowed and subscriber.queue.empty():
                    subscriber.overflowed = False
                    yield sse("change", {"kind": "overflow", "tetrahedrons": None, "ids": None})
                    continue
                kind, ids = data
                if ids is None:
                    yield sse("change", {"kind": kind, "tetrahedrons": None, "ids": None})
                    continue
                seen = await self.visible(subscriber.identity, ids)
                if seen:
                    yield sse("change", {"kind": kind, "tetrahedrons": sorted(seen.values()),
                                         "ids": sorted(seen)})
        finally:
            self.unsubscribe(subscriber)


async def events(request: Request):
    """GET /api/events: the Server-Sent Events stream."""
    try:
        identity = identify(request)
    except Unauthorized as exc:
        return unauthorized(str(exc))
    live: Live = request.app.state.dashboard.live
    return StreamingResponse(live.stream(identity), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


routes = [Route("/api/events", events)]
