"""The outbox on its own: durable, ordered, strictly increasing sequence numbers."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmesh_edge.outbox import EVENT, HASH, HEARTBEAT, Outbox


def test_put_peek_remove_in_order(tmp_path):
    with Outbox(tmp_path / "o.sqlite3") as box:
        seqs = [box.put("home", "pi", {"n": i}) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        entries = box.peek(3)
        assert [e.seq for e in entries] == seqs[:3]
        assert [json.loads(e.payload) for e in entries] == [{"n": 0}, {"n": 1}, {"n": 2}]
        box.remove([e.seq for e in entries])
        assert box.pending() == 2
        assert [e.seq for e in box.peek(10)] == seqs[3:]


def test_the_depth_by_kind_is_kept_without_a_query_and_matches_the_file(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        assert box.depth == box.pending_by_kind() == {"heartbeat": 0, "event": 0, "hash": 0}
        first, second = box.put("home", "pi", {}), box.put("home", "pi", {})
        box.put("home", "pi", {"kind": "joined", "subject": "cam"}, kind=EVENT)
        assert box.depth == box.pending_by_kind() == {"heartbeat": 2, "event": 1, "hash": 0}
        box.remove([first], HEARTBEAT)
        assert box.depth == box.pending_by_kind() == {"heartbeat": 1, "event": 1, "hash": 0}
        box.dead_letter(box.peek(1)[0], "bad", "22023")
        assert box.depth == box.pending_by_kind() == {"heartbeat": 0, "event": 1, "hash": 0}
        box.remove([second], HEARTBEAT)  # already gone: nothing removed, nothing counted
        assert box.depth == {"heartbeat": 0, "event": 1, "hash": 0}
        # another process queues two heartbeats: this one learns of them as it ships them
        with Outbox(path) as other:
            assert other.depth == {"heartbeat": 0, "event": 1, "hash": 0}
            other.put("home", "pi", {})
            other.put("home", "pi", {})
        assert box.depth == {"heartbeat": 0, "event": 1, "hash": 0}
        box.remove([e.seq for e in box.peek(10) if e.kind == HEARTBEAT][:1], HEARTBEAT)
        assert box.depth == box.pending_by_kind() == {"heartbeat": 1, "event": 1, "hash": 0}
        box.remove([e.seq for e in box.peek(10)])  # of any kind: counted again
        assert box.depth == box.pending_by_kind() == {"heartbeat": 0, "event": 0, "hash": 0}
    with Outbox(path) as box:  # counted when opened
        box_seq = box.put("home", "pi", {})
        assert box_seq and box.depth == {"heartbeat": 1, "event": 0, "hash": 0}
        entry = {"hash": "h1", "data_type": "person", "node": "pi", "embedding": [0.5, 1.0], "version": 2}
        box.put("home", "pi", entry, kind=HASH)
        assert box.depth == box.pending_by_kind() == {"heartbeat": 1, "event": 0, "hash": 1}
        (queued,) = [e for e in box.peek(10) if e.kind == HASH]
        assert json.loads(queued.batch_item()) == entry  # the register_hashes element itself


def test_survives_reopen_and_never_reuses_a_sequence(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        first = box.put("home", "pi", {})
        box.remove([first])
    with Outbox(path) as box:
        second = box.put("home", "pi", {})
        assert second > first
        assert box.pending() == 1


def test_new_outbox_starts_above_an_older_one(tmp_path):
    with Outbox(tmp_path / "a.sqlite3") as old:
        last = max(old.put("home", "pi", {}) for _ in range(100))
    time.sleep(0.01)
    with Outbox(tmp_path / "b.sqlite3") as new:
        assert new.put("home", "pi", {}) > last


def test_concurrent_writers_get_unique_sequences(tmp_path):
    path = tmp_path / "o.sqlite3"
    seqs: list[int] = []
    lock = threading.Lock()

    def writer():
        with Outbox(path) as box:  # separate connections, like `beat` beside `run`
            for _ in range(50):
                s = box.put("home", "pi", {})
                with lock:
                    seqs.append(s)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(seqs) == 200 and len(set(seqs)) == 200


def test_dead_letter_moves_the_entry(tmp_path):
    with Outbox(tmp_path / "o.sqlite3") as box:
        box.put("home", "pi", {"ok": 1})
        bad = box.put("home", "pi", {"bad": 1})
        entry = [e for e in box.peek(10) if e.seq == bad][0]
        box.dead_letter(entry, "payload too big", "54000")
        assert box.pending() == 1
        assert box.dead_letters() == [(bad, "pi", "54000", "payload too big")]


@pytest.mark.parametrize("payload", [[1], "x", None])
def test_rejects_non_object_payload(tmp_path, payload):
    with Outbox(tmp_path / "o.sqlite3") as box, pytest.raises(TypeError):
        box.put("home", "pi", payload)


@pytest.mark.parametrize("at", [float("nan"), float("inf"), -1.0])
def test_rejects_bad_time(tmp_path, at):
    with Outbox(tmp_path / "o.sqlite3") as box, pytest.raises(ValueError):
        box.put("home", "pi", {}, at=at)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    src=st.text(min_size=1, max_size=30),
    at=st.floats(min_value=1, max_value=4e9),
)
def test_batch_item_is_valid_json_that_round_trips(payload, src, at):
    with Outbox(":memory:") as box:
        seq = box.put("home", src, payload, at=at)
        item = json.loads(box.peek(1)[0].batch_item())
    assert item == {"src": src, "seq": seq, "at": at, "payload": payload}


def test_an_outbox_written_by_an_older_agent_keeps_its_queue(tmp_path):
    """Older agents queued in a table called heartbeats, without a kind column."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        create table meta (key text primary key, value integer not null);
        insert into meta values ('next_seq', 100);
        create table heartbeats (seq integer primary key, tetrahedron text not null, src text not null,
                                 role text, at real not null, payload text not null);
        insert into heartbeats values (98, 'home', 'pi', null, 1795276000.0, '{"n": 1}');
        insert into heartbeats values (99, 'home', 'pi', null, 1795276010.0, '{"n": 2}');
        create table dead_letters (seq integer primary key, tetrahedron text not null, src text not null,
                                   role text, at real not null, payload text not null, sqlstate text,
                                   error text not null, failed_at real not null);
    """)
    db.close()
    with Outbox(path) as box:
        assert box.pending() == 2
        assert [(e.seq, e.kind, json.loads(e.payload)) for e in box.peek(10)] == \
            [(98, "heartbeat", {"n": 1}), (99, "heartbeat", {"n": 2})]
        assert box.put("home", "pi", {"n": 3}) == 100
    with Outbox(path) as box:  # opening again changes nothing
        assert box.pending() == 3


def test_every_outbox_statement_is_used():
    import re
    from pathlib import Path

    import flowmesh_edge.outbox as module
    from flowmesh.queries import load

    literals = set(re.findall(r'"([a-z_]+)"', Path(module.__file__).read_text()))
    assert set(load(module._QUERIES)) <= literals
