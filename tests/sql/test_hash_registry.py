"""The hash registry: register_hashes (validation, idempotency by version, who may
write), search_hashes (nearest first, filters that still return k) and lookups."""

from __future__ import annotations

import json
import math
import random
import uuid

import psycopg
import pytest

from flowmesh.limits import EMBEDDING_DIMENSIONS
from tests.conftest import acting_as, register


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def near(centre: list[float], rng: random.Random, spread: float = 0.01) -> list[float]:
    return unit([x + rng.gauss(0, spread) for x in centre])


def entry(hash_value: str, embedding: list[float], node: str = "cam", data_type: str = "person", **extra):
    return {"hash": hash_value, "data_type": data_type, "node": node, "embedding": embedding, **extra}


def register_hashes(conn, tid, items):
    return conn.execute("select * from register_hashes(%s, %s)", (tid, json.dumps(items))).fetchone()


def vector(embedding: list[float]) -> str:
    return json.dumps(embedding)


@pytest.fixture
def rng():
    return random.Random(11)


@pytest.fixture
def centres(rng):
    return [unit([rng.gauss(0, 1) for _ in range(EMBEDDING_DIMENSIONS)]) for _ in range(3)]


def test_entries_are_registered_once_per_version_and_a_higher_version_replaces(conn, rng, centres):
    tid = register(conn, "home", "cam")
    first = [entry(f"face-{i}", near(centres[0], rng), confidence=0.9, metadata={"i": i}) for i in range(3)]
    assert register_hashes(conn, tid, first) == (3, 3, 0)
    assert register_hashes(conn, tid, first) == (3, 0, 3)  # replayed from an outbox: nothing written
    newer = entry("face-0", near(centres[1], rng), version=2, metadata={"seen": "again"})
    older = entry("face-1", near(centres[1], rng), version=1, metadata={"stale": True})
    assert register_hashes(conn, tid, [newer, older]) == (2, 1, 1)
    rows = dict(conn.execute("select hash, metadata from hashes(%s)", (tid,)).fetchall())
    assert rows["face-0"] == {"seen": "again"} and rows["face-1"] == {"i": 1}
    # within one batch the highest version of a hash wins
    assert register_hashes(conn, tid, [entry("face-2", first[2]["embedding"], version=5, metadata={"v": 5}),
                                       entry("face-2", first[2]["embedding"], version=4, metadata={"v": 4})]
                           ) == (2, 1, 1)
    assert conn.execute("select version, metadata from hashes(%s, 'face-2')",
                        (tid,)).fetchone() == (5, {"v": 5})


@pytest.mark.parametrize("bad, reason", [
    ({"hash": ""}, "hash must be a string of 1 to 256"),
    ({"data_type": "Person!"}, "data_type must be 1 to 64 characters"),
    ({"node": ""}, "node must be 1 to 128 bytes"),
    ({"embedding": [0.1, 0.2]}, f"embedding has 2 dimensions; it must have {EMBEDDING_DIMENSIONS}"),
    ({"embedding": ["x"] * EMBEDDING_DIMENSIONS}, "embedding must hold numbers only"),
    ({"embedding": [0] * EMBEDDING_DIMENSIONS}, "must not be all zeros"),
    ({"confidence": 1.5}, "confidence must be a number between 0 and 1"),
    ({"metadata": [1]}, "metadata must be a JSON object"),
    ({"version": 0}, "version must be a positive integer"),
])
def test_a_bad_element_is_refused_with_its_index_and_nothing_is_written(conn, rng, centres, bad, reason):
    tid = register(conn, "home", "cam")
    good = entry("ok", near(centres[0], rng))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"batch element 1: .*{reason}"):
        register_hashes(conn, tid, [good, {**entry("bad", near(centres[0], rng)), **bad}])
    assert conn.execute("select count(*) from hash_registry").fetchone() == (0,)


