"""Limits shared by the database, the agent and the mesh, each defined once.

The SQL migrations state the same numbers in one place (``flowmesh.limits()``),
and a test proves the two agree, so a limit cannot drift between layers. This
module imports nothing heavy: the mesh and the agent read it on every device.
"""

from __future__ import annotations

#: A node id (a device's name in its tetrahedron, on the mesh and in Postgres):
#: 1 to this many bytes of UTF-8, printable. 128 bytes fits the mesh's one-byte
#: string lengths and any sane host name.
NODE_ID_MAX_BYTES = 128
#: A tetrahedron's name: 1 to this many characters, printable.
TETRAHEDRON_NAME_MAX_CHARS = 128
#: How far ahead of the database's clock a heartbeat's time may be, in seconds.
#: Further ahead is refused: moving the time would make a later replay look new.
CLOCK_AHEAD_MAX_S = 300
#: Most elements in one batch RPC call (heartbeats, mesh events).
BATCH_MAX_ITEMS = 10_000
#: Largest heartbeat payload (and mesh event), in bytes as Postgres stores it.
PAYLOAD_MAX_BYTES = 16_384
#: Most time buckets in one heatmap or chart request (the dashboard's series):
#: enough for a day in minutes, small enough that no request scans a year in minutes.
SERIES_MAX_BUCKETS = 1_000
#: Dimensions of every hash registry embedding (the seed's embedding size).
EMBEDDING_DIMENSIONS = 512
#: Longest hash in the registry, in characters.
HASH_MAX_CHARS = 256
#: Most entries one registry search or lookup returns.
SEARCH_MAX_K = 1_000


def node_id_problem(node_id: object) -> str | None:
    """Why ``node_id`` is not a valid node id, or None when it is."""
    if not isinstance(node_id, str) or not node_id:
        return "a node id must be a non-empty string"
    size = len(node_id.encode("utf-8"))
    if size > NODE_ID_MAX_BYTES:
        return f"node id {node_id[:24]!r}... is {size} bytes; the limit is {NODE_ID_MAX_BYTES}"
    if not node_id.isprintable():
        return f"node id {node_id!r} has non-printable characters"
    return None


def check_node_id(node_id: object) -> str:
    """``node_id`` itself when valid; ValueError with a one-line reason otherwise."""
    problem = node_id_problem(node_id)
    if problem:
        raise ValueError(problem)
    return node_id  # type: ignore[return-value]


#: Every limit by the name flowmesh.limits() gives it in SQL.
ALL = {
    "node_id_max_bytes": NODE_ID_MAX_BYTES,
    "tetrahedron_name_max_chars": TETRAHEDRON_NAME_MAX_CHARS,
    "clock_ahead_max_s": CLOCK_AHEAD_MAX_S,
    "batch_max_items": BATCH_MAX_ITEMS,
    "payload_max_bytes": PAYLOAD_MAX_BYTES,
    "series_max_buckets": SERIES_MAX_BUCKETS,
    "embedding_dimensions": EMBEDDING_DIMENSIONS,
    "hash_max_chars": HASH_MAX_CHARS,
    "search_max_k": SEARCH_MAX_K,
}
