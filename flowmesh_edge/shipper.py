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
  configuration must not cost data.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg

from flowmesh import database, errors
from flowmesh.limits import CLOCK_AHEAD_MAX_S
from flowmesh.queries import query

from .outbox import EVENT, HEARTBEAT, Entry, Outbox

log = logging.getLogger("flowmesh_edge.shipper")

#: How the agent's connections name themselves in pg_stat_activity.
APPLICATION_NAME = "flowmesh-edge"
#: Entries ahead by more than this (a margin under the database's limit,
#: CLOCK_AHEAD_MAX_S) are retimed before they are first sent.
RETIME_AHEAD_S = CLOCK_AHEAD_MAX_S - 30
#: The unknown-tetrahedron error: the tetrahedron was deleted since we registered.
UNKNOWN_TETRAHEDRON = "23503"


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

    def __init__(self, outbox: Outbox, database_url: str, *, batch_size: int = 500,
                 clock: Callable[[], float] = time.time):
        self.outbox = outbox
        self._clock = clock  # this device's wall clock (injectable for tests)
        self.database_url = database_url
        self.batch_size = batch_size
        self._conn: psycopg.Connection | None = None
        self._tetrahedron_ids: dict[tuple[str, str], str] = {}
        #: This device's clock minus the database's, seconds (measured on connect).
        self.clock_offset_s = 0.0

    # connection -----------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            self._conn = database.connect(self.database_url, application_name=APPLICATION_NAME)
        except errors.DatabaseUnreachable as exc:
            raise Unreachable(str(exc).removeprefix("cannot reach the database: ")) from exc
        self._measure_clock()
        return self._conn

    def _measure_clock(self) -> None:
        """Estimate this device's clock offset from the database's (NTP-style midpoint)."""
        assert self._conn is not None
        before = self._clock()
        try:
            (server,) = self._conn.execute(query("server_clock")).fetchone()
        except psycopg.Error:
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

    def close(self) -> None:
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
    def flush(self, max_batches: int | None = None) -> ShipReport:
        """Ship queued heartbeats, oldest first, until the outbox is empty.

        Raises :class:`Unreachable` or :class:`Rejected` on the first failure,
        after keeping whatever was already shipped.
        """
        report = ShipReport()
        while max_batches is None or report.batches < max_batches:
            entries = self.outbox.peek(self.batch_size)
            if not entries:
                break
            for group in _by_destination(entries):
                report.add(self._ship_group(group))
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
        sql = query("record_events") if entries[0].kind == EVENT else query("record_heartbeats")
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
                return ShipReport(dead_lettered=1, batches=1)
            half = len(entries) // 2
            report = self._ship(tetrahedron_id, entries[:half])
            report.add(self._ship(tetrahedron_id, entries[half:]))
            return report
        assert received == len(entries)
        self.outbox.remove([e.seq for e in entries])
        return ShipReport(inserted=inserted, duplicates=duplicates, batches=1)

    def _call(self, sql: str, params: dict) -> tuple:
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            failure = errors.describe(exc)
            reason = errors.one_line(exc)
            if failure.kind == errors.BAD_DATA and failure.sqlstate != UNKNOWN_TETRAHEDRON:
                raise _DataError(reason, failure.sqlstate) from exc
            if failure.kind == errors.UNREACHABLE:
                self.close()
                raise Unreachable(reason) from exc
            raise Rejected(reason, failure.sqlstate) from exc


class _DataError(Rejected):
    """The database rejected the content of a batch."""


def _by_destination(entries: list[Entry]) -> list[list[Entry]]:
    """Entries grouped by (tetrahedron, src, kind), in order of first appearance, order kept."""
    groups: OrderedDict[tuple[str, str, str], list[Entry]] = OrderedDict()
    for entry in entries:
        groups.setdefault((entry.tetrahedron, entry.src, entry.kind), []).append(entry)
    return list(groups.values())
