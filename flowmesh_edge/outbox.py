"""The durable local outbox: every heartbeat is written here first.

A heartbeat is committed to SQLite (WAL, ``synchronous=FULL``) before anything
is sent, and removed only after Postgres has committed it, so a crash or a
database outage loses nothing. Shipping is at-least-once; the batched RPC is
idempotent by ``(src, seq)``, which makes delivery exactly-once in effect.

Sequence numbers increase strictly within an outbox. A new outbox starts its
counter at the current time in microseconds, so a device whose outbox file is
deleted keeps issuing numbers above the ones the database has already seen
(unless its clock went back further than the old outbox's lifetime of use).

Heartbeats that the database rejects as bad data (SQLSTATE classes 22, 23,
54) are moved to a dead-letter table with the error, so one bad row never
blocks the rest.

Besides heartbeats the outbox carries mesh events (membership changes and
alerts this node observed), with the same guarantees: both wait in the
``entries`` table, ``kind`` tells them apart and the shipper sends each kind
through its own RPC. Hash registry entries added on this node (``kind`` hash,
``MeshNode.add_hash``) wait there too, for ``register_hashes``. The statements
are named queries in ``outbox.sql``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flowmesh.queries import named

_QUERIES = Path(__file__).with_name("outbox.sql")


def q(name: str) -> str:
    """One of the outbox's named statements (outbox.sql)."""
    return named(_QUERIES, name)

HEARTBEAT = "heartbeat"
EVENT = "event"
#: A hash registry entry: its payload is the register_hashes element itself.
HASH = "hash"


@dataclass(frozen=True)
class Entry:
    """One queued heartbeat."""

    seq: int
    tetrahedron: str
    src: str
    role: str | None
    at: float
    payload: str  # JSON text of an object
    kind: str = HEARTBEAT

    def batch_item(self) -> str:
        """This entry as one element of a record_mesh_heartbeats (or _events, or
        register_hashes) batch."""
        if self.kind == HASH:
            return self.payload
        if self.kind == EVENT:
            event = json.loads(self.payload)
            return json.dumps({"observer": self.src, "seq": self.seq, "at": self.at, **event},
                              separators=(",", ":"))
        return (
            f'{{"src":{json.dumps(self.src)},"seq":{self.seq},'
            f'"at":{self.at!r},"payload":{self.payload}}}'
        )


