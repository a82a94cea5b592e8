"""The hash registry (HASH_REGISTRY): hashes with a data type, an embedding, a
confidence and metadata, known to every member; similarity search here and
across the mesh.

What crosses the wire, and why. An embedding is ``EMBEDDING_DIMENSIONS`` (512)
numbers: 2 KB as float32, 1 KB as float16, 512 bytes as int8, which the JSON
envelope carries as 684 bytes of base64. A mesh message is one datagram
(``wire.MAX_DATAGRAM``, 1400 bytes) and a broadcast rides in a gossip datagram
whose budget is two thirds of that (``Dissemination.message_budget``, about
890 bytes for the whole envelope, whose path grows by a node id at each hop);
the mesh does not fragment. So:

* an entry spreads *without* its embedding: hash, data type, node, version,
  confidence and metadata, at most ``ENTRY_MAX_BYTES`` of JSON (``add`` refuses
  more). Every member can look an entry up by hash, type or node;
* the embedding stays on the member that registered it (float32, full
  precision), and reaches Postgres in full through the agent's outbox;
* a member that wants it (``fetch``) asks that member with a routed
  HASH_REGISTRY ``{"want": hash, "v": version}``; the answer comes back in
  ``EMBEDDING_PARTS`` (4) routed parts of 128 float16 components each (344
  bytes of base64), scaled by the largest component (sent beside them), so
  that any finite float32 survives with float16's precision (about 1e-3
  relative). Once whole, the embedding joins the entry, and local searches
  rank it too;
* a similarity search across the mesh sends the query's embedding quantized to
  int8 (scaled so that its largest component is 127: cosine distance ignores
  the scale), 684 bytes of base64, which fits a query with room for the path.
  Each member answers with its own top-k in as many SEARCH_RESULT messages as
  its hits need (``ANSWER_MAX_BYTES`` of JSON each, no embeddings), and the
  asker merges them: one list, nearest first, one hit per hash (the newest
  version), each naming the member that answered it.

Versions: a re-add of a hash on this member bumps its version; a member keeps
a received entry only when its version is newer than the one it holds. The
registry is bounded (``MeshConfig.registry_max_entries``): the least recently
updated entry goes first. Malformed messages and queries are dropped and
counted (``RegistryStats`` and the node's ``dropped["malformed_registry"]``),
never raised.

Distances are cosine distances (1 - cosine similarity), in pure Python: a
search of 2,000 entries of 512 numbers is about a million multiply-adds,
0.1 s of CPU on a small machine, so a member ranks a mesh search's answer in
a worker thread (on a snapshot of its entries, which are replaced, never
changed) and its loop keeps probing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import json
import logging
import math
import operator
import re
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from flowmesh.limits import EMBEDDING_DIMENSIONS, HASH_MAX_CHARS, check_node_id

from .application import Application, Host, MeshMessage
from .search import SearchResult
from .wire import MessageType

log = logging.getLogger("flowmesh_edge.mesh")

#: The search type every member answers from its registry.
EMBEDDING_SEARCH = "embedding_search"
#: Largest entry as the mesh spreads it (compact JSON: hash, type, node, version,
#: confidence, metadata): what fits a gossip datagram with room for a path of 10 hops.
ENTRY_MAX_BYTES = 512
#: Largest JSON of one answer message (a part of a member's top-k).
ANSWER_MAX_BYTES = 640
#: Most hits a search may ask for (each member answers with up to this many, in parts).
MAX_K = 100
#: Parts an embedding is fetched in: 128 float16 each, 344 bytes of base64.
EMBEDDING_PARTS = 4
_PART = EMBEDDING_DIMENSIONS // EMBEDDING_PARTS
#: Embeddings being fetched at once; past it the oldest fetch is given up.
MAX_FETCHES = 64
#: A data type, as register_hashes accepts it (sql/0015_create_hash_registry.sql).
DATA_TYPE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

HashHook = Callable[["HashEntry"], object]


@dataclass(frozen=True)
class HashEntry:
    hash: str
    data_type: str
    node: str  #: the member that registered it
    version: int
    confidence: float | None
    metadata: dict
    #: float32, on the member that registered it; None for an entry learned from the mesh.
    embedding: array | None = field(default=None, repr=False)
    norm: float = 0.0

    def record(self) -> dict:
        """The entry as one element of a ``register_hashes`` batch (needs the embedding)."""
        assert self.embedding is not None
        return {"hash": self.hash, "data_type": self.data_type, "node": self.node,
                "embedding": [float(x) for x in self.embedding], "confidence": self.confidence,
                "metadata": self.metadata, "version": self.version}

    def spread(self) -> dict:
        """The entry as the mesh carries it: everything but the embedding."""
        return {"h": self.hash, "t": self.data_type, "n": self.node, "v": self.version,
                "c": self.confidence, "m": self.metadata}


@dataclass(frozen=True)
class Hit:
    hash: str
    node: str
    data_type: str
    distance: float
    version: int
    confidence: float | None
    metadata: dict
    answered_by: str  #: the member whose registry gave it

    def wire(self) -> list:
        return [self.hash, self.node, self.data_type, round(self.distance, 7), self.version,
                self.confidence, self.metadata]


@dataclass(frozen=True)
class MeshSearch:
    """A search across the mesh: the merged hits, and the members that answered."""

    hits: list[Hit]
    answered: list[str]


@dataclass
class RegistryStats:
    added: int = 0  #: entries added on this member
    received: int = 0  #: entries from members kept (newer than ours)
    stale: int = 0  #: entries from members not newer than ours, ignored
    evicted: int = 0  #: least recently updated entries dropped at the bound
    malformed: int = 0  #: registry messages, queries and answers dropped as malformed
    answered: int = 0  #: embedding searches this member answered
    served: int = 0  #: embeddings sent to members that asked for them
    fetched: int = 0  #: embeddings of members' entries received whole


# -- vectors ------------------------------------------------------------------------------


def vector(values: object) -> array:
    """``values`` as float32, checked: EMBEDDING_DIMENSIONS finite numbers, not all zero.
    ValueError otherwise."""
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise ValueError("an embedding must be a sequence of numbers")
    items = list(values)
    if len(items) != EMBEDDING_DIMENSIONS:
        raise ValueError(f"an embedding has {EMBEDDING_DIMENSIONS} numbers, not {len(items)}")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in items):
        raise ValueError("an embedding holds numbers only")
    try:
        vec = array("f", items)
    except OverflowError as exc:
        raise ValueError("an embedding number is out of float32 range") from exc
    if not all(math.isfinite(x) for x in vec):
        raise ValueError("an embedding number is not finite (NaN or infinity)")
    if not any(vec):
        raise ValueError("an all-zero embedding has no direction")
    return vec


def norm(vec: Iterable[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vec))


def cosine_distance(a: array, a_norm: float, b: array, b_norm: float) -> float:
    return 1.0 - sum(map(operator.mul, a, b)) / (a_norm * b_norm)


def quantize(vec: array) -> str:
    """int8, scaled so that the largest component is +-127, as base64 (cosine ignores the scale)."""
    peak = max(abs(x) for x in vec)
    return base64.b64encode(array("b", (round(x / peak * 127) for x in vec)).tobytes()).decode()


def dequantize(text: object) -> array:
    """The inverse of ``quantize``; ValueError when ``text`` is not one."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) != EMBEDDING_DIMENSIONS:
        raise ValueError(f"{len(raw)} components")
    return vector(array("b", raw).tolist())


