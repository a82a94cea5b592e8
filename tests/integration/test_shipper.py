"""The shipper against a real database: batching, replay, poison isolation,
and what it does when the database is away or refuses."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from flowmesh_edge.outbox import Outbox
from flowmesh_edge.shipper import Rejected, Shipper, Unreachable

#: Every test here runs twice: directly, and through PgBouncer in transaction mode.
pytestmark = pytest.mark.pooler


def count(conn, src=None):
    sql = "select count(*), count(distinct (source, seq)) from mesh_heartbeats"
    if src:
        sql += f" where source = '{src}'"
    return conn.execute(sql).fetchone()


@pytest.fixture
def box(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite3") as b:
        yield b


def test_ships_everything_in_batches_and_empties_the_outbox(conn, db_url, box):
    for i in range(1200):
        box.put("home", "pi" if i % 3 else "cam", {"metrics": {"cpu_percent": i % 100}})
    shipper = Shipper(box, db_url, batch_size=500)
    report = shipper.flush()
    shipper.close()
    assert (report.inserted, report.duplicates, report.dead_lettered) == (1200, 0, 0)
    assert box.pending() == 0
    assert count(conn) == (1200, 1200)
    tetra = conn.execute("select name, last_heartbeat_at is not null from tetrahedrons").fetchall()
    assert tetra == [("home", True)]


def test_replay_after_a_crash_between_commit_and_removal(conn, db_url, box, monkeypatch):
    for _ in range(10):
        box.put("home", "pi", {})
    shipper = Shipper(box, db_url)
    real_remove = box.remove

    def crash(seqs, kind=None):
        raise RuntimeError("power cut after the database committed")

    monkeypatch.setattr(box, "remove", crash)
    with pytest.raises(RuntimeError):
        shipper.flush()
    assert box.pending() == 10 and count(conn) == (10, 10)
    monkeypatch.setattr(box, "remove", real_remove)
    report = shipper.flush()
    shipper.close()
    assert (report.inserted, report.duplicates) == (0, 10)
    assert count(conn) == (10, 10) and box.pending() == 0


def test_one_bad_heartbeat_is_dead_lettered_and_the_rest_ship(conn, db_url, box):
    for i in range(25):
        payload = {"blob": "x" * 40000} if i == 13 else {"n": i}
        box.put("home", "pi", payload)
    shipper = Shipper(box, db_url, batch_size=100)
    report = shipper.flush()
    shipper.close()
    assert (report.inserted, report.dead_lettered) == (24, 1)
    assert box.pending() == 0
    [(seq, src, state, error)] = box.dead_letters()
    assert state == "54000" and "limit is 16384" in error
    assert count(conn) == (24, 24)


def test_unreachable_database_keeps_everything(box):
    box.put("home", "pi", {})
    shipper = Shipper(box, "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    with pytest.raises(Unreachable, match="refused"):
        shipper.flush()
    assert box.pending() == 1


def test_refusal_keeps_everything(pg_server, db_url, box):
    role = f"edge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(f"create role {role} login in role authenticated")
        admin.execute(f"grant authenticated to {role}")
    try:
        box.put("home", "pi", {})
        url = db_url.replace("postgresql://postgres:@", f"postgresql://{role}:@")
        shipper = Shipper(box, url)
        with pytest.raises(Rejected) as info:
            shipper.flush()
        shipper.close()
        assert info.value.sqlstate == "42501"
        assert box.pending() == 1
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(f"drop role {role}")


def test_reregisters_when_the_tetrahedron_was_deleted(conn, db_url, box):
    shipper = Shipper(box, db_url)
    box.put("home", "pi", {})
    shipper.flush()
    conn.execute("delete from tetrahedrons")
    box.put("home", "pi", {})
    report = shipper.flush()
    shipper.close()
    assert report.inserted == 1 and box.pending() == 0
    assert conn.execute("select count(*) from tetrahedrons").fetchone() == (1,)


def test_a_clock_far_ahead_is_corrected_once_and_replays_stay_idempotent(conn, db_url, box, monkeypatch):
    """A device an hour ahead (no RTC, no NTP yet): its heartbeats are retimed by the
    measured offset, durably, and stored at the database's time instead of refused."""
    import time

    ahead = 3600.0

    def fast_clock() -> float:
        return time.time() + ahead

    for _ in range(5):
        box.put("home", "pi", {}, at=fast_clock())  # sampled on the fast clock
    shipper = Shipper(box, db_url, clock=fast_clock)
    real_remove = box.remove

    def crash(seqs, kind=None):
        raise RuntimeError("power cut after the database committed")

    monkeypatch.setattr(box, "remove", crash)
    with pytest.raises(RuntimeError):
        shipper.flush()
    assert 3500 < shipper.clock_offset_s < 3700
    monkeypatch.setattr(box, "remove", real_remove)
    report = shipper.flush()  # the replay reuses the corrected, stored times
    shipper.close()
    assert (report.inserted, report.duplicates, report.dead_lettered) == (0, 5, 0)
    assert box.dead_letters() == []
    (skew,) = conn.execute("select max(abs(extract(epoch from created_at - now()))) "
                           "from mesh_heartbeats").fetchone()
    assert skew < 60 and count(conn) == (5, 5)
