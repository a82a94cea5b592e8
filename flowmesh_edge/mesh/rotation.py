"""Key rotation over the mesh: every member's keyring converges on the newest.

A member's keyring (keyring.py) has a *version*, the number of changes it
has seen, and an *origin*, the member that made the last one. A change made
on one member (``flowmesh-edge keys add|use|remove``, or ``rotate``) is
spread as a KEYRING message carrying the whole ring; a member takes a ring
that is newer than its own, ordered by (version, origin) so that two
changes made at once settle the same way everywhere (the later origin's
wins; the other change is lost and must be made again, which its maker sees
in ``keys list``).

Keys never travel in clear: a KEYRING frame is always sealed, whatever the
mesh's ``encrypt`` setting, and one that arrives only authenticated is
refused (``keyring_unsealed``). Only a member holding a key of the ring can
send one; that is the mesh's trust, as for every other frame.

No flag day, no member left behind:

* a change is made in steps, each spread and acknowledged by every alive
  member (or until ``keyring_deadline_s``) before the next: a new key is
  first *installed* (accepted, not used), then *used* (the primary), and
  only then are keys *removed*. A member never receives a frame under a key
  it has not installed, and never loses a key another still sends under;
* the sender of each step retransmits it every ``keyring_retry_s`` to the
  members that have not acknowledged;
* a member that joins (or comes back) is sent the ring, and one that sends
  under a key that is not the receiver's primary is sent the ring under that
  key (at most every CATCH_UP_EVERY_S), so a member that missed a step
  catches up as soon as it talks, in whichever direction it is behind.

A member that was away while a key it still uses was removed everywhere can
no longer talk to the mesh (its frames are counted as ``removed_key``): that
is what removing a key means. It joins again by pairing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from flowmesh.limits import NODE_ID_MAX_BYTES

from .address import Address
from .keyring import Keyring, MeshKey, check_keyring, key_id
from .membership import MemberEvent
from .wire import MessageType, WireError

log = logging.getLogger("flowmesh_edge.mesh")

#: Seconds between rings sent to one member that talks under an old key.
CATCH_UP_EVERY_S = 2.0

#: ``handler(version, keys)``: the ring this member holds changed (keys primary first).
KeyringHandler = Callable[[int, list[str]], object]


@dataclass
class RotationStats:
    """What rotation did on this member."""

    #: Rings taken from others (newer than ours).
    adopted: int = 0
    #: Rings sent (steps, retransmissions, catch-ups).
    sent: int = 0
    #: Acknowledgements received of a step we spread.
    acked: int = 0
    #: Rings received that were not newer than ours.
    stale: int = 0
    #: Steps completed without every alive member's acknowledgement (deadline).
    incomplete: int = 0


@dataclass
class _Step:
    version: int
    keys: list[bytes]
    pending: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Another member's newer ring arrived while this step was spreading.
    superseded: bool = False


def _text(key: bytes) -> str:
    return key.decode("utf-8")


class KeyRotation:
    """The KEYRING protocol of one member."""

    def __init__(self, host, keyring: Keyring, version: int = 0, origin: str = ""):
        self.host = host
        self.keyring = keyring
        self.version = version
        self.origin = origin
        self.stats = RotationStats()
        self._handlers: list[KeyringHandler] = []
        self._step: _Step | None = None
        self._caught_up: dict[str, float] = {}  #: member -> when we last sent it the ring
        self._change_lock = asyncio.Lock()

    def on_change(self, handler: KeyringHandler) -> None:
        self._handlers.append(handler)

    # -- changing the ring here --------------------------------------------------------------
    async def change_to(self, keys: list[str] | list[bytes], at_least: int = 0) -> bool:
        """Make ``keys`` (primary first) the mesh's ring, in safe steps (module doc), each
        at a version above ``at_least`` and ours. True when every step was acknowledged
        by every alive member; ValueError for a ring that cannot be."""
        check_keyring(list(keys))
        target = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys]
        async with self._change_lock:
            self.version = max(self.version, at_least)
            current = [k.raw for k in self.keyring.keys]
            installed = current + [k for k in target if k not in current]
            used = [target[0], *(k for k in installed if k != target[0])]
            steps = [current]
            for step in (installed, used, target):
                if step != steps[-1]:
                    steps.append(step)
            complete = True
            # each step that changes the ring; at least one, so that a ring changed while
            # the agent was stopped reaches the others too
            for step in steps[1:] or steps:
                complete = await self._spread_step(step) and complete
            return complete

    async def _spread_step(self, keys: list[bytes]) -> bool:
        """Take ``keys`` here at the next version and spread them until every alive member
        acknowledged or the deadline passed."""
        if len(keys) > len(set(keys)):
            raise ValueError("a key appears twice in the keyring")
        self._apply(self.version + 1, self.host.node_id, keys)
        step = _Step(self.version, keys, {m.node_id for m in self.host.members.alive()})
        self._step = step
        cfg = self.host.config
        deadline = self.host.now() + cfg.keyring_deadline_s
        while step.pending and self.host.now() < deadline:
            for member in sorted(step.pending):
                self._send_ring(member, None)
            try:
                await asyncio.wait_for(step.done.wait(), cfg.keyring_retry_s)
            except TimeoutError:
                pass
            alive = {m.node_id for m in self.host.members.alive()}
            step.pending &= alive  # a member that died is not waited for; it catches up later
            if not step.pending:
                break
        if step.superseded:
            log.warning("mesh %s: keyring version %d was superseded by %s's version %d", self.host.node_id,
                        step.version, self.origin, self.version)
            return False
        if step.pending:
            self.stats.incomplete += 1
            log.warning("mesh %s: keyring version %d not acknowledged by %s within %.0f s",
                        self.host.node_id, step.version, ", ".join(sorted(step.pending)),
                        cfg.keyring_deadline_s)
            return False
        return True

    def _apply(self, version: int, origin: str, keys: list[bytes]) -> None:
        before = self.keyring.ids()
        self.keyring.replace(keys)
        self.version, self.origin = version, origin
        log.info("mesh %s: keyring version %d from %s: %s (primary %s, was %s)", self.host.node_id,
                 version, origin, " ".join(self.keyring.ids()), self.keyring.primary.id, " ".join(before))
        text = [_text(k) for k in keys]
        for handler in self._handlers:
            self.host.call(handler, version, text)

    # -- the wire ---------------------------------------------------------------------------------
    def _send_ring(self, member: str, key: MeshKey | None, address: Address | None = None) -> None:
        body = json.dumps({"v": self.version, "o": self.origin,
                           "k": [_text(k.raw) for k in self.keyring.keys]}, separators=(",", ":"))
        self.stats.sent += 1
        if address is not None:
            self.host.send_frame(MessageType.KEYRING, body.encode(), address, piggyback=False, key=key,
                                 seal=True)
        else:
            self.host.send_to(MessageType.KEYRING, body.encode(), member, piggyback=False, seal=True)

    def _send_ack(self, member: str, address: Address, key: MeshKey) -> None:
        body = json.dumps({"ack": self.version, "o": self.origin}, separators=(",", ":"))
        self.host.send_frame(MessageType.KEYRING, body.encode(), address, piggyback=False, key=key, seal=True)

    def on_frame(self, frame, addr: Address, key: MeshKey, sealed: bool) -> None:
        """A KEYRING frame (node.py hands it with the key that opened it)."""
        if not sealed:
            raise WireError("keyring_unsealed", f"from {frame.sender}")
        message = _parse(frame.body)
        if "ack" in message:
            step = self._step
            if step is not None and message["ack"] == step.version and frame.sender in step.pending:
                step.pending.discard(frame.sender)
                self.stats.acked += 1
                if not step.pending:
                    step.done.set()
            return
        theirs = (message["v"], message["o"])
        if theirs > (self.version, self.origin):
            self.stats.adopted += 1
            step = self._step
            if step is not None and step.pending:  # ours is superseded: stop waiting for it
                step.pending.clear()
                step.superseded = True
                step.done.set()
            self._apply(message["v"], message["o"], [k.encode("utf-8") for k in message["k"]])
            self._send_ack(frame.sender, addr, key)
        elif theirs == (self.version, self.origin):
            self._send_ack(frame.sender, addr, key)  # a retransmission: our ack was lost
        else:
            self.stats.stale += 1
            self.catch_up(frame.sender, addr, key, force=True)

    # -- keeping members in step -------------------------------------------------------------------
    def heard_under(self, sender: str, key: MeshKey, addr: Address) -> None:
        """A frame from ``sender`` opened under ``key``, not our primary: one of us is
        behind. Tell it our ring under that key (the other way round, it tells us)."""
        self.catch_up(sender, addr, key)

    def catch_up(self, member: str, addr: Address | None, key: MeshKey | None, force: bool = False) -> None:
        now = self.host.now()
        if not force and now - self._caught_up.get(member, float("-inf")) < CATCH_UP_EVERY_S:
            return
        if len(self._caught_up) > 1024:
            self._caught_up = {m: t for m, t in self._caught_up.items() if now - t < CATCH_UP_EVERY_S}
        self._caught_up[member] = now
        self._send_ring(member, key, addr)

    def member_event(self, event: MemberEvent) -> None:
        """A member joined or came back: it may hold another ring; send ours."""
        if event.kind in ("joined", "recovered") and self.version:  # a ring never changed tells nothing
            self.catch_up(event.node_id, None, None)

    def describe(self) -> dict:
        """Version, origin and key ids (never a key)."""
        return {"version": self.version, "origin": self.origin, "primary": self.keyring.primary.id,
                "keys": self.keyring.ids(), "encrypt": self.keyring.encrypt}


def _parse(body: bytes) -> dict:
    """A KEYRING body, checked: ``{"v", "o", "k"}`` or ``{"ack", "o"}``."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("keyring_malformed", "not JSON") from None
    if not isinstance(message, dict):
        raise WireError("keyring_malformed", "not an object")
    origin = message.get("o")
    if not isinstance(origin, str) or len(origin.encode()) > NODE_ID_MAX_BYTES:
        raise WireError("keyring_malformed", "origin")
    if "ack" in message:
        if set(message) != {"ack", "o"} or type(message["ack"]) is not int:
            raise WireError("keyring_malformed", "acknowledgement")
        return message
    version, keys = message.get("v"), message.get("k")
    if (set(message) != {"v", "o", "k"} or type(version) is not int or version < 0
            or not isinstance(keys, list)):
        raise WireError("keyring_malformed", "fields")
    try:
        check_keyring(keys)
    except ValueError as exc:
        raise WireError("keyring_malformed", str(exc)) from None
    return message


__all__ = ["CATCH_UP_EVERY_S", "KeyRotation", "KeyringHandler", "RotationStats", "key_id"]
