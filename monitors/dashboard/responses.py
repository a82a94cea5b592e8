"""JSON responses, and the one place a failure becomes an HTTP status.

Errors are ``{"error": "...", "sqlstate": "..."}``: 400 for bad parameters
(data errors, SQLSTATE class 22), 401 without an acceptable credential, 403
when the role may not read, 404 for an unknown name, 503 while the database
is unreachable. The message is :func:`flowmesh.errors.describe`'s one line,
so it reads like every other FlowMesh program's.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from starlette.responses import Response

from flowmesh.errors import BAD_DATA, QUERY_CANCELED, UNREACHABLE, describe

log = logging.getLogger("monitors.dashboard")

#: SQLSTATE insufficient_privilege: the role (a JWT's) may not read this.
INSUFFICIENT_PRIVILEGE = "42501"


def json_default(value: object):
    """Database values as JSON: ISO 8601 times, UUIDs as text, intervals in seconds."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object) -> str:
    return json.dumps(value, default=json_default, separators=(",", ":"), ensure_ascii=False)


class JSON(Response):
    """A JSON response that encodes database values, never cached."""

    media_type = "application/json"

    def __init__(self, content: object, status_code: int = 200, headers: dict | None = None):
        super().__init__(content, status_code, {"Cache-Control": "no-cache", **(headers or {})})

    def render(self, content: object) -> bytes:
        return dumps(content).encode()


def error(status: int, message: str, sqlstate: str | None = None, headers: dict | None = None,
          **fields) -> JSON:
    return JSON({"error": message, "sqlstate": sqlstate, **fields}, status, headers)


def failure(exc: BaseException, known_outage: str | None = None, unreachable: dict | None = None) -> JSON:
    """The response for a failed read: 503, 400, 403 or 500, with describe()'s one line.

    ``known_outage``: why the live connection lost the database, if it has; a
    request that timed out waiting for a pooled connection says that rather
    than "couldn't get a connection", and says the dashboard is busy when the
    database is known to be there. ``unreachable``: fields added to a 503's body.
    """
    from psycopg_pool import PoolTimeout

    found = describe(exc)
    if found.sqlstate == QUERY_CANCELED:  # the request's statement timeout (reader.py), not an outage
        return error(504, "the query ran past the dashboard's statement timeout: "
                          "ask for a shorter window or fewer buckets", found.sqlstate)
    if isinstance(exc, PoolTimeout) and not known_outage:  # the database is there: we are busy
        return error(503, "dashboard busy: every database connection of its pool stayed in use; "
                          "try again", None, {"Retry-After": "2"})
    if found.kind == UNREACHABLE:
        message = known_outage if isinstance(exc, PoolTimeout) else found.message
        return error(503, _unreachable(message), found.sqlstate, {"Retry-After": "2"}, **(unreachable or {}))
    if found.kind == BAD_DATA:
        return error(400, found.message, found.sqlstate)
    if found.sqlstate == INSUFFICIENT_PRIVILEGE:
        return error(403, found.message, found.sqlstate)
    log.error("request failed: %s", found.message)
    return error(500, found.message, found.sqlstate)


def _unreachable(message: str) -> str:
    """The contract's wording: ``database unreachable: <reason>``."""
    return f"database unreachable: {message.removeprefix('cannot reach the database: ')}"
