"""The hash registry (registry.py): entries spread without their embeddings, the
newest version wins, the bound drops the least recently updated, searches rank by
cosine distance here and across the mesh, and malformed messages are counted."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
import time

import pytest

from flowmesh.limits import EMBEDDING_DIMENSIONS
from flowmesh_edge.mesh import InMemoryNetwork, MeshMessage, MessageType
from flowmesh_edge.mesh import registry as registry_module
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.registry import (
    ENTRY_MAX_BYTES,
    Hit,
    Registry,
    dequantize,
    quantize,
    vector,
)
from flowmesh_edge.mesh.search import SearchResult
from flowmesh_edge.mesh.simulation import converge, run_virtual, start_mesh
from tests.conftest import until
from tests.mesh.fakes import FakeHost


def basis(*weights: tuple[int, float]) -> list[float]:
    """A vector of EMBEDDING_DIMENSIONS numbers, zero but at the given (index, weight)s."""
    vec = [0.0] * EMBEDDING_DIMENSIONS
    for i, w in weights:
        vec[i] = w
    return vec


E0, E1, E2 = basis((0, 1.0)), basis((1, 1.0)), basis((2, 1.0))


def attached(**cfg) -> tuple[FakeHost, Registry]:
    host = FakeHost(config=MeshConfig(**cfg))
    registry = Registry()
    registry.attach(host)
    return host, registry


def spread(origin: str, payload: dict, message_id: int = 1) -> MeshMessage:
    return MeshMessage(MessageType.HASH_REGISTRY, origin, payload, message_id, sender=origin)


# -- this member's entries -----------------------------------------------------------------


def test_an_entry_spreads_without_its_embedding_and_a_re_add_bumps_its_version():
    host, registry = attached()
    added = []
    registry.on_hash(added.append)
    first = registry.add("face_hash_123", "person", E0, {"person_id": "p001"}, confidence=0.9)
    second = registry.add("face_hash_123", "person", E1, {"person_id": "p001"})
    assert (first.version, second.version, second.node) == (1, 2, "me")
    assert [p for _, p in host.originated] == [
        {"h": "face_hash_123", "t": "person", "n": "me", "v": 1, "c": 0.9, "m": {"person_id": "p001"}},
        {"h": "face_hash_123", "t": "person", "n": "me", "v": 2, "c": None, "m": {"person_id": "p001"}}]
    assert [e.version for e in added] == [1, 2]
    assert registry.get("face_hash_123") is second and len(second.embedding) == EMBEDDING_DIMENSIONS
    assert second.record()["embedding"] == E1 and second.record()["version"] == 2


@pytest.mark.parametrize(("embedding", "metadata", "words"), [
    ([1.0] * (EMBEDDING_DIMENSIONS - 1), None, "512 numbers"),
    ([float("nan")] + [1.0] * (EMBEDDING_DIMENSIONS - 1), None, "not finite"),
    ([True] * EMBEDDING_DIMENSIONS, None, "numbers only"),
    ([0.0] * EMBEDDING_DIMENSIONS, None, "all-zero"),
    ("not a vector", None, "sequence"),
    (E0, {"blob": "x" * ENTRY_MAX_BYTES}, "at most 512"),
    (E0, {"set": {1}}, "JSON"),
])
def test_bad_input_is_refused_with_nothing_changed(embedding, metadata, words):
    host, registry = attached()
    with pytest.raises(ValueError, match=words):
        registry.add("h", "person", embedding, metadata)
    assert registry.entries == {} and host.originated == [] and registry.stats.added == 0


@pytest.mark.parametrize(("hash_value", "data_type", "confidence", "words"), [
    ("", "person", None, "hash must be"),
    ("x" * 257, "person", None, "hash must be"),
    ("tab\there", "person", None, "hash must be"),
    ("h", "Person", None, "data_type must be"),
    ("h", "1st", None, "data_type must be"),
    ("h", "p" * 65, None, "data_type must be"),
    ("h", "person", 1.5, "confidence"),
    ("h", "person", True, "confidence"),
])
def test_the_rules_of_register_hashes_apply_on_the_device_first(hash_value, data_type, confidence, words):
    host, registry = attached()
    with pytest.raises(ValueError, match=words):
        registry.add(hash_value, data_type, E0, confidence=confidence)
    assert registry.entries == {} and host.originated == []
    registry.add("x" * 256, "p" * 64, E0, confidence=1)  # the limits themselves are fine


# -- entries from members ------------------------------------------------------------------


def test_a_member_keeps_an_entry_only_when_its_version_is_newer():
    _, registry = attached()
    entry = {"h": "x", "t": "person", "n": "b", "c": None, "m": {}}
    for version, expected in ((2, 2), (1, 2), (2, 2), (3, 3)):
        assert registry.receive(spread("b", {**entry, "v": version}))
        assert registry.get("x").version == expected
    assert (registry.stats.received, registry.stats.stale) == (2, 2)
    assert registry.get("x").embedding is None and registry.by_node("b") == [registry.get("x")]


def test_the_bound_drops_the_least_recently_updated_entry():
    _, registry = attached(registry_max_entries=3)
    for name in ("a", "b", "c"):
        registry.add(name, "t", E0)
    registry.add("a", "t", E1)  # a is now the most recently updated
    registry.receive(spread("z", {"h": "d", "t": "t", "n": "z", "v": 1, "c": None, "m": {}}))
    assert list(registry.entries) == ["c", "a", "d"]  # b went first
    registry.add("e", "t", E2)
    assert list(registry.entries) == ["a", "d", "e"] and registry.stats.evicted == 2


def test_malformed_registry_messages_are_dropped_and_counted():
    host, registry = attached()
    good = {"h": "x", "t": "person", "n": "b", "v": 1, "c": None, "m": {}}
    bad = [{}, {**good, "v": 0}, {**good, "v": "1"}, {**good, "v": True}, {**good, "h": ""},
           {**good, "t": 7}, {**good, "m": []}, {**good, "c": "high"}, {**good, "h": "x" * 300},
           {**good, "c": 2.0}, {**good, "t": "Person"}, {**good, "n": ""}]
    assert not any(registry.receive(spread("b", payload)) for payload in bad)
    assert registry.entries == {}
    assert registry.stats.malformed == len(bad) == host.dropped["malformed_registry"]
    # queries and answers too
    for query in ({}, {"query": {"embedding_i8": "not base64!"}}, {"query": {"embedding": E0, "k": 0}},
                  {"query": {"embedding_i8": quantize(vector(E0)), "data_type": 3}}):
        assert asyncio.run(registry.answer(MeshMessage(MessageType.SEARCH_QUERY, "b", query, 1))) == []
    merged = registry.merge([], [SearchResult("b", {"hits": [["x"]]}, 1), SearchResult("c", "?", 1)], 10)
    assert merged.hits == [] and merged.answered == ["me"]
    assert registry.stats.malformed == len(bad) + 6 == host.dropped["malformed_registry"]


# -- search ----------------------------------------------------------------------------------


def test_a_local_search_ranks_by_cosine_distance_and_filters():
    _, registry = attached()
    registry.add("far", "person", E1)
    registry.add("near", "person", basis((0, 2.0), (1, 2.0)))  # 45 degrees from E0
    registry.add("same", "person", basis((0, 5.0)))  # the direction of E0
    registry.add("car", "vehicle", basis((0, 1.0), (2, 0.1)))
    registry.receive(spread("b", {"h": "theirs", "t": "person", "n": "b", "v": 1, "c": None, "m": {}}))
    hits = registry.search(E0, k=10, data_type="person")
    assert [h.hash for h in hits] == ["same", "near", "far"]  # "theirs" has no embedding here
    assert [round(h.distance, 6) for h in hits] == [0.0, round(1 - 1 / math.sqrt(2), 6), 1.0]
    assert [h.hash for h in registry.search(E0, k=2)] == ["same", "car"]
    assert registry.search(E0, node="b") == []
    with pytest.raises(ValueError, match="k must be"):
        registry.search(E0, k=0)


def test_a_quantized_query_keeps_the_distances():
    vec = vector([math.sin(i) for i in range(EMBEDDING_DIMENSIONS)])
    again = dequantize(quantize(vec))
    _, registry = attached()
    registry.add("v", "t", vec)
    assert registry.search(again, k=1)[0].distance < 1e-3


def test_merging_keeps_one_hit_per_hash_the_newest_version_nearest_first():
    _, registry = attached()
    own = [Hit("a", "me", "t", 0.30, 1, None, {}, "me")]
    answers = [
        SearchResult("b", {"hits": [["a", "b", "t", 0.10, 1, None, {}],
                                    ["b1", "b", "t", 0.20, 1, 0.5, {}]]}, 1),
        SearchResult("c", {"hits": [["a", "c", "t", 0.50, 2, None, {}]]}, 2),
        SearchResult("c", {"hits": [["c1", "c", "t", 0.05, 1, None, {"k": 1}]]}, 2),
    ]
    merged = registry.merge(own, answers, k=10)
    assert [(h.hash, h.version, h.answered_by) for h in merged.hits] == [
        ("c1", 1, "c"), ("b1", 1, "b"), ("a", 2, "c")]
    assert merged.answered == ["b", "c", "me"]
    assert [h.hash for h in registry.merge(own, answers, k=2).hits] == ["c1", "b1"]


def test_a_long_answer_goes_in_parts_that_each_fit():
    _, registry = attached()
    for i in range(40):
        registry.add(f"{i:064d}", "person", basis((0, 1.0), (1, i / 40)), {"camera": f"gate-{i}"})
    parts = asyncio.run(registry.answer(MeshMessage(
        MessageType.SEARCH_QUERY, "b", {"query": {"embedding_i8": quantize(vector(E0)), "k": 40}}, 1)))
    assert len(parts) > 1 and sum(len(p["hits"]) for p in parts) == 40
    assert all(len(json.dumps(p, separators=(",", ":"))) <= 640 + 12 for p in parts)


def test_a_member_ranks_a_search_of_a_full_registry_off_its_loop(monkeypatch):
    """The ranking (about 0.1 s of CPU for 2,000 entries) runs in a worker thread, so the
    loop keeps probing meanwhile: checked by where it runs, not by timing the loop."""
    _, registry = attached()
    for i in range(2000):
        registry.add(f"h{i}", "person", basis((i % EMBEDDING_DIMENSIONS, 1.0), ((i + 1) % 512, 0.5)))
    query = MeshMessage(MessageType.SEARCH_QUERY, "b", {"query": {"embedding_i8": quantize(vector(E0))}}, 1)
    ranked_in: list[int] = []
    rank = registry_module._rank

    def spy(*args, **kwargs):
        ranked_in.append(threading.get_ident())
        return rank(*args, **kwargs)

    monkeypatch.setattr(registry_module, "_rank", spy)

    async def main():
        parts = await asyncio.wait_for(registry.answer(query), 30)
        return parts, threading.get_ident()

    parts, loop_thread = asyncio.run(main())
    # the four entries of E0 + E1/2 (every 512th), ties ranked by hash
    assert [h[0] for h in parts[0]["hits"][:5]] == ["h0", "h1024", "h1536", "h512", "h1023"]
    assert ranked_in and all(thread != loop_thread for thread in ranked_in)


# -- embeddings on demand --------------------------------------------------------------------


def test_an_embedding_is_fetched_in_parts_from_the_member_that_registered_it():
    async def main():
        owner_host, owner = attached()  # node "me"
        asker_host = FakeHost(node_id="asker")
        asker = Registry()
        asker.attach(asker_host)
        vec = [math.sin(i) * 40 for i in range(EMBEDDING_DIMENSIONS)]
        entry = owner.add("h", "person", vec)
        asker.receive(spread("me", entry.spread()))
        asker.receive(spread("z", {"h": "later", "t": "t", "n": "z", "v": 1, "c": None, "m": {}}))
        task = asyncio.create_task(asker.fetch("h", timeout=1.0))
        await asyncio.sleep(0)
        ((_, to, want),) = asker_host.routed
        assert (to, want) == ("me", {"want": "h", "v": 1})
        owner.receive(MeshMessage(MessageType.HASH_REGISTRY, "asker", want, 9))
        parts = owner_host.routed
        assert [to for _, to, _ in parts] == ["asker"] * 4
        assert max(len(json.dumps(p, separators=(",", ":"))) for _, _, p in parts) < 420
        asker.receive(MeshMessage(MessageType.HASH_REGISTRY, "me", {**parts[0][2], "part": 4}, 10))  # bad
        for i, (_, _, part) in enumerate(reversed(parts)):
            asker.receive(MeshMessage(MessageType.HASH_REGISTRY, "me", part, 11 + i))
        got = await task
        unknown = await asker.fetch("nobody has it", timeout=0.1)
        return asker, vec, got, unknown

    asker, vec, got, unknown = run_virtual(main())
    assert unknown is None
    assert max(abs(a - b) for a, b in zip(got, vec, strict=True)) < 40 * 1e-3  # float16 of the scaled
    assert list(asker.entries) == ["h", "later"]  # kept its place: a fetch is no update
    assert asker.get("h").embedding is got and asker.search(vec, k=1)[0].distance < 1e-5
    assert (asker.stats.fetched, asker.stats.malformed) == (1, 1)


def test_a_fetch_nobody_answers_gives_none_in_time_and_forgets_itself():
    async def main():
        host, registry = attached()
        registry.receive(spread("b", {"h": "x", "t": "t", "n": "b", "v": 2, "c": None, "m": {}}))
        started = asyncio.get_running_loop().time()
        got = await registry.fetch("x", timeout=0.5)
        late = {"h": "x", "v": 2, "part": 0, "s": 1.0, "f16": base64.b64encode(bytes(256)).decode()}
        registry.receive(MeshMessage(MessageType.HASH_REGISTRY, "b", late, 3))  # after the fetch: ignored
        return got, asyncio.get_running_loop().time() - started, registry, host

    got, waited, registry, host = run_virtual(main())
    assert got is None and 0.5 <= waited < 0.6
    assert registry._fetches == {} and registry.get("x").embedding is None
    assert registry.stats.malformed == 0  # the late part was well formed, just not awaited
    assert host.routed == [(MessageType.HASH_REGISTRY, "b", {"want": "x", "v": 2})]


# -- on a mesh --------------------------------------------------------------------------------


def test_an_entry_added_on_one_member_is_seen_by_the_others_newest_version_last():
    async def main():
        nodes = await start_mesh(3, InMemoryNetwork(seed=11))
        await converge(nodes)
        try:
            nodes[1].add_hash("face_hash_123", "person", E0, {"person_id": "p001"})
            await until(lambda: all(n.registry.get("face_hash_123") for n in nodes), 3)
            nodes[1].add_hash("face_hash_123", "person", E1, {"person_id": "p002"})
            await until(lambda: all(n.registry.get("face_hash_123").version == 2 for n in nodes), 3)
            assert nodes[0].search_hashes(E1) == []  # its embedding is on node-001 alone
            assert list(await nodes[0].fetch_embedding("face_hash_123", timeout=2.0)) == E1
            (hit,) = nodes[0].search_hashes(E1)
            assert (hit.hash, hit.node, hit.distance) == ("face_hash_123", "node-001", 0.0)
            return [(e.node, e.version, e.metadata, e.embedding is None)
                    for e in (n.registry.get("face_hash_123") for n in nodes)]
        finally:
            for n in nodes:
                await n.stop()

    assert run_virtual(main()) == [("node-001", 2, {"person_id": "p002"}, False),  # fetched
                                   ("node-001", 2, {"person_id": "p002"}, False),
                                   ("node-001", 2, {"person_id": "p002"}, True)]


def test_a_mesh_wide_search_merges_three_members_answers_with_who_answered():
    async def main():
        nodes = await start_mesh(3, InMemoryNetwork(seed=12))
        await converge(nodes)
        try:
            nodes[0].add_hash("mine", "person", basis((0, 1.0), (1, 1.0)))  # 0.29 from E0
            nodes[1].add_hash("b-near", "person", basis((0, 1.0), (1, 0.1)))  # 0.005
            nodes[1].add_hash("b-car", "vehicle", E0)
            nodes[2].add_hash("c-far", "person", E1)  # 1.0
            nodes[2].add_hash("c-mid", "person", basis((0, 1.0), (1, 0.5)))  # 0.106
            everyone = await nodes[0].search_mesh(E0, k=3, timeout=1.0, data_type="person")
            generic = await nodes[0].broadcast_search_query({"embedding": E0, "k": 1},
                                                            search_type="embedding_search")
            return everyone, generic
        finally:
            for n in nodes:
                await n.stop()

    everyone, generic = run_virtual(main())
    assert [(h.hash, h.answered_by) for h in everyone.hits] == [
        ("b-near", "node-001"), ("c-mid", "node-002"), ("mine", "node-000")]
    assert everyone.answered == ["node-000", "node-001", "node-002"]
    assert [d for d in (h.distance for h in everyone.hits)] == sorted(h.distance for h in everyone.hits)
    # the seed's call gives the same merged list (k 1, any type: b's car is E0 itself)
    assert [(h.hash, h.answered_by) for h in generic.hits] == [("b-car", "node-001")]
    assert generic.answered == ["node-000", "node-001", "node-002"]


def test_over_udp_from_a_script_without_asyncio():
    """Real sockets on loopback, through the blocking facade."""
    from flowmesh_edge.mesh import BlockingMeshNode

    key = b"registry-udp-test-key-0123"
    with BlockingMeshNode("reg-a", port=0, mesh_key=key, bind="127.0.0.1") as a, \
            BlockingMeshNode("reg-b", port=0, mesh_key=key, bind="127.0.0.1") as b:
        a.start()
        b.node.bootstrap = [a.address]
        b.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "reg-b" not in a.peers():
            time.sleep(0.05)
        assert a.add_hash("h-a", "person", E0, {"camera": "gate"}).version == 1
        while time.monotonic() < deadline and b.node.registry.get("h-a") is None:
            time.sleep(0.05)
        assert b.node.registry.get("h-a").metadata == {"camera": "gate"}
        assert b.search_hashes(E0) == []  # its embedding stayed on a
        found = b.search_mesh(E0, k=5, timeout=0.5)
        assert [(h.hash, h.answered_by, round(h.distance, 6)) for h in found.hits] == [("h-a", "reg-a", 0.0)]
        assert found.answered == ["reg-a", "reg-b"]
