"""The dashboard's reads: named queries over a pool, each request as its identity.

Every request runs in one transaction on a pooled connection. A JWT request
first sets the claim's role and ``request.jwt.claims`` for that transaction
only (``set_config(..., true)``, as PostgREST does), so the connection goes
back to the pool as the connecting role.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from psycopg.rows import dict_row

from flowmesh import database
from flowmesh.queries import named

from .access import Identity

QUERIES = Path(__file__).with_name("queries.sql")
APPLICATION_NAME = "flowmesh-dashboard"
#: Longest a request's query may run: the pool has a few connections, and a
#: page that waits longer than this is no use anyway.
STATEMENT_TIMEOUT_S = 10.0


def q(name: str) -> str:
    """The dashboard's query ``name`` (monitors/dashboard/queries.sql)."""
    return named(QUERIES, name)


class Reader:
    """Runs the dashboard's named queries as a request's identity."""

    def __init__(self, url: str, *, max_size: int = 4, timeout_s: float = 5.0,
                 statement_timeout_s: float = STATEMENT_TIMEOUT_S):
        self.statement_timeout_ms = round(statement_timeout_s * 1000)
        self.pool = database.async_pool(url, application_name=APPLICATION_NAME, max_size=max_size,
                                        timeout_s=timeout_s)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=2)

    @asynccontextmanager
    async def session(self, identity: Identity):
        """A :class:`Session` in one transaction, as ``identity``."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(q("request_limits"), {"statement_timeout_ms": self.statement_timeout_ms})
            if identity.role is not None:
                await conn.execute(q("act_as"), {"role": identity.role, "claims": identity.claims})
            yield Session(conn)


class Session:
    """One request's queries, rows as dicts."""

    def __init__(self, conn):
        self.conn = conn

    async def rows(self, name: str, params: dict | None = None) -> list[dict]:
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q(name), params or {})
            return await cur.fetchall()

    async def row(self, name: str, params: dict | None = None) -> dict | None:
        found = await self.rows(name, params)
        return found[0] if found else None
