"""Replay protection, and the mesh's public id.

Every datagram is authenticated (a 16-byte HMAC-SHA256 tag, truncation to 128
bits as RFC 2104 section 5 allows, which keeps probes small) or sealed
(ChaCha20-Poly1305) under a key of the mesh's keyring (keyring.py): anyone
without a key can neither forge nor alter a datagram. What a captured
datagram replayed could still do is this module's concern.

Replays
-------

Each frame carries its sender's *boot epoch* (the wall clock when the process
started, in microseconds), a sequence number, and the sender's clock in
seconds. A frame is accepted once, within a sliding window of the newest
sequence numbers of the epoch the receiver tracks for that sender, and only
when its clock is within ``max_skew_s`` of the receiver's: a frame captured
more than ``max_skew_s`` ago is refused whatever else it says.

The epoch used to be the SWIM incarnation, and that broke restarts: a node
whose clock was behind its past self's, or that had refuted k times and
restarted within k seconds, started below the incarnation every member
tracked, and all its frames were refused as replayed, forever. The
incarnation orders *facts about a member* and moves with every refutation;
the epoch orders *boots of a process* and never moves during one (except
past a sequence wrap, by one). Apart, a quick restart always has a higher
epoch (microseconds), whatever the incarnation did. That leaves the clock
that went back, which needs an ordered value no clock can give; the options,
with what an attacker replaying captured frames could do with each:

* Accept any epoch other than the tracked one as a new boot. The attacker
  alternates two boots' captured frames: each switch resets the window, so
  every frame captured within the skew bound is accepted again and again.
  Unsound.
* Accept only higher epochs (what a restart with a sane clock gives). No
  replay gets through: a lower epoch is refused, the tracked one is
  windowed, a higher one is a boot the receiver never heard and is accepted
  once per frame. But a restart with a clock behind is refused until its
  clock catches up with its past self: this was the defect.
* Also accept a lower epoch once the tracked one has been silent for longer
  than ``max_skew_s`` (the receiver's clock since its last accepted frame).
  A boot that still talks cannot be displaced by replaying an older boot's
  frames. After the switch, the old epoch is *retired*: its frames, which a
  replay could still carry within the skew bound (ones sent to other members
  after our last, say), are refused for ``2 * max_skew_s``, after which the
  skew check refuses them anyway; so the switch cannot be undone by replays
  and no frame is accepted twice. To use a lower epoch at all, the attacker
  must keep the live boot silent toward the receiver for ``max_skew_s`` (drop
  everything it sends: a denial of service it could mount by itself), and
  hold frames of an older boot of the same node that are still within the
  skew bound. The cost to honest nodes: a restart with a clock behind is
  heard ``max_skew_s`` after its past self's last frame at the latest.

We take the last, and shorten that wait without weakening it: a frame from
a lower epoch than the tracked one is answered (at most once a second per
sender) with an EPOCH notice carrying the tracked epoch, and a node told of
an epoch of its own above its current one moves past it. A restarted node
with a clock behind is then heard within a round trip. The notice is an
authenticated frame from a member; replayed, it is refused like any other;
accepted (by a restarted node, which tracks nothing yet) it only moves an
epoch forward, which is always safe. Sent to whoever the datagram came from,
it is no larger than the frame that caused it and rate-limited, so it
amplifies nothing. When ``max_skew_s`` is 0 (no clock check), frames carry
no usable age, and a lower epoch is never accepted by silence.

Memory is bounded: at most ``max_senders`` senders are tracked (least
recently heard evicted), each with at most ``MAX_RETIRED`` retired epochs;
an evicted sender's old frames are still refused by the skew bound.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

#: Retired epochs remembered per sender (restarts within 2 x max_skew_s, beyond which
#: the skew check refuses their frames anyway).
MAX_RETIRED = 4


def mesh_id_of(mesh_key: bytes | str) -> str:
    """The mesh's public name, derived from its key: 16 hex digits that relays and
    mDNS use to group members, and that say nothing about the key."""
    raw = mesh_key.encode("utf-8") if isinstance(mesh_key, str) else bytes(mesh_key)
    return hashlib.sha256(b"flowmesh mesh id v1\x00" + raw).hexdigest()[:16]


class _Sender:
    """What the guard remembers of one sender."""

    __slots__ = ("bitmap", "epoch", "heard", "highest", "retired")

    def __init__(self, epoch: int, seq: int, now: float):
        self.epoch = epoch
        self.highest = seq
        self.bitmap = 0  #: bit k-1 set: sequence highest - k was accepted
        self.heard = now  #: receiver's clock at the last frame accepted from this epoch
        self.retired: dict[int, float] = {}  #: epoch -> refused until


class ReplayGuard:
    """Accept each (sender, epoch, sequence) once, within a window and a skew."""

    def __init__(self, window: int = 256, max_skew_s: float = 60.0, max_senders: int = 4096):
        self.window = window
        self.max_skew_s = max_skew_s
        self.max_senders = max_senders
        self._state: OrderedDict[str, _Sender] = OrderedDict()

    def check(self, sender: str, epoch: int, seq: int, timestamp: int, now: float) -> str | None:
        """None when the frame is fresh (and record it), else the drop reason:
        ``skew``, ``replayed``, or ``old_epoch`` (an older boot than the one heard,
        which the caller may tell the sender about; see the module doc)."""
        if self.max_skew_s and abs(now - timestamp) > self.max_skew_s:
            return "skew"
        state = self._state.get(sender)
        if state is None:
            self._remember(sender, _Sender(epoch, seq, now))
            return None
        if epoch != state.epoch:
            until = state.retired.get(epoch)
            if until is not None and now < until:
                return "replayed"
            silent = self.max_skew_s and now - state.heard > self.max_skew_s
            if epoch < state.epoch and not silent:
                return "old_epoch"
            self._new_boot(sender, state, epoch, seq, now)
            return None
        self._state.move_to_end(sender)
        if seq > state.highest:
            shift = seq - state.highest
            # the old highest is now ``shift`` behind: still in the window when shift <= window
            bitmap = ((state.bitmap << shift) | (1 << (shift - 1))) if shift <= self.window else 0
            state.highest, state.bitmap = seq, bitmap & ((1 << self.window) - 1)
            state.heard = now
            return None
        age = state.highest - seq
        if age == 0 or age > self.window or state.bitmap & (1 << (age - 1)):
            return "replayed"
        state.bitmap |= 1 << (age - 1)
        state.heard = now
        return None

    def _new_boot(self, sender: str, state: _Sender, epoch: int, seq: int, now: float) -> None:
        """``sender`` restarted: retire the epoch we tracked, track the new one."""
        retired = {e: u for e, u in state.retired.items() if u > now}
        retired[state.epoch] = now + 2 * self.max_skew_s if self.max_skew_s else float("inf")
        retired.pop(epoch, None)
        while len(retired) > MAX_RETIRED:
            del retired[min(retired, key=retired.__getitem__)]
        fresh = _Sender(epoch, seq, now)
        fresh.retired = retired
        self._remember(sender, fresh)

    def _remember(self, sender: str, state: _Sender) -> None:
        self._state[sender] = state
        self._state.move_to_end(sender)
        while len(self._state) > self.max_senders:
            self._state.popitem(last=False)

    def epoch_of(self, sender: str) -> int | None:
        """The boot epoch we track for ``sender``."""
        state = self._state.get(sender)
        return None if state is None else state.epoch

    def forget(self, sender: str) -> None:
        self._state.pop(sender, None)
