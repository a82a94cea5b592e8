"""The mesh wire format: bytes <-> messages, pure code, no sockets.

Every datagram is one frame (all integers big-endian), authenticated or
sealed (encrypted) under the mesh's primary key (keyring.py). An
authenticated frame::

    u8   version (5)
    u8   type (MessageType)
    u8   flags (reserved, 0)
    u8   L, then L bytes: sender node id, UTF-8, 1..NODE_ID_MAX_BYTES (128) bytes
    u64  sender boot epoch, Unix microseconds at its start } replay protection
    u32  sender datagram sequence                          } (security.py)
    u32  sender clock, Unix seconds                        }
    u32  sender incarnation (SWIM: its own word on how current it is)
    u16  B, then B bytes: body (layout depends on the type, see below)
    u8   N, then N membership updates piggybacked (gossip)
    16   tag: HMAC-SHA256 of everything before it, under the mesh key, truncated

A sealed frame is the same frame without its tag, encrypted whole::

    u8 version (5)  u8 0 (SEALED: no message type is 0)  u8 flags (0)
    12 nonce  then ChaCha20-Poly1305 of the frame above (its 16-byte tag at the end)

A frame is at most MAX_DATAGRAM bytes (below a 1500-byte Ethernet MTU with
IPv6 and UDP headers). A probe (PING) between 16-character node ids is 88
bytes authenticated and 103 sealed (SEAL_OVERHEAD more), 312 and 327
between 128-byte ones.

The failure detector's own bodies::

    PING       u32 probe id  str target  stamp
    PING_REQ   u32 probe id  str target  addr
    PROBE_ACK  u32 probe id  stamp

EPOCH (u64 epoch) tells a node that a member tracks a boot epoch of its at
least that high (its frames from a lower one are refused; see security.py).

Discovery (PEER_DISCOVERY), to bootstrap peers and the LAN::

    u8 alone (1: the sender knows no member and wants the membership)  addr  bytes meta
    u8 E, then E addr: the sender's other endpoints

``stamp`` is the sender's state stamp, u32 incarnation + u32 version (see
``state_sync.py``): every probe and ack tells its receiver how new the
sender's state is, so a member that missed an update pulls it. That is all
an application heartbeat used to say, so there is none any more (HEARTBEAT
keeps its number, unused).

Membership update (piggybacked, or the body of SUSPECT/ALIVE/DEAD)::

    u8 kind (ALIVE/SUSPECT/DEAD)  str node  u32 incarnation  addr  str from  bytes meta
    u8 E, then E addr: the member's other endpoints (its paths over other transports)

The connection train's path probes (``paths.py``), to one endpoint of a member::

    PATH_PROBE  u32 probe id
    PATH_ACK    u32 probe id (sent back to where the probe came from)

Application messages (state sync, search, alerts, hash registry, route
broadcasts, direct messages, acks, search results) share one envelope::

    str origin  u32 message id  u8 ttl  u8 hop limit  str destination ("" = everyone)
    u8 path length, then that many str (the nodes it went through)
    rest: payload, compact JSON

``str`` is u8 length + UTF-8; ``addr`` is str transport + str host + u16 port
(``udp``, ``192.0.2.7``, 9999: 18 bytes); ``bytes`` is u16 length + bytes.

Version 2 added the transport name to every address (version 1 had host and
port only) and the DIRECT type. Version 3 put the state stamp in PING and
PROBE_ACK, the ``alone`` flag in PEER_DISCOVERY, the boot epoch in every
frame (replay windows no longer hang on the incarnation), and added EPOCH.
Version 4 added the endpoints to membership updates, and PATH_PROBE and
PATH_ACK. Version 5 added sealed frames and KEYRING (rotation.py). A frame of
another version is dropped as ``version``.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from flowmesh.limits import NODE_ID_MAX_BYTES

from .address import NOWHERE, Address

WIRE_VERSION = 5
MAX_DATAGRAM = 1400
TAG_LEN = 16
#: The second byte of a sealed frame, where an authenticated one has its type.
SEALED = 0
#: What sealing adds to an authenticated frame: a 3-byte head and a 12-byte nonce
#: (the AEAD's tag takes the place of the HMAC tag).
SEAL_OVERHEAD = 3 + 12
#: Node ids on the wire: the one limit the database and the agent use too.
MAX_ID_LEN = NODE_ID_MAX_BYTES
#: Transport names on the wire (see address.py).
MAX_TRANSPORT_LEN = 16
#: An address's host on the wire (a str: one length byte).
MAX_HOST_BYTES = 255


class MessageType(IntEnum):
    # application messages; these numbers are the protocol's, never reuse one
    #: Retired in version 3: PING and PROBE_ACK carry what it said (the state stamp).
    HEARTBEAT = 1
    PEER_DISCOVERY = 2
    NODE_STATE_SYNC = 3
    SEARCH_QUERY = 4
    ALERT = 5
    HASH_REGISTRY = 6
    ROUTE_BROADCAST = 7
    ACK = 8
    SEARCH_RESULT = 9
    #: A message to one member (send()); ROUTE_BROADCAST is for everyone.
    DIRECT = 10
    # failure detector (SWIM)
    PING = 16
    PING_REQ = 17
    PROBE_ACK = 18
    SUSPECT = 19
    ALIVE = 20
    DEAD = 21
    # dissemination: membership snapshot (join, anti-entropy) and gossip rounds
    MEMBERSHIP = 22
    GOSSIP = 23
    #: "I track a boot epoch of yours this high": the replay guard's notice (security.py).
    EPOCH = 24
    # the connection train (paths.py): is this endpoint of a member answering, how fast?
    PATH_PROBE = 25
    PATH_ACK = 26
    #: The mesh's keyring, as a member holds it (rotation.py): an envelope.
    KEYRING = 27


#: Types whose body is an application Envelope.
ENVELOPE_TYPES = frozenset({
    MessageType.NODE_STATE_SYNC, MessageType.SEARCH_QUERY, MessageType.ALERT,
    MessageType.HASH_REGISTRY, MessageType.ROUTE_BROADCAST, MessageType.ACK,
    MessageType.SEARCH_RESULT, MessageType.DIRECT, MessageType.KEYRING,
})
#: Kinds a membership update can have.
UPDATE_KINDS = (MessageType.ALIVE, MessageType.SUSPECT, MessageType.DEAD)


class WireError(ValueError):
    """A datagram that cannot be decoded; ``reason`` names the stats counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Update:
    """A membership fact: node is ALIVE/SUSPECT/DEAD at this incarnation."""

    kind: MessageType
    node: str
    incarnation: int
    address: Address = NOWHERE
    origin: str = ""  # who says so (suspicion confirmations count distinct origins)
    meta: bytes = b""
    #: The member's other endpoints (one per path besides ``address``), most preferred first.
    endpoints: tuple[Address, ...] = ()


