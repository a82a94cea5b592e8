"""record_mesh_heartbeat, record_mesh_heartbeats and the derived state they maintain."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.conftest import register


def counts(conn):
    return conn.execute(
        "select (select count(*) from mesh_heartbeats), "
        "(select count(*) from nodes), "
        "(select array_agg(last_heartbeat_at order by name) from tetrahedrons)"
    ).fetchone()


def test_record_mesh_heartbeat_writes_row_tetrahedron_and_node(conn):
    tid = register(conn, "home", "pi")
    row = conn.execute(
        "select id, tetrahedron_id, source, payload, created_at "
        "from record_mesh_heartbeat(%s, %s, %s)",
        (tid, "device-abc", json.dumps({"ping": True, "metrics": {"cpu_percent": 12}})),
    ).fetchone()
    assert row[1] == tid and row[2] == "device-abc" and row[3]["ping"] is True
    (last,) = conn.execute(
        "select last_heartbeat_at from tetrahedrons where id = %s", (tid,)
    ).fetchone()
    assert last == row[4]
    node = conn.execute(
        "select status, metrics, last_heartbeat_at from nodes "
        "where tetrahedron_id = %s and node_id = 'device-abc'",
        (tid,),
    ).fetchone()
    assert node == ("online", {"cpu_percent": 12}, row[4])


def test_seed_queries_run_verbatim(conn):
    tid = register(conn, "home", "pi")
    conn.execute("select record_mesh_heartbeat(%s, 'device-abc', '{\"ping\": true}')", (tid,))
    # the public contract's two example queries and its checker query, as written
    recent = conn.execute(
        f"SELECT * FROM public.mesh_heartbeats WHERE tetrahedron_id = '{tid}' "
        "ORDER BY created_at DESC LIMIT 10;"
    ).fetchall()
    assert len(recent) == 1
    last = conn.execute(
        f"SELECT id, name, last_heartbeat_at FROM public.tetrahedrons WHERE id = '{tid}';"
    ).fetchone()
    assert last[1] == "home" and last[2] is not None
    stale = conn.execute(
        "SELECT id, name, last_heartbeat_at FROM public.tetrahedrons "
        "WHERE last_heartbeat_at IS NULL OR last_heartbeat_at < NOW() - INTERVAL '1 hour';"
    ).fetchall()
    assert stale == []
    # the public contract's pg_cron statement
    conn.execute("SELECT public.check_mesh_heartbeats_and_alert(60);")


BASE = time.time() - 3600


def batch(src, seqs, **extra):
    """Items whose "at" derives from seq, so that a replay is byte for byte the same."""
    return json.dumps([{"src": src, "seq": s, "at": BASE + s, "payload": {"n": s}, **extra}
                       for s in seqs])


def test_batch_is_idempotent(conn):
    tid = register(conn, "home", "pi")
    sql = "select received, inserted, duplicates from record_mesh_heartbeats(%s, %s)"
    assert conn.execute(sql, (tid, batch("pi", [1, 2, 3]))).fetchone() == (3, 3, 0)
    assert conn.execute(sql, (tid, batch("pi", [1, 2, 3]))).fetchone() == (3, 0, 3)
    assert conn.execute(sql, (tid, batch("pi", [3, 4]))).fetchone() == (2, 1, 1)
    # a sequence number repeated inside one batch is stored once
    assert conn.execute(sql, (tid, batch("pi", [5, 5]))).fetchone() == (2, 1, 1)
    rows = conn.execute(
        "select source, seq from mesh_heartbeats where tetrahedron_id = %s order by seq", (tid,)
    ).fetchall()
    assert rows == [("pi", s) for s in (1, 2, 3, 4, 5)]
    (last_seq,) = conn.execute(
        "select last_seq from nodes where tetrahedron_id = %s and node_id = 'pi'", (tid,)
    ).fetchone()
    assert last_seq == 5


def test_batch_keeps_sample_time_and_refuses_a_clock_far_ahead(conn):
    tid = register(conn, "home", "pi")
    past, soon = time.time() - 3600, time.time() + 60
    items = [{"src": "pi", "seq": 1, "at": past, "payload": {}},
             {"src": "pi", "seq": 2, "at": soon, "payload": {}}]  # a clock slightly ahead: kept
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(items)))
    rows = conn.execute("select extract(epoch from created_at)::float8 from mesh_heartbeats "
                        "order by seq").fetchall()
    assert abs(rows[0][0] - past) < 0.001 and abs(rows[1][0] - soon) < 0.001
    (last,) = conn.execute("select last_heartbeat_at <= now() from tetrahedrons").fetchone()
    assert last  # derived state never runs ahead of the server
    far = [{"src": "pi", "seq": 3, "at": time.time() + 3600, "payload": {}}]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ahead of the server clock"):
        conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(far)))


def test_batches_land_in_daily_partitions_created_on_demand(conn):
    tid = register(conn, "home", "pi")
    days = [time.time() - 86400 * k for k in (40, 3, 0)]
    items = [{"src": "pi", "seq": i + 1, "at": at, "payload": {}} for i, at in enumerate(days)]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(items)))
    parts = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "join mesh_heartbeats h on h.tableoid = c.oid order by 1").fetchall()
    assert len({p[0] for p in parts}) == 3
    assert conn.execute("select * from record_mesh_heartbeats(%s, %s)", (tid, json.dumps(items))
                        ).fetchone() == (3, 0, 3)  # replays dedupe across partitions
    created, dropped, oldest, _ = conn.execute("select * from maintain_heartbeat_partitions('30 days')"
                                               ).fetchone()
    assert dropped >= 1 and conn.execute("select count(*) from mesh_heartbeats").fetchone() == (2,)
    assert (oldest - __import__("datetime").date.today()).days >= -31


def partition_days(conn) -> set:
    return {r[0] for r in conn.execute(
        "select to_date(right(c.relname, 8), 'YYYYMMDD') from pg_inherits i "
        "join pg_class c on c.oid = i.inhrelid where i.inhparent = 'mesh_heartbeats'::regclass")}


def utc_today(conn):
    return conn.execute("select (now() at time zone 'UTC')::date").fetchone()[0]


def test_the_migration_and_maintenance_keep_today_and_a_week_ahead(conn):
    today = utc_today(conn)
    week = {today + timedelta(days=d) for d in range(8)}
    assert week <= partition_days(conn)  # made by the migration
    gone = today + timedelta(days=3)
    conn.execute(f"drop table flowmesh_partitions.mesh_heartbeats_{gone:%Y%m%d}")
    created, dropped, _, newest = conn.execute("select * from maintain_heartbeat_partitions()").fetchone()
    assert (created, dropped, newest) == (1, 0, today + timedelta(days=7))
    assert week <= partition_days(conn)
    assert conn.execute("select created from maintain_heartbeat_partitions(days_ahead => 10)"
                        ).fetchone() == (3,)


def test_retention_drops_the_days_older_than_it_and_keeps_the_rest(conn):
    tid = register(conn, "home", "pi")
    today = utc_today(conn)
    noon = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    ages = (45, 31, 30, 29)
    items = [{"src": "pi", "seq": i + 1, "at": (noon - timedelta(days=age)).timestamp(), "payload": {}}
             for i, age in enumerate(ages)]
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(items)))
    assert {today - timedelta(days=age) for age in ages} <= partition_days(conn)
    assert conn.execute("select dropped from maintain_heartbeat_partitions(retention => null)"
                        ).fetchone() == (0,)  # null keeps everything
    _, dropped, oldest, _ = conn.execute("select * from maintain_heartbeat_partitions('30 days')").fetchone()
    assert (dropped, oldest) == (2, today - timedelta(days=30))  # 45 and 31 days old
    kept = conn.execute("select count(*) from mesh_heartbeats").fetchone()[0]
    assert kept == 2


def test_direct_insert_and_copy_maintain_derived_state(conn):
    tid = register(conn, "home", "pi")
    with conn.cursor().copy(
        "copy mesh_heartbeats (tetrahedron_id, source, payload) from stdin"
    ) as copy:
        copy.write_row((tid, "cam", json.dumps({"metrics": {"fps": 30}})))
    last, metrics = conn.execute(
        "select t.last_heartbeat_at, n.metrics from tetrahedrons t "
        "join nodes n on n.tetrahedron_id = t.id and n.node_id = 'cam' where t.id = %s",
        (tid,),
    ).fetchone()
    assert last is not None and metrics == {"fps": 30}


def test_future_timestamps_never_make_a_tetrahedron_look_alive(conn):
    tid = register(conn, "home", "pi")
    conn.execute(
        "insert into mesh_heartbeats (tetrahedron_id, source, created_at) "
        "values (%s, 'pi', now() + interval '1 day')", (tid,))
    capped = conn.execute(
        "select t.last_heartbeat_at <= now(), n.last_heartbeat_at <= now() "
        "from tetrahedrons t join nodes n on n.tetrahedron_id = t.id where t.id = %s", (tid,)
    ).fetchone()
    assert capped == (True, True)


def test_retention_arguments_are_checked(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="retention"):
        conn.execute("select maintain_heartbeat_partitions('1 hour')")


def test_older_heartbeat_does_not_move_state_back(conn):
    tid = register(conn, "home", "pi")
    now = time.time()
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(
        [{"src": "pi", "seq": 10, "at": now, "payload": {"metrics": {"cpu_percent": 50}}}])))
    conn.execute("select record_mesh_heartbeats(%s, %s)", (tid, json.dumps(
        [{"src": "pi", "seq": 9, "at": now - 60, "payload": {"metrics": {"cpu_percent": 1}}}])))
    metrics, last_seq = conn.execute(
        "select metrics, last_seq from nodes where node_id = 'pi'").fetchone()
    assert metrics == {"cpu_percent": 50} and last_seq == 10


BIG = {"blob": "x" * 40000}
MISSING = object()


@pytest.mark.parametrize(
    ("call", "args", "sqlstate", "message"),
    [
        ("single", (None, "pi", {}), "22004", "tetrahedron id must not be null"),
        ("single", ("unknown", "pi", {}), "23503", "does not exist"),
        ("single", ("home", "pi", None), "22004", "payload must not be null"),
        ("single", ("home", "pi", [1, 2]), "22023", "payload must be a JSON object, got array"),
        ("single", ("home", "pi", "text"), "22023", "payload must be a JSON object, got string"),
        ("single", ("home", "pi", BIG), "54000", "the limit is 16384"),
        ("single", ("home", "", {}), "22023", "src must be 1 to 128"),
        ("single", ("home", None, {}), "22004", "src must not be null"),
        ("batch", ("home", None), "22004", "batch must not be null"),
        ("batch", ("home", {"src": "pi"}), "22023", "batch must be a JSON array"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": {}}, {"src": "pi", "seq": "2",
                    "payload": {}}]), "22023", "batch element 1: seq must be a positive integer"),
        ("batch", ("home", [{"src": "pi", "seq": 1.5, "payload": {}}]), "22023",
         "batch element 0: seq must be a positive integer, got 1.5"),
        ("batch", ("home", [{"src": "pi", "seq": -1, "payload": {}}]), "22023",
         "seq must be a positive integer"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": {}}, 7]), "22023",
         "batch element 1: must be a JSON object"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": []}]), "22023",
         "batch element 0: payload must be a JSON object"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": {}},
                            {"src": "pi", "seq": 2, "payload": BIG}]), "54000",
         "batch element 1: payload is"),
        ("batch", ("home", [{"src": 5, "seq": 1, "payload": {}}]), "22023",
         "src must be a string"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": {}, "at": "yesterday"}]),
         "22023", "at must be a Unix time"),
        ("batch", ("home", [{"src": "pi", "seq": 1, "payload": {}, "at": MISSING}]),
         "22023", "at must be a Unix time in seconds, got nothing"),
        ("batch", ("home", [{"src": "pi", "seq": i + 1, "payload": {}} for i in range(10001)]),
         "54000", "the limit is 10000"),
    ],
)
def test_bad_input_is_rejected_and_writes_nothing(conn, call, args, sqlstate, message):
    tid = register(conn, "home", "pi")
    target = {"home": tid, "unknown": uuid.uuid4(), None: None}[args[0]]
    before = counts(conn)
    with pytest.raises(psycopg.Error) as info:
        if call == "single":
            conn.execute(
                "select record_mesh_heartbeat(%s, %s, %s::jsonb)",
                (target, args[1], None if args[2] is None else json.dumps(args[2])),
            )
        else:
            items = args[1]
            if isinstance(items, list):  # every item gets a time unless the case is about time
                items = [dict(i, at=time.time()) if isinstance(i, dict) and "at" not in i else i
                         for i in items]
                items = [{k: v for k, v in i.items() if v is not MISSING} if isinstance(i, dict) else i
                         for i in items]
            conn.execute(
                "select record_mesh_heartbeats(%s, %s::jsonb)",
                (target, None if items is None else json.dumps(items)),
            )
    assert info.value.sqlstate == sqlstate
    assert message in str(info.value)
    assert counts(conn) == before


def test_wrong_argument_type_is_a_clear_error(conn):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="uuid"):
        conn.execute("select record_mesh_heartbeat('not-a-uuid', 'pi', '{}')")


def test_register_node_is_idempotent_and_validates(conn):
    a = register(conn, "home", "pi")
    b = register(conn, "home", "pi")
    c = register(conn, "home", "phone")
    assert a == b == c
    assert conn.execute("select count(*) from tetrahedron_vertices").fetchone() == (2,)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select register_node('', 'pi')")
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("select register_node(null, 'pi')")
