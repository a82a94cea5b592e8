"""BLE fragments: a mesh datagram cut to the link's ATT payload and put back together.

Pure code (no Bluetooth library, no I/O), used by :mod:`.ble`. A GATT write or
notification carries at most ``ATT MTU - 3`` bytes, 20 on a default link and a
few hundred once the MTU is negotiated up, while a mesh datagram is up to
:data:`~flowmesh_edge.mesh.wire.MAX_DATAGRAM` (1400) bytes. Each fragment
starts with a 12-byte header, big-endian::

    byte 0      version (high nibble, 1) | flags (bit 0: last fragment)
    bytes 1-2   message id (per sender, wraps at 65536)
    byte 3      fragment index, 0..255
    bytes 4-9   peer MAC: the sender's own on a write (a GATT server does not learn
                which central wrote), the destination's on a notification (one
                notify characteristic reaches every subscribed central)
    bytes 10-11 the ATT MTU the sender negotiated (0 if unknown); a central's
                writes tell the peripheral what size its notifications may be

The peer MAC is not authenticated: a forged one can only misdirect a reply,
as a forged UDP source can, since every mesh datagram is authenticated end to
end under the mesh key. A link delivers writes and notifications in order, so fragments of one message
arrive in sequence: a gap, a repeat or a new message before the last fragment
means the partial message is lost and is dropped, never patched.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire import MAX_DATAGRAM

_HEADER = struct.Struct(">BHB6sH")
HEADER_BYTES = _HEADER.size  # 12
VERSION = 1
LAST = 0x01
#: ATT's smallest MTU (Bluetooth Core, Vol 3 Part F 3.2.8); 3 bytes of it are the ATT opcode and handle.
MIN_ATT_MTU = 23
ATT_OVERHEAD = 3
#: Fragments per message: the index is one byte.
MAX_FRAGMENTS = 256


def mac_bytes(mac: str) -> bytes:
    """``AA:BB:CC:DD:EE:FF`` -> 6 bytes; ValueError if it is not a MAC."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{mac!r} is not a Bluetooth address")
    return bytes(int(p, 16) for p in parts)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def payload_size(mtu: int) -> int:
    """Datagram bytes per fragment on a link with this ATT MTU."""
    return max(mtu, MIN_ATT_MTU) - ATT_OVERHEAD - HEADER_BYTES


@dataclass(frozen=True, slots=True)
class Fragment:
    message_id: int
    index: int
    last: bool
    peer: str  #: the sender's MAC on writes, the destination's on notifications
    mtu: int
    payload: bytes


def split(data: bytes, message_id: int, peer: str, mtu: int) -> list[bytes]:
    """One datagram as the fragments to write or notify on a link with ATT MTU ``mtu``."""
    size = payload_size(mtu)
    chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    if len(chunks) > MAX_FRAGMENTS:
        raise ValueError(f"{len(data)} bytes need {len(chunks)} fragments at MTU {mtu}, over {MAX_FRAGMENTS}")
    peer_raw = mac_bytes(peer)
    last = len(chunks) - 1
    return [_HEADER.pack((VERSION << 4) | (LAST if i == last else 0), message_id & 0xFFFF, i, peer_raw,
                         min(mtu, 0xFFFF)) + chunk
            for i, chunk in enumerate(chunks)]


def parse(raw: bytes) -> Fragment | None:
    """A fragment, or None when it is too short or of another version."""
    if len(raw) < HEADER_BYTES:
        return None
    flags, message_id, index, peer, mtu = _HEADER.unpack_from(raw)
    if flags >> 4 != VERSION or flags & 0x0E:
        return None
    return Fragment(message_id, index, bool(flags & LAST), mac_text(peer), mtu, bytes(raw[HEADER_BYTES:]))


@dataclass
class _Partial:
    message_id: int
    started: float
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class Reassembler:
    """Puts fragments back together per sender, within bounds.

    At most ``max_pending`` senders have a partial message at once (a new one
    evicts the oldest), a message is at most ``max_bytes`` and must complete
    within ``timeout_s`` of its first fragment. Every fragment or partial
    message given up is counted in ``dropped`` by reason: ``malformed``,
    ``out_of_order``, ``incomplete``, ``oversized``, ``timeout``, ``evicted``.
    """

    def __init__(self, max_bytes: int = MAX_DATAGRAM, timeout_s: float = 5.0, max_pending: int = 32,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.clock = clock
        self.dropped: Counter[str] = Counter()
        self._pending: dict[str, _Partial] = {}

    def feed(self, source: str, fragment: Fragment | None) -> bytes | None:
        """Take one fragment from ``source``; the whole datagram when this was its last."""
        if fragment is None:
            self.dropped["malformed"] += 1
            return None
        now = self.clock()
        self.expire(now)
        partial = self._pending.get(source)
        if fragment.index == 0:
            if partial is not None:
                self._give_up(source, "incomplete")
            partial = _Partial(fragment.message_id, now)
            if len(self._pending) >= self.max_pending:
                oldest = min(self._pending, key=lambda s: self._pending[s].started)
                self._give_up(oldest, "evicted")
            self._pending[source] = partial
        elif partial is None or partial.message_id != fragment.message_id \
                or fragment.index != len(partial.parts):
            self.dropped["out_of_order"] += 1
            if partial is not None:
                self._give_up(source, "incomplete")
            return None
        partial.parts.append(fragment.payload)
        partial.size += len(fragment.payload)
        if partial.size > self.max_bytes:
            self._give_up(source, "oversized")
            return None
        if not fragment.last:
            return None
        del self._pending[source]
        return b"".join(partial.parts)

    def expire(self, now: float | None = None) -> None:
        """Give up partial messages older than the timeout."""
        now = self.clock() if now is None else now
        for source in [s for s, p in self._pending.items() if now - p.started > self.timeout_s]:
            self._give_up(source, "timeout")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _give_up(self, source: str, reason: str) -> None:
        del self._pending[source]
        self.dropped[reason] += 1
