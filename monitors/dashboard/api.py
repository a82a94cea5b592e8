"""The JSON API under /api/...: thin handlers over the named queries.

Each handler gets a :class:`reader.Session` already running as the request's
identity; it picks rows and shapes them, and decides nothing: statuses,
health, staleness and who sees what all come from SQL.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import psycopg
from starlette.requests import Request
from starlette.routing import Route

from flowmesh.errors import FlowMeshError

from .access import COOKIE, Identity, Unauthorized
from .reader import Session
from .responses import JSON, error, failure

#: Defaults of the optional parameters (the contract's).
HEATMAP_BUCKET = "5m"
HEATMAP_BUCKETS = "40"
SERIES_WINDOW = "1h"
SERIES_BUCKETS = "60"


#: SQLSTATE invalid_parameter_value: what the SQL answers for a bad parameter,
#: and what the API says of a missing one.
INVALID_PARAMETER_VALUE = "22023"


class NotFound(Exception):
    """An unknown tetrahedron or node; ``str()`` names it."""


class BadParameter(Exception):
    """A query parameter missing or unusable before any SQL runs; ``str()`` says which."""


def identify(request: Request) -> Identity:
    """The request's identity, or Unauthorized (see access.py)."""
    return request.app.state.dashboard.access.identify(
        request.headers.get("authorization"), request.cookies.get(COOKIE))


def unauthorized(reason: str) -> JSON:
    return error(401, reason, None, {"WWW-Authenticate": 'Bearer realm="flowmesh"'})


def endpoint(handler, *, unreachable: dict | None = None):
    """Run ``handler(request, session)`` as the request's identity, mapping failures to
    the contract's statuses; the server never fails a request with a traceback.
    ``unreachable``: fields added to a 503's body."""

    @functools.wraps(handler)
    async def run(request: Request) -> JSON:
        try:
            identity = identify(request)
        except Unauthorized as exc:
            return unauthorized(str(exc))
        try:
            async with request.app.state.dashboard.reader.session(identity) as session:
                return JSON(await handler(request, session))
        except NotFound as exc:
            return error(404, str(exc))
        except BadParameter as exc:
            return error(400, str(exc), INVALID_PARAMETER_VALUE)
        except (psycopg.Error, FlowMeshError, OSError, TimeoutError) as exc:
            return failure(exc, request.app.state.dashboard.live.error, unreachable)

    return run


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _param(request: Request, name: str, default: str | None = None) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else default


async def _tetrahedron(session: Session, name: str) -> dict:
    row = await session.row("tetrahedron", {"name": name})
    if row is None:
        raise NotFound(f"no tetrahedron named {name!r}")
    return row


async def fleet(request: Request, session: Session) -> dict:
    rows = await session.rows("fleet", {"search": _param(request, "search")})
    return {"tetrahedrons": rows, "generated_at": _now()}


async def tetrahedron(request: Request, session: Session) -> dict:
    summary = await _tetrahedron(session, request.path_params["name"])
    key = {"id": summary["tetrahedron_id"]}
    return {
        "tetrahedron": summary,
        "nodes": await session.rows("tetrahedron_nodes", key),
        "links": await session.rows("tetrahedron_links", key),
        "alerts": await session.rows("tetrahedron_alerts", key),
        "decisions": await session.rows("tetrahedron_decisions", key),
        "generated_at": _now(),
    }


async def _heatmap(session: Session, request: Request, name: str) -> dict:
    summary = await _tetrahedron(session, name)
    args = {"id": summary["tetrahedron_id"], "bucket": _param(request, "bucket", HEATMAP_BUCKET),
            "buckets": _param(request, "buckets", HEATMAP_BUCKETS)}
    rows = await session.rows("heatmap", args)  # first: it validates the arguments
    listed = await session.rows("heatmap_buckets", args)
    starts = sorted({row["bucket_start"] for row in listed} | {row["bucket_start"] for row in rows})
    column = {start: i for i, start in enumerate(starts)}
    nodes: dict[str, list] = {}
    for row in rows:
        scores = nodes.setdefault(row["node_id"], [None] * len(starts))
        scores[column[row["bucket_start"]]] = row["health_score"]
    return {"tetrahedron": summary["name"], "bucket_seconds": listed[0]["bucket_seconds"],
            "buckets": starts, "nodes": nodes, "generated_at": _now()}


async def heatmap(request: Request, session: Session) -> dict:
    return await _heatmap(session, request, request.path_params["name"])


async def node(request: Request, session: Session) -> dict:
    summary = await _tetrahedron(session, request.path_params["name"])
    key = {"id": summary["tetrahedron_id"], "node": request.path_params["node"]}
    row = await session.row("node", key)
    if row is None:
        raise NotFound(f"no node {key['node']!r} in tetrahedron {summary['name']!r}")
    series = await session.rows("node_series", {
        **key, "window": _param(request, "window", SERIES_WINDOW),
        "buckets": _param(request, "buckets", SERIES_BUCKETS)})
    return {
        "node": row,
        "series": series,
        "history": await session.rows("node_history", key),
        "events": await session.rows("node_events", key),
        "generated_at": _now(),
    }


async def health(request: Request, session: Session) -> dict:
    totals = await session.row("health")
    return {"database": {"reachable": True}, **totals, "generated_at": _now()}


async def network(request: Request, session: Session) -> dict:
    name = _param(request, "tetrahedron")
    if name is not None:
        await _tetrahedron(session, name)
    return {"nodes": await session.rows("network_nodes", {"name": name}),
            "links": await session.rows("network_links", {"name": name}),
            "generated_at": _now()}


async def seed_heatmap(request: Request, session: Session) -> dict:
    name = _param(request, "tetrahedron")
    if name is None:
        raise BadParameter("the query parameter 'tetrahedron' is required")
    return await _heatmap(session, request, name)


async def gossip(request: Request, session: Session) -> dict:
    name = _param(request, "tetrahedron")
    if name is None:
        raise BadParameter("the query parameter 'tetrahedron' is required")
    summary = await _tetrahedron(session, name)
    key = {"id": summary["tetrahedron_id"]}
    return {"tetrahedron": summary["name"], "nodes": await session.rows("gossip", key),
            "totals": await session.row("gossip_totals", key), "generated_at": _now()}


#: Names may hold a '/' (the SQL allows it; a browser sends it as %2F, which the
#: server decodes before routing), so they are matched as paths, the longer
#: routes first: a tetrahedron name ending in /heatmap, or holding /nodes/, is
#: the one thing these routes cannot tell apart.
routes = [
    Route("/api/fleet", endpoint(fleet)),
    Route("/api/tetrahedrons/{name:path}/heatmap", endpoint(heatmap)),
    Route("/api/tetrahedrons/{name:path}/nodes/{node:path}", endpoint(node)),
    Route("/api/tetrahedrons/{name:path}", endpoint(tetrahedron)),
    Route("/api/health", endpoint(health, unreachable={"database": {"reachable": False}})),
    Route("/api/network", endpoint(network)),
    Route("/api/heatmap", endpoint(seed_heatmap)),
    Route("/api/gossip/summary", endpoint(gossip)),
]
