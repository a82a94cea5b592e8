"""What members and a relay say to each other over WebSocket. Pure code, no I/O.

A member connects out to the relay and speaks first. Control messages are
WebSocket *text* messages holding one JSON object; mesh datagrams travel in
*binary* messages, so neither side ever has to guess which is which::

    member -> relay   {"type": "hello", "version": 1, "token": "...", "mesh": "<16 hex>", "node": "cam-1"}
    relay  -> member  {"type": "ok", "peers": ["cam-2", "door"]}     members of that mesh connected now
    relay  -> member  {"type": "joined", "node": "cam-3"}            later arrivals ...
    relay  -> member  {"type": "left", "node": "cam-2"}              ... and departures

    member -> relay   [len(dest)][dest utf-8][datagram]   dest "" = every other member of the mesh
    relay  -> member  [len(src)][src utf-8][datagram]     src: the sender, as it authenticated

The relay reads the one-byte length and the node id, never the datagram: a
mesh frame is authenticated end to end under the mesh key (security.py), so
a relay can drop or delay frames but cannot forge or alter one unnoticed.

A refusal is a WebSocket close with a code and a reason the member logs:
1008 (policy violation) for a missing or bad hello, a wrong token, a hello
that came too late and a flood; 1009 (message too big) for a frame over the
relay's size limit; 1013 (try again later) when the relay holds as many
members as it may; 4000 when a newer connection of the same node (same
mesh, same node id) replaced this one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from flowmesh.limits import NODE_ID_MAX_BYTES, node_id_problem

from .wire import MAX_DATAGRAM

VERSION = 1
#: Longest relay token accepted, in bytes (the hello must stay small).
MAX_TOKEN_BYTES = 256
#: Shortest token a relay accepts in its token file: guessing must be hopeless.
MIN_TOKEN_BYTES = 16
#: The largest data message either side sends: header and a full datagram.
MAX_DATA_MESSAGE = 1 + NODE_ID_MAX_BYTES + MAX_DATAGRAM
#: The largest control message (a hello with the longest token and node id, JSON-escaped).
MAX_HELLO = 1024
#: Seconds a relay waits for the hello before closing the connection.
HELLO_TIMEOUT_S = 5.0

#: Close codes (RFC 6455 section 7.4.1; 4000-4999 are the application's).
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_REPLACED = 4000

REASON_AUTH_REQUIRED = "authentication required"
REASON_BAD_TOKEN = "bad token"
REASON_HELLO_TIMEOUT = "hello timeout"
REASON_RATE_LIMIT = "rate limit"
REASON_REPLACED = "replaced by a newer connection of the same node"
REASON_FULL = "relay full"

_MESH_ID = re.compile(r"[0-9a-f]{16}")


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``str()`` is a short reason,
    safe to log (it never quotes a token)."""


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    mesh: str
    node: str
    version: int = VERSION

    def __repr__(self) -> str:  # never print the token
        return f"Hello(mesh={self.mesh!r}, node={self.node!r}, version={self.version})"


@dataclass(frozen=True, slots=True)
class Control:
    """A control message from the relay: ``ok`` (with ``peers``), ``joined`` or ``left`` (``node``)."""

    kind: str
    peers: tuple[str, ...] = ()
    node: str = ""


def _json(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


def _object(text: str | bytes) -> dict:
    if not isinstance(text, str):
        raise ProtocolError("a control message must be text")
    try:
        value = json.loads(text)
    except ValueError:
        raise ProtocolError("a control message must be JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("a control message must be a JSON object")
    return value


def _node(value: object) -> str:
    problem = node_id_problem(value)
    if problem:
        raise ProtocolError(problem)
    return value  # type: ignore[return-value]


def encode_hello(hello: Hello) -> str:
    return _json({"type": "hello", "version": hello.version, "token": hello.token, "mesh": hello.mesh,
                  "node": hello.node})


def decode_hello(text: str | bytes) -> Hello:
    """The member's hello; ProtocolError when it is anything else. The version is
    returned as sent: the relay decides what it speaks."""
    if isinstance(text, str) and len(text) > MAX_HELLO:
        raise ProtocolError("hello too long")
    message = _object(text)
    if message.get("type") != "hello":
        raise ProtocolError("the first message must be a hello")
    version, token, mesh = message.get("version"), message.get("token"), message.get("mesh")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("hello without a protocol version")
    if not isinstance(token, str) or not token or len(token.encode()) > MAX_TOKEN_BYTES:
        raise ProtocolError("hello without a usable token")
    if not isinstance(mesh, str) or not _MESH_ID.fullmatch(mesh):
        raise ProtocolError("hello without a mesh id (16 hex digits)")
    return Hello(token, mesh, _node(message.get("node")), version)


def encode_ok(peers: list[str] | tuple[str, ...]) -> str:
    return _json({"type": "ok", "peers": list(peers)})


def encode_joined(node: str) -> str:
    return _json({"type": "joined", "node": node})


def encode_left(node: str) -> str:
    return _json({"type": "left", "node": node})


def decode_control(text: str | bytes) -> Control:
    message = _object(text)
    kind = message.get("type")
    if kind == "ok":
        peers = message.get("peers")
        if not isinstance(peers, list):
            raise ProtocolError("ok without a peer list")
        return Control("ok", tuple(_node(p) for p in peers))
    if kind in ("joined", "left"):
        return Control(kind, node=_node(message.get("node")))
    raise ProtocolError("unknown control message")


def encode_data(node: str, datagram: bytes) -> bytes:
    """A data message: the destination (member to relay; "" to broadcast) or the
    source (relay to member), then the datagram untouched."""
    raw = node.encode("utf-8")
    if len(raw) > NODE_ID_MAX_BYTES:
        raise ValueError(f"node id of {len(raw)} bytes; the limit is {NODE_ID_MAX_BYTES}")
    return bytes((len(raw),)) + raw + datagram


def decode_data(message: bytes) -> tuple[str, bytes]:
    """``(node, datagram)`` of a data message; ProtocolError when the header is bad."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ProtocolError("a data message must be binary")
    message = bytes(message)
    if not message:
        raise ProtocolError("empty data message")
    size = message[0]
    if size > NODE_ID_MAX_BYTES or len(message) < 1 + size:
        raise ProtocolError("truncated data header")
    try:
        node = message[1:1 + size].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("node id is not UTF-8") from None
    if node:
        _node(node)
    datagram = message[1 + size:]
    if not datagram:
        raise ProtocolError("data message without a datagram")
    if len(datagram) > MAX_DATAGRAM:
        raise ProtocolError("datagram over the size limit")
    return node, datagram


def relay_url_problem(url: str) -> str | None:
    """Why ``url`` is not a relay URL (``ws://HOST:PORT`` or ``wss://HOST:PORT``), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port out of range)
    except ValueError as exc:
        return f"relay URL {public_url(url)!r}: {exc}"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return f"relay URL {public_url(url)!r}: want ws://HOST:PORT or wss://HOST:PORT"
    return None


def public_url(url: str | None) -> str | None:
    """A relay URL without what could be a credential (user info, query string): for
    logs and listings."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "(unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))
