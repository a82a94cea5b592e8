"""Datagram authentication and replay protection.

Every datagram carries a 16-byte HMAC-SHA256 tag under a key derived from the
mesh key (the standard library's ``hmac``; truncation to 128 bits follows RFC
2104 section 5 and keeps probes small). Anyone without the mesh key can
neither forge nor alter a datagram.

A captured datagram replayed later is refused by the ReplayGuard: each
sender's frames carry (incarnation, sequence); a frame is accepted once,
within a sliding window of the newest sequence numbers of the sender's
current incarnation, and only when its timestamp is within ``max_skew_s`` of
the receiver's clock. A restarted node starts a higher incarnation (its
initial incarnation is its start time in seconds), which resets its window.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

from .wire import TAG_LEN


class MacKey:
    def __init__(self, mesh_key: bytes | str):
        raw = mesh_key.encode("utf-8") if isinstance(mesh_key, str) else bytes(mesh_key)
        if len(raw) < 16:
            raise ValueError("the mesh key must be at least 16 bytes")
        # domain separation: the same secret used elsewhere gives another key here
        self._key = hashlib.sha256(b"flowmesh mesh mac v1\x00" + raw).digest()

    def sign(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()[:TAG_LEN]

    def verify(self, data: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.sign(data), tag)


class ReplayGuard:
    """Accept each (sender, incarnation, sequence) once, within a window and a skew.

    Memory is bounded: at most ``max_senders`` are tracked (least recently
    heard evicted); an evicted sender's old frames are still refused by the
    clock-skew bound.
    """

    def __init__(self, window: int = 256, max_skew_s: float = 60.0, max_senders: int = 4096):
        self.window = window
        self.max_skew_s = max_skew_s
        self.max_senders = max_senders
        # sender -> [incarnation, highest seq, bitmap of seen seqs below highest]
        self._state: OrderedDict[str, list[int]] = OrderedDict()

    def check(self, sender: str, incarnation: int, seq: int, timestamp: int, now: float) -> str | None:
        """None when the frame is fresh (and record it), else the drop reason."""
        if self.max_skew_s and abs(now - timestamp) > self.max_skew_s:
            return "skew"
        state = self._state.get(sender)
        if state is None or incarnation > state[0]:
            self._remember(sender, [incarnation, seq, 0])
            return None
        known_inc, highest, bitmap = state
        if incarnation < known_inc:
            return "replayed"
        if seq > highest:
            shift = seq - highest
            # the old highest is now ``shift`` behind: still in the window when shift <= window
            bitmap = ((bitmap << shift) | (1 << (shift - 1))) if shift <= self.window else 0
            state[1], state[2] = seq, bitmap & ((1 << self.window) - 1)
            self._state.move_to_end(sender)
            return None
        age = highest - seq
        if age == 0 or age > self.window or bitmap & (1 << (age - 1)):
            return "replayed"
        state[2] = bitmap | (1 << (age - 1))
        self._state.move_to_end(sender)
        return None

    def _remember(self, sender: str, state: list[int]) -> None:
        self._state[sender] = state
        self._state.move_to_end(sender)
        while len(self._state) > self.max_senders:
            self._state.popitem(last=False)

    def forget(self, sender: str) -> None:
        self._state.pop(sender, None)
