"""Named queries: Python holds no inline SQL.

Postgres statements live in ``queries.sql``; the agent's outbox keeps its
SQLite statements in ``flowmesh_edge/outbox.sql``, in the same format.

>>> from flowmesh.queries import query
>>> conn.execute(query("stale_tetrahedrons"), {"threshold_minutes": 60, "tetrahedron_id": None})
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)
#: One Path for the process: a query is looked up on every call of the hot
#: path, and building a Path each time cost more than the look-up.
_QUERIES = Path(__file__).with_name("queries.sql")


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}; comment lines inside a block are kept out."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";")
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        queries[name] = sql
    return queries


@cache
def load(path: Path) -> dict[str, str]:
    """Every named query of a queries file."""
    return parse(path.read_text())


def all_queries() -> dict[str, str]:
    return load(_QUERIES)


def named(path: Path, name: str) -> str:
    """The query ``name`` of the file at ``path``."""
    try:
        return load(path)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {path.name}") from None


def query(name: str) -> str:
    """The Postgres query ``name`` of queries.sql."""
    return named(_QUERIES, name)