@dataclass(frozen=True)
class Envelope:
    """An application message, broadcast (destination "") or routed to one node."""

    origin: str
    message_id: int
    payload: dict
    ttl: int = 10
    hop_limit: int = 5
    destination: str = ""
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Frame:
    type: MessageType
    sender: str
    incarnation: int
    seq: int
    timestamp: int
    body: bytes = b""
    updates: tuple[Update, ...] = field(default_factory=tuple)
    epoch: int = 0  #: the sender's boot epoch (microseconds)


# -- primitive codecs ------------------------------------------------------


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise WireError("truncated", f"needed {n} bytes at offset {self.pos}")
        chunk = self.buf[self.pos:end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def str(self, *, max_len: int = 255) -> str:
        n = self.u8()
        if n > max_len:
            raise WireError("malformed", f"string of {n} bytes, limit {max_len}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("malformed", "invalid UTF-8") from exc

    def bytes16(self) -> bytes:
        return self.take(self.u16())

    def addr(self) -> Address:
        transport, host, port = self.str(max_len=MAX_TRANSPORT_LEN), self.str(), self.u16()
        try:
            return Address(transport, host, port)
        except ValueError as exc:
            raise WireError("malformed", str(exc)) from None

    def rest(self) -> bytes:
        chunk = self.buf[self.pos:]
        self.pos = len(self.buf)
        return chunk

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise WireError("malformed", f"{len(self.buf) - self.pos} trailing bytes")


def _str(value: str, *, max_len: int = 255) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > max_len:
        raise ValueError(f"string of {len(raw)} bytes exceeds {max_len}: {value[:20]!r}...")
    return bytes((len(raw),)) + raw


def _addr(address: Address) -> bytes:
    return (_str(address.transport, max_len=MAX_TRANSPORT_LEN) + _str(address.host, max_len=MAX_HOST_BYTES)
            + struct.pack(">H", address.port))


def _bytes16(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


# -- updates ----------------------------------------------------------------


#: Most endpoints an update carries besides its address.
MAX_ENDPOINTS = 8


def encode_update(u: Update) -> bytes:
    endpoints = u.endpoints[:MAX_ENDPOINTS]
    return (bytes((u.kind,)) + _str(u.node, max_len=MAX_ID_LEN) + struct.pack(">I", u.incarnation)
            + _addr(u.address) + _str(u.origin, max_len=MAX_ID_LEN) + _bytes16(u.meta)
            + bytes((len(endpoints),)) + b"".join(_addr(a) for a in endpoints))


def _read_update(r: _Reader) -> Update:
    kind = r.u8()
    if kind not in UPDATE_KINDS:
        raise WireError("malformed", f"membership update of kind {kind}")
    node = r.str(max_len=MAX_ID_LEN)
    if not node:
        raise WireError("malformed", "membership update without a node")
    incarnation, address, origin, meta = r.u32(), r.addr(), r.str(max_len=MAX_ID_LEN), r.bytes16()
    count = r.u8()
    if count > MAX_ENDPOINTS:
        raise WireError("malformed", f"{count} endpoints, limit {MAX_ENDPOINTS}")
    return Update(MessageType(kind), node, incarnation, address, origin, meta,
                  tuple(r.addr() for _ in range(count)))


def _update_end(buf: bytes, pos: int) -> int:
    """Where the update starting at ``pos`` ends: its lengths read, nothing decoded."""
    try:
        p = pos + 1  # kind
        p += 1 + buf[p] + 4  # node, incarnation
        p += 1 + buf[p]  # transport
        p += 1 + buf[p] + 2  # host, port
        p += 1 + buf[p]  # origin
        p += 2 + (buf[p] << 8 | buf[p + 1])  # meta
        count = buf[p]
        p += 1
        for _ in range(count):  # endpoints
            p += 1 + buf[p]  # transport
            p += 1 + buf[p] + 2  # host, port
    except IndexError:
        raise WireError("truncated", f"membership update at offset {pos}") from None
    if p > len(buf):
        raise WireError("truncated", f"membership update at offset {pos}")
    return p


@functools.lru_cache(maxsize=1024)
def decode_update(body: bytes) -> Update:
    """One update, exactly ``body``. Remembered: gossip carries the same encoded update
    to every member several times over, and a join or a death brings a burst of them."""
    r = _Reader(body)
    u = _read_update(r)
    r.done()
    return u


def _updates_at(buf: bytes, pos: int, count: int) -> tuple[tuple[Update, ...], int]:
    """``count`` updates one after another from ``pos``; and where they end."""
    out = []
    for _ in range(count):
        end = _update_end(buf, pos)
        out.append(decode_update(buf[pos:end]))
        pos = end
    return tuple(out), pos


# -- envelopes --------------------------------------------------------------


def encode_envelope(e: Envelope) -> bytes:
    if len(e.path) > 255:
        raise ValueError("path too long")
    head = (_str(e.origin, max_len=MAX_ID_LEN) + struct.pack(">IBB", e.message_id, e.ttl, e.hop_limit)
            + _str(e.destination, max_len=MAX_ID_LEN) + bytes((len(e.path),))
            + b"".join(_str(p, max_len=MAX_ID_LEN) for p in e.path))
    return head + json.dumps(e.payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_envelope(body: bytes) -> Envelope:
    r = _Reader(body)
    origin = r.str(max_len=MAX_ID_LEN)
    message_id, ttl, hop_limit = r.u32(), r.u8(), r.u8()
    destination = r.str(max_len=MAX_ID_LEN)
    path = tuple(r.str(max_len=MAX_ID_LEN) for _ in range(r.u8()))
    try:
        payload = json.loads(r.rest())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("malformed", "payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise WireError("malformed", "payload is not a JSON object")
    if not origin:
        raise WireError("malformed", "envelope without an origin")
    return Envelope(origin, message_id, payload, ttl, hop_limit, destination, path)


# -- frames -----------------------------------------------------------------

_HEAD = struct.Struct(">QIII")  # epoch, sequence, clock, incarnation
#: The fixed part after the sender, as one struct: the header, then the body's length.
_HEAD_BODY = struct.Struct(">QIIIH")
_TYPES = {t.value: t for t in MessageType}


def frame_overhead(sender: str, body_len: int) -> int:
    """Bytes a frame takes before any piggybacked update, sealed (the larger kind)."""
    return 3 + 1 + len(sender.encode("utf-8")) + _HEAD.size + 2 + body_len + 1 + TAG_LEN + SEAL_OVERHEAD


@functools.lru_cache(maxsize=64)
def _sender_field(sender: str) -> bytes:
    """A sender's id as the frame carries it (a node sends under one id: encode it once)."""
    return _str(sender, max_len=MAX_ID_LEN)


def encode_frame(frame: Frame, protect, raw_updates: tuple[bytes, ...] | list[bytes] = ()) -> bytes:
    """Frame -> datagram; ``protect(signed part) -> datagram`` authenticates or seals
    it (Keyring.protect, MeshKey.tagged).

    ``raw_updates`` are already-encoded updates (from the gossip queue),
    piggybacked after ``frame.updates``.
    """
    updates = [encode_update(u) for u in frame.updates] + list(raw_updates)
    if len(updates) > 255:
        raise ValueError("too many piggybacked updates")
    if len(frame.body) > 0xFFFF:
        raise ValueError(f"body of {len(frame.body)} bytes")
    data = b"".join((bytes((WIRE_VERSION, frame.type, 0)), _sender_field(frame.sender),
                     _HEAD_BODY.pack(frame.epoch, frame.seq, frame.timestamp, frame.incarnation,
                                     len(frame.body)),
                     frame.body, bytes((len(updates),)), *updates))
    datagram = protect(data)
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"datagram of {len(datagram)} bytes exceeds {MAX_DATAGRAM}")
    return datagram


def split_tag(datagram: bytes) -> tuple[bytes, bytes]:
    """(signed part, tag); raises WireError for sizes no valid frame has."""
    if len(datagram) > MAX_DATAGRAM:
        raise WireError("oversized", f"{len(datagram)} bytes")
    if len(datagram) < 4 + 1 + _HEAD.size + 2 + 1 + TAG_LEN:
        raise WireError("truncated", f"{len(datagram)} bytes")
    return datagram[:-TAG_LEN], datagram[-TAG_LEN:]


def decode_frame(signed: bytes) -> Frame:
    """Decode the signed part of a datagram (after the tag was verified).

    The fixed header is read in one struct call: every datagram comes through here.
    """
    size = len(signed)
    if size < 4:
        raise WireError("truncated", f"{size} bytes")
    version, raw_type, _flags, id_len = signed[0], signed[1], signed[2], signed[3]
    if version != WIRE_VERSION:
        raise WireError("version", f"wire version {version}")
    mtype = _TYPES.get(raw_type)
    if mtype is None:
        raise WireError("malformed", f"unknown message type {raw_type}")
    if id_len > MAX_ID_LEN:
        raise WireError("malformed", f"string of {id_len} bytes, limit {MAX_ID_LEN}")
    pos = 4 + id_len
    if pos + _HEAD_BODY.size > size:
        raise WireError("truncated", f"header ends past {size} bytes")
    if not id_len:
        raise WireError("malformed", "no sender")
    try:
        sender = signed[4:pos].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("malformed", "invalid UTF-8") from exc
    epoch, seq, timestamp, incarnation, body_len = _HEAD_BODY.unpack_from(signed, pos)
    pos += _HEAD_BODY.size
    end = pos + body_len
    if end >= size:
        raise WireError("truncated", f"body ends past {size} bytes")
    body = signed[pos:end]
    updates, pos = _updates_at(signed, end + 1, signed[end]) if signed[end] else ((), end + 1)
    if pos != size:
        raise WireError("malformed", f"{size - pos} trailing bytes")
    return Frame(mtype, sender, incarnation, seq, timestamp, body, updates, epoch)


# -- bodies of the failure detector's own messages ------------------------------

#: A member's state stamp: (incarnation its state was stamped at, state version).
Stamp = tuple[int, int]
_STAMP = struct.Struct(">II")
_U32 = struct.Struct(">I")


def encode_ping(probe_id: int, target: str, stamp: Stamp) -> bytes:
    return _U32.pack(probe_id) + _str(target, max_len=MAX_ID_LEN) + _STAMP.pack(*stamp)


def decode_ping(body: bytes) -> tuple[int, str, Stamp]:
    size = len(body)
    if size < 5:
        raise WireError("truncated", f"ping of {size} bytes")
    id_len = body[4]
    if id_len > MAX_ID_LEN:
        raise WireError("malformed", f"string of {id_len} bytes, limit {MAX_ID_LEN}")
    end = 5 + id_len
    if size != end + _STAMP.size:
        raise WireError("truncated" if size < end + _STAMP.size else "malformed", f"ping of {size} bytes")
    try:
        target = body[5:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("malformed", "invalid UTF-8") from exc
    return _U32.unpack_from(body)[0], target, _STAMP.unpack_from(body, end)


def encode_ping_req(probe_id: int, target: str, address: Address) -> bytes:
    return _U32.pack(probe_id) + _str(target, max_len=MAX_ID_LEN) + _addr(address)


def decode_ping_req(body: bytes) -> tuple[int, str, Address]:
    r = _Reader(body)
    out = (r.u32(), r.str(max_len=MAX_ID_LEN), r.addr())
    r.done()
    return out


def encode_probe_ack(probe_id: int, stamp: Stamp) -> bytes:
    return _U32.pack(probe_id) + _STAMP.pack(*stamp)


def decode_probe_ack(body: bytes) -> tuple[int, Stamp]:
    if len(body) != 4 + _STAMP.size:
        raise WireError("truncated" if len(body) < 4 + _STAMP.size else "malformed",
                        f"probe ack of {len(body)} bytes")
    probe_id, inc, version = struct.unpack(">III", body)
    return probe_id, (inc, version)


def encode_epoch(epoch: int) -> bytes:
    return struct.pack(">Q", epoch)


def decode_epoch(body: bytes) -> int:
    if len(body) != 8:
        raise WireError("truncated" if len(body) < 8 else "malformed", f"epoch of {len(body)} bytes")
    return struct.unpack(">Q", body)[0]


def encode_discovery(address: Address, meta: bytes, alone: bool,
                     endpoints: tuple[Address, ...] = ()) -> bytes:
    endpoints = endpoints[:MAX_ENDPOINTS]
    return (bytes((alone,)) + _addr(address) + _bytes16(meta) + bytes((len(endpoints),))
            + b"".join(_addr(a) for a in endpoints))


def decode_discovery(body: bytes) -> tuple[Address, bytes, bool, tuple[Address, ...]]:
    r = _Reader(body)
    alone = r.u8()
    if alone > 1:
        raise WireError("malformed", f"discovery flag {alone}")
    address, meta, count = r.addr(), r.bytes16(), r.u8()
    if count > MAX_ENDPOINTS:
        raise WireError("malformed", f"{count} endpoints, limit {MAX_ENDPOINTS}")
    out = (address, meta, bool(alone), tuple(r.addr() for _ in range(count)))
    r.done()
    return out


def encode_gossip(envelopes: list[bytes]) -> bytes:
    return bytes((len(envelopes),)) + b"".join(_bytes16(e) for e in envelopes)


def decode_gossip(body: bytes) -> list[bytes]:
    r = _Reader(body)
    out = [r.bytes16() for _ in range(r.u8())]
    r.done()
    return out


def encode_path_probe(probe_id: int) -> bytes:
    """PATH_PROBE and PATH_ACK: the probe's id."""
    return _U32.pack(probe_id)


def decode_path_probe(body: bytes) -> int:
    if len(body) != 4:
        raise WireError("malformed", f"path probe of {len(body)} bytes")
    return _U32.unpack(body)[0]