def test_nan_and_oversized_batches_are_refused(conn, rng, centres):
    tid = register(conn, "home", "cam")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):  # JSON has no NaN
        conn.execute("select * from register_hashes(%s, %s)",
                     (tid, json.dumps([entry("nan", [float("nan")] * EMBEDDING_DIMENSIONS)])))
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        register_hashes(conn, tid, [entry("big", near(centres[0], rng), metadata={"x": "y" * 20000})])
    assert conn.execute("select count(*) from hash_registry").fetchone() == (0,)


def test_search_returns_the_nearest_first_and_a_filter_still_returns_k(conn, rng, centres):
    tid = register(conn, "home", "cam")
    register(conn, "home", "door")
    items = [entry(f"p{i}", near(centres[0], rng), node="cam") for i in range(20)]
    items += [entry(f"c{i}", near(centres[1], rng), node="door", data_type="car") for i in range(20)]
    items += [entry(f"x{i}", near(centres[2], rng), node="cam", data_type="sound") for i in range(200)]
    register_hashes(conn, tid, items)
    query = near(centres[0], rng, 0.005)
    rows = conn.execute("select hash, distance from search_hashes(%s, %s, 5)",
                        (tid, vector(query))).fetchall()
    assert [h[0] for h in rows] == sorted((h for h in (r[0] for r in rows)), key=dict(rows).get)
    assert all(h.startswith("p") for h, _ in rows) and all(d < 0.2 for _, d in rows)
    # exact nearest neighbours, computed here: the index agrees on the top 5
    exact = sorted(items, key=lambda e: 1 - sum(a * b for a, b in zip(e["embedding"], query, strict=True)))
    assert {h for h, _ in rows} == {e["hash"] for e in exact[:5]}
    # far from the query, a rare type: the filter still gives k rows (iterative scan)
    cars = conn.execute("select hash, type, node_id from search_hashes(%s, %s, 10, data_type => 'car')",
                        (tid, vector(query))).fetchall()
    assert len(cars) == 10 and {(t, n) for _, t, n in cars} == {("car", "door")}
    assert len(conn.execute("select * from search_hashes(%s, %s, 7, node => 'door')",
                            (tid, vector(query))).fetchall()) == 7
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="dimensions"):
        conn.execute("select * from search_hashes(%s, '[1, 2]')", (tid,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k is 0"):
        conn.execute("select * from search_hashes(%s, %s, 0)", (tid, vector(query)))


def test_lookups_by_hash_type_and_node(conn, rng, centres):
    tid = register(conn, "home", "cam")
    register(conn, "home", "door")
    register_hashes(conn, tid, [entry("a", near(centres[0], rng)),
                                entry("b", near(centres[1], rng), node="door"),
                                entry("c", near(centres[2], rng), data_type="car")])
    assert [r[0] for r in conn.execute("select hash from hashes(%s, 'b')", (tid,))] == ["b"]
    assert sorted(r[0] for r in conn.execute("select hash from hashes(%s, data_type => 'person')",
                                             (tid,))) == ["a", "b"]
    assert [r[0] for r in conn.execute("select hash from hashes(%s, node => 'door')", (tid,))] == ["b"]
    (embedding,) = conn.execute("select embedding from hashes(%s, 'a')", (tid,)).fetchone()
    assert len(embedding) == EMBEDDING_DIMENSIONS


def test_only_vertices_see_and_write_their_tetrahedrons_entries(conn, rng, centres):
    owner, outsider = uuid.uuid4(), uuid.uuid4()
    tid = register(conn, "home", "cam", user_id=owner)
    register_hashes(conn, tid, [entry("a", near(centres[0], rng))])
    query = vector(near(centres[0], rng))
    with acting_as(conn, "authenticated", owner):
        assert len(conn.execute("select * from search_hashes(%s, %s)", (tid, query)).fetchall()) == 1
        assert register_hashes(conn, tid, [entry("b", near(centres[0], rng))]) == (1, 1, 0)
    with acting_as(conn, "authenticated", outsider):
        assert conn.execute("select * from search_hashes(%s, %s)", (tid, query)).fetchall() == []
        assert conn.execute("select count(*) from hash_registry").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            register_hashes(conn, tid, [entry("c", near(centres[0], rng))])
    with acting_as(conn, "anon"), pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from search_hashes(%s, %s)", (tid, query))
