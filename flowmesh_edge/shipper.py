"""Ships the outbox to Postgres through the batched, idempotent RPC.

Failures are sorted by what they mean (``flowmesh.errors.describe``, the
same reading the command lines give them):

* the database is unreachable (connection refused, dropped, admin shutdown,
  timeouts): :class:`Unreachable`; nothing is removed and the caller backs off;
* the database rejects the data (SQLSTATE class 22, 23 or 54): the batch is
  split in halves until the bad heartbeat is alone, and that one goes to the
  outbox's dead-letter table, so it never blocks the rest;
* anything else (permission denied, schema not migrated): :class:`Rejected`;
  nothing is removed, the caller logs it and backs off, because fixing the
  configuration must not cost data;
* but hash registry entries refused because the server has no pgvector
  (0A000, sql/0015_create_hash_registry.sql) go to the dead-letter table with
  that error: they cannot be written there, and must not hold back the
  heartbeats queued behind them.

No call waits longer than ``call_timeout_s`` (the agent's ``--db-timeout``):
a path that goes silent (a NAT entry dropped, a wedged proxy: no reset, no
answer) would otherwise block a call forever. A watchdog cuts the socket when
the deadline passes (one watchdog thread keeps every deadline of the process,
``flowmesh_edge.watchdog``), the call fails as :class:`Unreachable` and the
next one opens a new connection. Each call is one statement in its own transaction
(autocommit), one round trip: through a pooler every round trip costs the
server and the pooler too. On the server a device credential's statements are
bounded by its role's ``statement_timeout`` (``flowmesh devices add`` sets
it), which a transaction pooler keeps, since each server connection logs in
as the role. :meth:`Shipper.abort` cuts the socket from another thread, so a
stopping agent is never held by a call in flight.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg

from flowmesh import database, errors, settings
from flowmesh.limits import CLOCK_AHEAD_MAX_S
from flowmesh.queries import query

from .outbox import EVENT, HASH, HEARTBEAT, Entry, Outbox
from .watchdog import WATCHDOG

log = logging.getLogger("flowmesh_edge.shipper")

#: How the agent's connections name themselves in pg_stat_activity.
APPLICATION_NAME = "flowmesh-edge"
#: Entries ahead by more than this (a margin under the database's limit,
#: CLOCK_AHEAD_MAX_S) are retimed before they are first sent.
RETIME_AHEAD_S = CLOCK_AHEAD_MAX_S - 30
#: The unknown-tetrahedron error: the tetrahedron was deleted since we registered.
UNKNOWN_TETRAHEDRON = "23503"
#: The hash registry on a server without pgvector (its functions raise this).
FEATURE_NOT_SUPPORTED = "0A000"


class Unreachable(Exception):
    """The database cannot be reached right now."""


class Rejected(Exception):
    """The database refused the shipment for a reason data cannot fix."""

    def __init__(self, message: str, sqlstate: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class ShipReport:
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0

    @property
    def shipped(self) -> int:
        return self.inserted + self.duplicates

    def add(self, other: ShipReport) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.batches += other.batches


class Shipper:
    """Moves heartbeats from an :class:`Outbox` into Postgres.

    Blocking by design (psycopg's sync API); the agent runs it in a worker
    thread so the event loop never waits on the network.
    """

    def __init__(self, outbox: Outbox, database_url: str | Callable[[], str], *,
                 batch_size: int = 500, call_timeout_s: float = settings.CALL_TIMEOUT_S,
                 clock: Callable[[], float] = time.time):
        self.outbox = outbox
        self._clock = clock  # this device's wall clock (injectable for tests)
        #: The URL, or a function that finds it (starting the embedded server),
        #: called on the first connection so that it is retried like one.
        self._database_url = database_url
        self.batch_size = batch_size
        #: The batch size in use: halved each time a call runs out of time (a
        #: link too slow to carry a full batch within the deadline would
        #: otherwise retry it forever), doubled back on each success.
        self.batch_limit = batch_size
        self.call_timeout_s = call_timeout_s
        self._conn: psycopg.Connection | None = None
        self._tetrahedron_ids: dict[tuple[str, str], str] = {}
        #: This device's clock minus the database's, seconds (measured on connect).
        self.clock_offset_s = 0.0
        #: Everything shipped through this shipper, counted batch by batch, so
        #: a flush that fails or is abandoned half-way still counts its batches.
        self.shipped = ShipReport()
        self._deadline: float | None = None  # monotonic; the current flush's, if any
        self._aborted = False
        #: Held while abort() cuts the socket from another thread and while the
        #: owning thread closes the connection: a cut never lands on a closed
        #: descriptor that a new socket may have reused.
        self._closing = threading.Lock()

    # connection -----------------------------------------------------------
    def _url(self) -> str:
        if callable(self._database_url):
            try:
                self._database_url = self._database_url()
            except errors.DatabaseUnreachable as exc:
                raise Unreachable(str(exc).removeprefix("cannot reach the database: ")) from exc
        return self._database_url

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        url = self._url()
        try:
            self._conn = database.connect(
                url, application_name=APPLICATION_NAME, call_timeout_s=self.call_timeout_s,
                # libpq counts whole seconds, 2 at least
                connect_timeout=max(2, math.ceil(min(settings.CONNECT_TIMEOUT_S, self._time_left()))),
            )
        except errors.DatabaseUnreachable as exc:
            raise Unreachable(str(exc).removeprefix("cannot reach the database: ")) from exc
        self._measure_clock()
        return self._conn

    def _time_left(self) -> float:
        """Seconds the next call may take: the call timeout, or less when the
        flush's deadline is nearer. Raises Unreachable when none is left."""
        if self._aborted:
            raise Unreachable("stopped before the database answered")
        left = self.call_timeout_s
        if self._deadline is not None:
            left = min(left, self._deadline - time.monotonic())
        if left <= 0:
            raise Unreachable("out of time before the database answered")
        return left

    def abort(self) -> None:
        """Fail the call in flight at once and refuse new ones (any thread).

        Used by a stopping agent: a call blocked on a silent path ends now,
        not at its deadline. The shipper is not usable afterwards.
        """
        self._aborted = True
        with self._closing:
            conn = self._conn
            if conn is not None:
                database.cut(conn)

    def _measure_clock(self) -> None:
        """Estimate this device's clock offset from the database's (NTP-style midpoint)."""
        assert self._conn is not None
        before = self._clock()
        try:
            (server,) = self._execute(self._conn, query("server_clock"), {})
        except Rejected:
            return  # a later call reports the problem
        self.clock_offset_s = (before + self._clock()) / 2 - server
        if self.clock_offset_s > RETIME_AHEAD_S:
            log.warning("this device's clock is %.0f s ahead of the database's; heartbeat times "
                        "too far ahead are corrected before sending (fix the clock: NTP)",
                        self.clock_offset_s)

    def _retime(self, entries: list[Entry]) -> list[Entry]:
        """Correct heartbeats the database would refuse as too far ahead, durably, once.

        Only entries more than RETIME_AHEAD_S ahead of the database are touched:
        those can never have been stored, so changing their time cannot turn a
        replay into a duplicate.
        """
        limit = self._clock() - self.clock_offset_s + RETIME_AHEAD_S
        fixed = {e.seq: e.at - self.clock_offset_s for e in entries
                 if e.kind == HEARTBEAT and e.at > limit and self.clock_offset_s > 0}
        if not fixed:
            return entries
        self.outbox.retime(fixed)
        return [replace(e, at=fixed[e.seq]) if e.seq in fixed else e for e in entries]

    def _cut_if_open(self, conn: psycopg.Connection) -> None:
        """The watchdog's cut: under the lock close() holds, and only while
        ``conn`` is still this shipper's (never a descriptor closed and reused)."""
        with self._closing:
            if self._conn is conn:
                database.cut(conn)

    def close(self) -> None:
        """Close the connection (the owning thread's; abort() is the one call
        another thread may make)."""
        with self._closing:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    # registration -------------------------------------------------------------
    def register(self, tetrahedron: str, node_id: str, role: str | None) -> str:
        """Make ``node_id`` a vertex of ``tetrahedron``; returns the tetrahedron id."""
        key = (tetrahedron, node_id)
        if key not in self._tetrahedron_ids:
            row = self._call(
                query("register_node"),
                {"tetrahedron": tetrahedron, "node_id": node_id, "role": role},
            )
            self._tetrahedron_ids[key] = str(row[0])
        return self._tetrahedron_ids[key]

    # shipping -----------------------------------------------------------------
    def flush(self, max_batches: int | None = None, *, deadline: float | None = None) -> ShipReport:
        """Ship queued heartbeats, oldest first, until the outbox is empty
        (entries queued during the flush may be left to the next one: their
        writer wakes the shipper).

        Raises :class:`Unreachable` or :class:`Rejected` on the first failure,
        after keeping whatever was already shipped. With ``deadline`` (a
        ``time.monotonic()`` value) no call runs past it.
        """
        report = ShipReport()
        self._deadline = deadline
        try:
            while max_batches is None or report.batches < max_batches:
                if self._aborted:  # the agent stopped (its outbox may be closed already)
                    raise Unreachable("stopped before the database answered")
                limit = self.batch_limit
                entries = self.outbox.peek(limit)
                if not entries:
                    break
                for group in _by_destination(entries):
                    report.add(self._ship_group(group))
                if len(entries) < limit:
                    # the outbox held no more when peeked: what came since was
                    # queued by a writer that wakes the shipper again, so no
                    # second look (one SQLite read per heartbeat saved)
                    break
        finally:
            self._deadline = None
        return report

    def _ship_group(self, entries: list[Entry]) -> ShipReport:
        first = entries[0]
        tetrahedron_id = self.register(first.tetrahedron, first.src, first.role)
        entries = self._retime(entries)
        try:
            return self._ship(tetrahedron_id, entries)
        except Rejected as exc:
            if exc.sqlstate != UNKNOWN_TETRAHEDRON:
                raise
            # the tetrahedron was deleted since we registered: register again once
            self._tetrahedron_ids.pop((first.tetrahedron, first.src), None)
            tetrahedron_id = self.register(first.tetrahedron, first.src, first.role)
            return self._ship(tetrahedron_id, entries)

    def _ship(self, tetrahedron_id: str, entries: list[Entry]) -> ShipReport:
        batch = "[" + ",".join(e.batch_item() for e in entries) + "]"
        kind = entries[0].kind  # a batch is of one kind, shipped through its own RPC
        sql = (query("register_hashes") if kind == HASH else query("record_events") if kind == EVENT
               else query("record_heartbeats"))
        try:
            received, inserted, duplicates = self._call(
                sql, {"tetrahedron_id": tetrahedron_id, "batch": batch}
            )
        except _DataError as exc:
            if len(entries) == 1:
                log.error(
                    "%s seq %s of %s rejected by the database [%s]: %s; moved to dead letters",
                    entries[0].kind, entries[0].seq, entries[0].src, exc.sqlstate, exc,
                )
                self.outbox.dead_letter(entries[0], str(exc), exc.sqlstate)
                return self._count(ShipReport(dead_lettered=1, batches=1))
            half = len(entries) // 2
            report = self._ship(tetrahedron_id, entries[:half])
            report.add(self._ship(tetrahedron_id, entries[half:]))
            return report
        except Rejected as exc:
            if kind != HASH or exc.sqlstate != FEATURE_NOT_SUPPORTED:
                raise
            log.error("%d hash registry entries of %s refused [%s]: %s; moved to dead letters",
                      len(entries), entries[0].src, exc.sqlstate, exc)
            for entry in entries:
                self.outbox.dead_letter(entry, str(exc), exc.sqlstate)
            return self._count(ShipReport(dead_lettered=len(entries), batches=1))
        assert received == len(entries)
        self.outbox.remove([e.seq for e in entries], entries[0].kind)  # a batch is of one kind
        self.batch_limit = min(self.batch_size, self.batch_limit * 2)
        return self._count(ShipReport(inserted=inserted, duplicates=duplicates, batches=1))

    def _count(self, report: ShipReport) -> ShipReport:
        self.shipped.add(report)
        return report

    def _call(self, sql: str, params: dict) -> tuple:
        return self._execute(self._connection(), sql, params)

    def _execute(self, conn: psycopg.Connection, sql: str, params: dict) -> tuple:
        """Run one statement in its own transaction, within the time left.

        The watchdog cuts the socket if no answer came in time: on a silent
        path, nothing else would end the wait.
        """
        timeout = self._time_left()
        alarm = WATCHDOG.arm(timeout, lambda: self._cut_if_open(conn))
        try:
            # one statement, its own transaction (autocommit): one round trip
            return conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            # disarming waits for a cut in progress, so the socket is never
            # closed (and its number reused) under it
            expired = alarm.disarm()
            if expired or self._aborted:
                self.close()
                if self._aborted:
                    raise Unreachable("stopped before the database answered") from exc
                self.batch_limit = max(1, self.batch_limit // 2)
                raise Unreachable(f"no answer from the database within {timeout:g} s; "
                                  "connection dropped") from exc
            failure = errors.describe(exc)
            reason = errors.one_line(exc)
            if failure.kind == errors.BAD_DATA and failure.sqlstate != UNKNOWN_TETRAHEDRON:
                raise _DataError(reason, failure.sqlstate) from exc
            if failure.kind == errors.UNREACHABLE:
                self.close()
                if failure.sqlstate == errors.QUERY_CANCELED:  # the role's statement_timeout
                    self.batch_limit = max(1, self.batch_limit // 2)
                raise Unreachable(reason) from exc
            raise Rejected(reason, failure.sqlstate) from exc
        finally:
            if alarm.disarm():  # fired just as the answer came: the socket is cut anyway
                self.close()


class _DataError(Rejected):
    """The database rejected the content of a batch."""


def _by_destination(entries: list[Entry]) -> list[list[Entry]]:
    """Entries grouped by (tetrahedron, src, kind), in order of first appearance, order kept."""
    groups: OrderedDict[tuple[str, str, str], list[Entry]] = OrderedDict()
    for entry in entries:
        groups.setdefault((entry.tetrahedron, entry.src, entry.kind), []).append(entry)
    return list(groups.values())