# -- the application ------------------------------------------------------------------------


class Registry(Application):
    types = frozenset({MessageType.HASH_REGISTRY})

    def __init__(self) -> None:
        #: hash -> entry, least recently updated first.
        self.entries: OrderedDict[str, HashEntry] = OrderedDict()
        self.stats = RegistryStats()
        self._hooks: list[HashHook] = []
        #: (hash, version) -> (the parts received, the future the fetch awaits), oldest first.
        self._fetches: OrderedDict[tuple[str, int], tuple[dict[int, bytes], asyncio.Future]] = OrderedDict()

    def attach(self, host: Host) -> None:
        super().attach(host)
        self.limit = host.config.registry_max_entries

    def on_hash(self, hook: HashHook) -> None:
        """Call ``hook(entry)`` for each entry added on this member (not those learned)."""
        self._hooks.append(hook)

    # -- this member's entries ---------------------------------------------------------------
    def add(self, hash_value: str, data_type: str, embedding: object, metadata: dict | None = None,
            confidence: float | None = None) -> HashEntry:
        """Register (or re-register, a version up) an entry and spread it; ValueError for
        bad input, with nothing changed."""
        _check_entry(hash_value, data_type)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a dict")
        if not _is_confidence(confidence):
            raise ValueError("confidence must be None or a number from 0 to 1")
        vec = vector(embedding)
        current = self.entries.get(hash_value)
        entry = HashEntry(hash_value, data_type, self.host.node_id, current.version + 1 if current else 1,
                          None if confidence is None else float(confidence), metadata, vec, norm(vec))
        payload = entry.spread()
        try:
            size = len(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON: {exc}") from exc
        if size > ENTRY_MAX_BYTES:
            raise ValueError(f"the entry's hash, type and metadata take {size} bytes of JSON; "
                             f"the mesh carries at most {ENTRY_MAX_BYTES}")
        self.host.originate(MessageType.HASH_REGISTRY, payload)
        self._store(entry)
        self.stats.added += 1
        for hook in self._hooks:
            try:
                hook(entry)
            except Exception:
                log.exception("mesh: hash hook %r failed", hook)
        return entry

    def _store(self, entry: HashEntry) -> None:
        self.entries.pop(entry.hash, None)
        self.entries[entry.hash] = entry  # the most recently updated, last
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
            self.stats.evicted += 1

    def get(self, hash_value: str) -> HashEntry | None:
        return self.entries.get(hash_value)

    def by_type(self, data_type: str) -> list[HashEntry]:
        return [e for e in self.entries.values() if e.data_type == data_type]

    def by_node(self, node: str) -> list[HashEntry]:
        return [e for e in self.entries.values() if e.node == node]

    # -- entries from members --------------------------------------------------------------------
    def receive(self, message: MeshMessage) -> bool:
        payload = message.payload
        if "want" in payload:
            self._serve(message)
            return False
        if "part" in payload:
            self._part(payload)
            return False
        entry = _entry_of(payload)
        if entry is None:
            self._malformed()
            return False
        current = self.entries.get(entry.hash)
        if current is not None and current.version >= entry.version:
            self.stats.stale += 1
            return True
        self._store(entry)
        self.stats.received += 1
        return True

    # -- embeddings on demand ---------------------------------------------------------------
    async def fetch(self, hash_value: str, timeout: float = 1.0) -> array | None:
        """The embedding of an entry: at once when this member holds it, else asked of the
        member that registered it; None when it is unknown here or no answer came in time."""
        entry = self.entries.get(hash_value)
        if entry is None:
            return None
        if entry.embedding is not None:
            return entry.embedding
        key = (entry.hash, entry.version)
        pending = self._fetches.get(key)
        if pending is None:
            pending = ({}, asyncio.get_running_loop().create_future())
            self._fetches[key] = pending
            while len(self._fetches) > MAX_FETCHES:
                _, (_, oldest) = self._fetches.popitem(last=False)
                oldest.cancel()
            self.host.send_routed(MessageType.HASH_REGISTRY, entry.node,
                                  {"want": entry.hash, "v": entry.version})
        try:
            return await asyncio.wait_for(asyncio.shield(pending[1]), timeout)
        except TimeoutError:
            if self._fetches.get(key) is pending:
                del self._fetches[key]
            return None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is cancelled, not just the fetch
            return None  # given up: too many fetches at once, or the node stopped

    def _serve(self, message: MeshMessage) -> None:
        """A member asks for the embedding of one of our entries: send it in parts."""
        hash_value, version = message.payload.get("want"), message.payload.get("v")
        if not isinstance(hash_value, str) or isinstance(version, bool) or not isinstance(version, int):
            self._malformed()
            return
        entry = self.entries.get(hash_value)
        if entry is None or entry.embedding is None or entry.version != version:
            return  # replaced or forgotten since: the asker's fetch runs out
        peak = max(abs(x) for x in entry.embedding)
        for i in range(EMBEDDING_PARTS):
            chunk = entry.embedding[i * _PART:(i + 1) * _PART]
            packed = struct.pack(f">{_PART}e", *(x / peak for x in chunk))
            self.host.send_routed(MessageType.HASH_REGISTRY, message.origin,
                                  {"h": hash_value, "v": version, "part": i, "s": peak,
                                   "f16": base64.b64encode(packed).decode()})
        self.stats.served += 1

    def _part(self, payload: dict) -> None:
        h, v, i, peak, text = (payload.get(k) for k in ("h", "v", "part", "s", "f16"))
        try:
            if (not isinstance(h, str) or isinstance(v, bool) or not isinstance(v, int)
                    or isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < EMBEDDING_PARTS
                    or isinstance(peak, bool) or not isinstance(peak, int | float)
                    or not isinstance(text, str)):
                raise ValueError("not a part")
            raw = base64.b64decode(text, validate=True)
            if len(raw) != 2 * _PART:
                raise ValueError("wrong size")
        except (ValueError, binascii.Error):
            self._malformed()
            return
        pending = self._fetches.get((h, v))
        if pending is None:
            return  # not asked for, or given up
        parts, future = pending
        parts[i] = raw
        if len(parts) < EMBEDDING_PARTS:
            return
        del self._fetches[(h, v)]
        try:
            vec = vector([x * peak for j in range(EMBEDDING_PARTS)
                          for x in struct.unpack(f">{_PART}e", parts[j])])
        except ValueError:
            self._malformed()
            future.cancel()
            return
        entry = self.entries.get(h)
        if entry is not None and entry.version == v and entry.embedding is None:
            # in place: the entry's place in the bound is kept (this is no update of it)
            self.entries[h] = replace(entry, embedding=vec, norm=norm(vec))
        self.stats.fetched += 1
        if not future.done():
            future.set_result(vec)

    def close(self) -> None:
        for _, future in self._fetches.values():
            future.cancel()
        self._fetches.clear()

    def _malformed(self) -> None:
        self.stats.malformed += 1
        self.host.drop("malformed_registry")

    # -- search ----------------------------------------------------------------------------------
    def search(self, embedding: object, k: int = 10, data_type: str | None = None,
               node: str | None = None) -> list[Hit]:
        """This member's entries with an embedding (its own, and those fetched), nearest to
        ``embedding`` first (cosine)."""
        vec = embedding if isinstance(embedding, array) and embedding.typecode == "f" else vector(embedding)
        return _rank(self._candidates(data_type, node), vec, _check_k(k), self.host.node_id)

    async def search_in_thread(self, vec: array, k: int, data_type: str | None = None,
                               node: str | None = None) -> list[Hit]:
        """``search``, its arithmetic in a worker thread (about 0.1 s for 2,000 entries on a
        small CPU): the loop keeps probing meanwhile. Ranks the entries held when called."""
        return await asyncio.to_thread(_rank, self._candidates(data_type, node), vec, k, self.host.node_id)

    def _candidates(self, data_type: str | None, node: str | None) -> list[HashEntry]:
        """The entries a search ranks, as a list: a snapshot, safe to read in another thread
        (entries are replaced, never changed)."""
        return [e for e in self.entries.values()
                if e.embedding is not None and (data_type is None or e.data_type == data_type)
                and (node is None or e.node == node)]

    def query(self, embedding: object, k: int = 10, data_type: str | None = None,
              node: str | None = None) -> dict:
        """The payload of an embedding search, its embedding quantized to fit a datagram."""
        vec = embedding if isinstance(embedding, array) else vector(embedding)
        query: dict = {"embedding_i8": quantize(vec), "k": _check_k(k)}
        if data_type is not None:
            query["data_type"] = data_type
        if node is not None:
            query["node"] = node
        return query

    async def answer(self, message: MeshMessage) -> list[dict]:
        """Answer an embedding search from this member's registry: its top-k, in parts
        of at most ANSWER_MAX_BYTES (one, empty, when it has no hit: it still answered)."""
        query = message.payload.get("query")
        try:
            if not isinstance(query, dict):
                raise ValueError("no query")
            packed = query.get("embedding_i8")
            vec = dequantize(packed) if packed is not None else vector(query.get("embedding"))
            k = _check_k(query.get("k", 10))
            data_type, node = query.get("data_type"), query.get("node")
            if not all(v is None or isinstance(v, str) for v in (data_type, node)):
                raise ValueError("data_type and node are strings")
        except (ValueError, TypeError):
            self._malformed()
            return []
        self.stats.answered += 1
        parts: list[list] = [[]]
        size = 0
        for hit in await self.search_in_thread(vec, k, data_type, node):
            item = hit.wire()
            item_size = len(json.dumps(item, separators=(",", ":"))) + 1
            if parts[-1] and size + item_size > ANSWER_MAX_BYTES:
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += item_size
        return [{"hits": part} for part in parts]

    def merge(self, own: list[Hit], answers: list[SearchResult], k: int) -> MeshSearch:
        """One list from this member's hits and the members' answers: one hit per hash
        (the newest version; the nearest of equal ones), nearest first, at most ``k``."""
        best: dict[str, Hit] = {h.hash: h for h in own}
        answered = {self.host.node_id}
        for answer in answers:
            hits = _hits_of(answer)
            if hits is None:
                self._malformed()
                continue
            answered.add(answer.node_id)
            for hit in hits:
                held = best.get(hit.hash)
                if held is None or (hit.version, -hit.distance) > (held.version, -held.distance):
                    best[hit.hash] = hit
        ranked = sorted(best.values(), key=lambda h: (h.distance, h.hash))
        return MeshSearch(ranked[:k], sorted(answered))


def _check_entry(hash_value: object, data_type: object) -> None:
    """The rules register_hashes applies to a hash and a data type, here first, so that
    an entry a device accepts is one Postgres accepts."""
    if (not isinstance(hash_value, str) or not 1 <= len(hash_value) <= HASH_MAX_CHARS
            or not hash_value.isprintable()):
        raise ValueError(f"hash must be 1 to {HASH_MAX_CHARS} printable characters")
    if not isinstance(data_type, str) or not DATA_TYPE.fullmatch(data_type):
        raise ValueError("data_type must be 1 to 64 characters of a-z, 0-9, _ . - starting with a letter")


def _is_confidence(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                             and 0 <= value <= 1)


def _rank(entries: list[HashEntry], vec: array, k: int, answered_by: str) -> list[Hit]:
    """The ``k`` of ``entries`` nearest to ``vec`` (cosine), nearest first."""
    q_norm = norm(vec)
    hits = [Hit(e.hash, e.node, e.data_type, cosine_distance(vec, q_norm, e.embedding, e.norm),
                e.version, e.confidence, e.metadata, answered_by) for e in entries]
    return heapq.nsmallest(k, hits, key=lambda h: (h.distance, h.hash))


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}")
    return k


def _entry_of(payload: dict) -> HashEntry | None:
    """A spread entry, checked; None when malformed."""
    h, t, n, v, c, m = (payload.get(key) for key in ("h", "t", "n", "v", "c", "m"))
    try:
        _check_entry(h, t)
        check_node_id(n)
    except ValueError:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or not isinstance(m, dict):
        return None
    if not _is_confidence(c):
        return None
    return HashEntry(h, t, n, v, None if c is None else float(c), m)


def _hits_of(answer: SearchResult) -> list[Hit] | None:
    """The hits of one answer part, checked; None when malformed."""
    result = answer.result
    items = result.get("hits") if isinstance(result, dict) else None
    if not isinstance(items, list):
        return None
    hits = []
    for item in items:
        if not isinstance(item, list) or len(item) != 7:
            return None
        h, n, t, d, v, c, m = item
        if not (isinstance(h, str) and isinstance(n, str) and isinstance(t, str)
                and isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d)
                and isinstance(v, int) and not isinstance(v, bool)
                and (c is None or (isinstance(c, (int, float)) and not isinstance(c, bool)))
                and isinstance(m, dict)):
            return None
        hits.append(Hit(h, n, t, float(d), v, c, m, answer.node_id))
    return hits