class _Transaction:
    """One write transaction on the outbox's SQLite connection."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        # immediate: a concurrent `flowmesh-edge beat` on the same outbox
        # waits instead of racing for a sequence number
        self.db.execute(q("begin_immediate"))

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute(q("rollback" if exc_type else "commit"))


class Outbox:
    """A SQLite-backed FIFO of heartbeats and mesh events (the ``entries``
    table), safe to use from several threads."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._enter_wal()
        self._db.execute(q("synchronous_full"))
        with self._lock, self._transaction():
            self._upgrade()
            self._db.execute(q("init_next_seq"), {"start": int(time.time() * 1_000_000)})
        #: Entries waiting, by kind (heartbeat, event): counted here, then kept with every
        #: change this object makes, so that it is read with no SQL and no lock (the agent's
        #: /health, from its event loop). Replaced on each change, never changed in place.
        #: Entries another process queued count once this one removes them: a count that
        #: would fall below zero is taken again.
        self.depth: dict[str, int] = self.pending_by_kind()

    def _enter_wal(self, wait_s: float = 30.0) -> None:
        """Switch the file to write-ahead logging. Another process opening a new outbox
        at the same moment (``beat`` beside ``run``) can hold the lock this takes, and
        SQLite does not wait on it as it does for writes: retry, within the same 30 s."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._db.execute(q("journal_wal"))
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _upgrade(self) -> None:
        """Create the tables, and bring an outbox written by an older agent up to date."""
        if self._has("heartbeats") and not self._has("entries"):
            self._db.execute(q("rename_heartbeats_to_entries"))
        for table in ("create_meta", "create_entries", "create_dead_letters"):
            self._db.execute(q(table))
        for table, add_kind in (("entries", "add_entries_kind"), ("dead_letters", "add_dead_letters_kind")):
            columns = {row[0] for row in self._db.execute(q("table_columns"), {"name": table})}
            if "kind" not in columns:  # written before mesh events existed
                self._db.execute(q(add_kind))

    def _has(self, table: str) -> bool:
        return self._db.execute(q("table_exists"), {"name": table}).fetchone() is not None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def put(
        self,
        tetrahedron: str,
        src: str,
        payload: dict,
        *,
        role: str | None = None,
        at: float | None = None,
        kind: str = HEARTBEAT,
    ) -> int:
        """Queue a heartbeat (or, with ``kind=EVENT``, a mesh event) durably;
        return its sequence number."""
        if not isinstance(payload, dict):
            raise TypeError("payload must be a dict (a JSON object)")
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        at = time.time() if at is None else float(at)
        if not math.isfinite(at) or at <= 0:
            raise ValueError(f"at must be a positive Unix time, got {at!r}")
        with self._lock:
            with self._transaction():
                (seq,) = self._db.execute(q("next_seq")).fetchone()
                self._db.execute(q("insert_entry"), {"seq": seq, "tetrahedron": tetrahedron, "src": src,
                                                     "role": role, "at": at, "payload": text, "kind": kind})
                self._db.execute(q("set_next_seq"), {"value": seq + 1})
            self._count(kind, 1)
        return seq

    def _count(self, kind: str, change: int) -> None:
        """Move ``depth`` by what was just committed (under the lock)."""
        left = self.depth.get(kind, 0) + change
        if left < 0:  # removed what another process queued: count again
            self.depth = self._pending_by_kind()
        else:
            self.depth = {**self.depth, kind: left}

    def peek(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` queued entries, oldest first."""
        with self._lock:
            rows = self._db.execute(q("oldest_entries"), {"limit": limit}).fetchall()
        return [Entry(*row) for row in rows]

    def remove(self, seqs: list[int], kind: str | None = None) -> None:
        """Forget entries the database has committed, all of ``kind`` when it is given
        (the shipper's batches are), else of any kind (the depth is then counted again)."""
        if not seqs:
            return
        with self._lock:
            with self._transaction():
                removed = self._db.executemany(q("delete_entry"), [{"seq": s} for s in seqs]).rowcount
            if kind is None:
                self.depth = self._pending_by_kind()
            else:
                self._count(kind, -removed)

    def retime(self, new_times: dict[int, float]) -> None:
        """Durably change the time of queued entries (seq -> new Unix time).

        Used once per entry, before it is first sent, when the device clock is
        far ahead of the database's: the corrected time is what every later
        (re)send uses, so replays stay idempotent.
        """
        if not new_times:
            return
        with self._lock, self._transaction():
            self._db.executemany(q("retime_entry"),
                                 [{"at": at, "seq": seq} for seq, at in new_times.items()])

    def dead_letter(self, entry: Entry, error: str, sqlstate: str | None) -> None:
        """Move a heartbeat the database rejected as bad data out of the queue."""
        with self._lock:
            with self._transaction():
                self._db.execute(q("insert_dead_letter"), {
                    "seq": entry.seq, "tetrahedron": entry.tetrahedron, "src": entry.src,
                    "role": entry.role, "at": entry.at, "payload": entry.payload, "kind": entry.kind,
                    "sqlstate": sqlstate, "error": error, "failed_at": time.time()})
                removed = self._db.execute(q("delete_entry"), {"seq": entry.seq}).rowcount
            self._count(entry.kind, -removed)

    def pending(self) -> int:
        with self._lock:
            return self._db.execute(q("count_entries")).fetchone()[0]

    def pending_by_kind(self) -> dict[str, int]:
        """Entries waiting, by kind: ``{"heartbeat": n, "event": m, "hash": h}`` (0 for a kind with none),
        counted in the file (``depth`` has the same without a query)."""
        with self._lock:
            return self._pending_by_kind()

    def _pending_by_kind(self) -> dict[str, int]:
        counts = dict(self._db.execute(q("count_entries_by_kind")).fetchall())
        return {HEARTBEAT: 0, EVENT: 0, HASH: 0, **counts}

    def dead_letters(self) -> list[tuple[int, str, str | None, str]]:
        """(seq, src, sqlstate, error) of every dead-lettered heartbeat."""
        with self._lock:
            return self._db.execute(q("dead_letters")).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
