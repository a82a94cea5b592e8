"""Device credentials: one Postgres LOGIN role per device, and its URL.

``flowmesh devices add`` gives each device a role of its own, a member of the
group role ``flowmesh_device`` (sql/0013), whose only rights are the agent's
write RPCs; ``flowmesh.authorize_writer`` lets it write only to its own
tetrahedron as its own node. The password is made here, shown once in the
device's URL, and sent to the server only as a SCRAM-SHA-256 verifier, so the
clear text never reaches the server's log or pg_stat_statements.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
from psycopg import conninfo, sql

from . import settings
from .errors import FlowMeshError, one_line
from .queries import query
from .scram import scram_verifier

#: Connections one device may hold at once: the agent needs one; a second
#: covers a reconnect while the old session is still being torn down.
CONNECTION_LIMIT = 2

#: Names of device roles start with this; the rest is derived from the vertex.
ROLE_PREFIX = "flowmesh_dev_"

#: Tries at dropping a revoked role whose ended sessions are still going away.
DROP_ATTEMPTS = 10
DROP_RETRY_S = 0.2

#: PostgreSQL truncates identifiers past this many bytes.
MAX_ROLE_BYTES = 63

#: Random bytes in a password (URL-safe base64 of them, 43 characters).
PASSWORD_BYTES = 32


@dataclass(frozen=True)
class Credential:
    tetrahedron_id: str
    node_id: str
    role: str
    password: str


def role_name(tetrahedron_id: str, node_id: str) -> str:
    """The device role of a vertex: readable, safe unquoted, unique, at most 63 bytes.

    The readable part (the node id, lowercased, anything but [a-z0-9] as ``_``)
    is only a hint; the hash of the tetrahedron's id (random per database)
    and the node id makes it unique across the cluster, where roles live.
    """
    digest = hashlib.sha256(f"{tetrahedron_id}\0{node_id}".encode()).hexdigest()[:16]
    hint = re.sub(r"[^a-z0-9]+", "_", node_id.lower()).strip("_")
    room = MAX_ROLE_BYTES - len(ROLE_PREFIX) - len(digest) - 1
    return f"{ROLE_PREFIX}{hint[:room]}_{digest}" if hint else f"{ROLE_PREFIX}{digest}"


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def device_url(base_url: str, role: str, password: str) -> str:
    """The URL a device connects with: the server and database of ``base_url``,
    as ``role`` with ``password``; other connection parameters (sslmode...) kept.

    The one place a device's URL is built, through the pooler or to the server itself.
    """
    params = conninfo.conninfo_to_dict(base_url)
    host, port, dbname = params.pop("host", None), params.pop("port", None), params.pop("dbname", None)
    for secret_or_identity in ("user", "password", "passfile"):
        params.pop(secret_or_identity, None)
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@"
    if host and not host.startswith("/"):
        netloc += f"[{host}]" if ":" in host else host
    elif host:
        params["host"] = host  # a Unix socket directory
    if port:
        netloc += f":{port}"
    query_string = "&".join(f"{quote(k, safe='')}={quote(str(v), safe='')}"
                            for k, v in params.items())
    return f"postgresql://{netloc}/{quote(dbname or '', safe='')}" + (
        f"?{query_string}" if query_string else "")


def add(conn: psycopg.Connection, tetrahedron: str, node_id: str,
        node_role: str | None) -> Credential:
    """Register the node and create its credential, in ``conn``'s transaction
    (the caller commits: nothing of either is left if anything fails)."""
    (tetrahedron_id,) = conn.execute(
        query("register_node"), {"tetrahedron": tetrahedron, "node_id": node_id, "role": node_role}
    ).fetchone()
    tetrahedron_id = str(tetrahedron_id)
    existing = conn.execute(query("device_credential_of"),
                            {"tetrahedron_id": tetrahedron_id, "node_id": node_id}).fetchone()
    if existing:
        raise FlowMeshError(f"{node_id} of {tetrahedron} already has a device credential "
                            f"({existing[0]}); revoke it first (flowmesh devices revoke)")
    role, password = role_name(tetrahedron_id, node_id), new_password()
    conn.execute(sql.SQL(query("create_device_role")).format(
        role=sql.Identifier(role), connection_limit=sql.Literal(CONNECTION_LIMIT),
        verifier=sql.Literal(scram_verifier(password))))
    # a role's default, kept by a transaction pooler (each server connection logs
    # in as the role), where a startup option or a session SET would not be
    conn.execute(sql.SQL(query("limit_device_statement_time")).format(
        role=sql.Identifier(role), timeout=sql.Literal(f"{math.ceil(settings.CALL_TIMEOUT_S * 1000)}ms")))
    conn.execute(query("add_device_credential"),
                 {"role": role, "tetrahedron_id": tetrahedron_id, "node_id": node_id})
    return Credential(tetrahedron_id, node_id, role, password)


def revoke(conn: psycopg.Connection, tetrahedron: str, node_id: str) -> tuple[str, int]:
    """Cut a device off: its role may no longer log in and its mapping is gone
    (committed first, so nothing it does from then on is allowed), its sessions
    are ended, then its role is dropped. Returns the role and the number of
    sessions ended. ``conn`` must be in autocommit mode."""
    row = conn.execute(query("device_credential_by_name"),
                       {"tetrahedron": tetrahedron, "node_id": node_id}).fetchone()
    if row is None:
        raise FlowMeshError(f"no device credential for node {node_id!r} of tetrahedron {tetrahedron!r}")
    role, role_oid = row
    ident = sql.Identifier(role)
    with conn.transaction():
        conn.execute(query("delete_device_credential"), {"role": role})
        if role_oid is not None:
            conn.execute(sql.SQL(query("disable_device_role")).format(role=ident))
    if role_oid is None:  # the role was dropped by hand: its sessions are gone or unnamed
        return role, 0
    try:
        ended = len(conn.execute(query("end_device_sessions"), {"role_oid": role_oid}).fetchall())
    except psycopg.errors.InsufficientPrivilege as exc:
        _drop_role(conn, role)
        raise FlowMeshError(f"dropped {role}, but could not end its open sessions ({one_line(exc)}); "
                            "they last until they disconnect, or end them as a superuser") from exc
    _drop_role(conn, role)
    return role, ended


def _drop_role(conn: psycopg.Connection, role: str) -> None:
    """Drop the (already disabled) role. A session just ended may still hold
    objects of it (a temporary table) for a moment: retried, within bounds."""
    for attempt in range(DROP_ATTEMPTS):
        try:
            conn.execute(sql.SQL(query("drop_device_role")).format(role=sql.Identifier(role)))
            return
        except psycopg.errors.DependentObjectsStillExist as exc:
            if attempt == DROP_ATTEMPTS - 1:
                raise FlowMeshError(
                    f"{role} can no longer log in or write, but could not be dropped: {one_line(exc)}; "
                    "run revoke again once its sessions are gone") from exc
            time.sleep(DROP_RETRY_S)
