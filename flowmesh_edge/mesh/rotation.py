"""Key rotation over the mesh: every member's keyring converges on the newest.

A member's keyring (keyring.py) has a *version*, the number of changes it
has seen, and an *origin*, the member that made the last one. A change made
on one member (``flowmesh-edge keys add|use|remove``, or ``rotate``) is
spread as a KEYRING message carrying the whole ring; a member takes a ring
that ranks above its own by (version, origin, digest of the keys), so that
two changes made at once settle the same way everywhere. The member whose
change lost stops making it as soon as it takes the other ring, and makes
it again later from there (the agent retries a request until it holds).

Keys never travel in clear: a KEYRING frame is always sealed, whatever the
mesh's ``encrypt`` setting, and one that arrives only authenticated is
refused (``keyring_unsealed``). Only a member holding a key of the ring can
send one; that is the mesh's trust, as for every other frame.

No flag day, no member left behind:

* a change is made in steps: a new key is first *installed* (accepted, not
  used), then *used* (the primary), and only then are keys *removed*. Each
  step goes to every member not known dead (suspects included), is
  retransmitted every ``keyring_retry_s`` to those that have not
  acknowledged it, and the next step waits until all have: a member never
  receives a frame under a key it has not installed, and never loses a key
  another still sends under. The step before keys are removed also waits
  for members declared dead and not yet forgotten (``dead_reap_s``), so that
  one cut off for a moment does not come back to find its key gone (it
  catches up under the old key, still accepted, and acknowledges). A step not
  acknowledged by all within ``keyring_deadline_s`` ends the change there
  (``change_to`` says False), at a ring that is safe to stay at: the caller
  tries again later (the agent, every 30 s);
* a member that joins (or comes back) is sent the ring under the primary,
  and one that sends under a key that is not the receiver's primary is sent
  the ring under that key (at most every CATCH_UP_EVERY_S), so a member that
  missed a step catches up as soon as it talks, in whichever direction it is
  behind.

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
from .keyring import MAX_KEYS, Keyring, MeshKey, check_keyring, key_id
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
    digest: str
    pending: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _text(key: bytes) -> str:
    return key.decode("utf-8")


def ring_digest(keys: list[bytes] | list[str]) -> str:
    """A ring's fingerprint (8 hex digits of a hash of its keys, in order): rings of the
    same version and origin are the same ring only when their digests agree."""
    return key_id(b"\x00".join(k.encode("utf-8") if isinstance(k, str) else k for k in keys))


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
    async def change_to(self, keys: list[str] | list[bytes]) -> bool:
        """Make ``keys`` (primary first) the mesh's ring, in safe steps (module doc). True
        when this member's ring is ``keys`` and every member not known dead acknowledged
        every step; False when a step was not acknowledged in time or another member's
        change came first (the ring is then a safe one, short of ``keys``); ValueError
        for a ring that cannot be."""
        check_keyring(list(keys))
        target = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys]
        async with self._change_lock:
            current = [k.raw for k in self.keyring.keys]
            installed = current + [k for k in target if k not in current]
            if len(installed) > MAX_KEYS:
                raise ValueError(f"changing to this ring without a flag day needs its {len(installed)} "
                                 f"keys at once, and a keyring holds {MAX_KEYS}: remove keys first")
            used = [target[0], *(k for k in installed if k != target[0])]
            steps = [current]
            for step in (installed, used, target):
                if step != steps[-1]:
                    steps.append(step)
            plan = steps[1:] or steps  # at least one step, so the ring reaches every member
            if set(current) - set(target) and len(plan) == 1:
                plan = [current, target]  # a removal alone: first make sure all hold the primary
            for index, step in enumerate(plan):
                # before keys are removed, every member, even one declared dead lately, must
                # hold the ring that does without them (module doc)
                everyone = index == len(plan) - 2 and bool(set(current) - set(target))
                if not await self._spread_step(step, everyone=everyone):
                    return False
            return True

    async def _spread_step(self, keys: list[bytes], everyone: bool = False) -> bool:
        """Take ``keys`` here at the next version and spread them until every member not
        known dead acknowledged (True), the deadline passed, or another member's ring
        came first (False); with ``everyone``, members declared dead and not yet forgotten
        (``dead_reap_s``) are waited for too."""
        self._apply(self.version + 1, self.host.node_id, keys)
        mine = self._rank()
        waited = self._everyone if everyone else self._not_dead
        step = _Step(self.version, mine[2], waited())
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
            step.pending &= waited()  # one declared dead meanwhile catches up when back
            if not step.pending:
                break
        self._step = None
        if self._rank() != mine:  # another member's ring was taken meanwhile
            log.warning("mesh %s: keyring version %d was superseded by %s's version %d: the change "
                        "stops there", self.host.node_id, step.version, self.origin, self.version)
            return False
        if step.pending:
            self.stats.incomplete += 1
            log.warning("mesh %s: keyring version %d not acknowledged by %s within %.0f s",
                        self.host.node_id, step.version, ", ".join(sorted(step.pending)),
                        cfg.keyring_deadline_s)
            return False
        return True

    def _not_dead(self) -> set[str]:
        return {m.node_id for m in self.host.members.alive_or_suspect()}

    def _everyone(self) -> set[str]:
        return set(self.host.members.members)

    def _rank(self) -> tuple[int, str, str]:
        return self.version, self.origin, ring_digest([k.raw for k in self.keyring.keys])

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
                           "k": [_text(k.raw) for k in self.keyring.keys]},
                          separators=(",", ":"), ensure_ascii=False)  # a key's bytes, not \u escapes
        self.stats.sent += 1
        if address is not None:
            self.host.send_frame(MessageType.KEYRING, body.encode(), address, piggyback=False, key=key,
                                 seal=True)
        else:
            self.host.send_to(MessageType.KEYRING, body.encode(), member, piggyback=False, seal=True)

    def _send_ack(self, member: str, address: Address, key: MeshKey) -> None:
        version, origin, digest = self._rank()
        body = json.dumps({"ack": version, "o": origin, "d": digest}, separators=(",", ":"),
                          ensure_ascii=False)
        self.host.send_frame(MessageType.KEYRING, body.encode(), address, piggyback=False, key=key, seal=True)

    def on_frame(self, frame, addr: Address, key: MeshKey, sealed: bool) -> None:
        """A KEYRING frame (node.py hands it with the key that opened it)."""
        if not sealed:
            raise WireError("keyring_unsealed", f"from {frame.sender}")
        message = _parse(frame.body)
        if "ack" in message:
            step = self._step
            if (step is not None and (message["ack"], message["d"]) == (step.version, step.digest)
                    and frame.sender in step.pending):
                step.pending.discard(frame.sender)
                self.stats.acked += 1
                if not step.pending:
                    step.done.set()
            return
        theirs = (message["v"], message["o"], ring_digest(message["k"]))
        ours = self._rank()
        if theirs > ours:
            self.stats.adopted += 1
            step = self._step
            if step is not None:  # ours is superseded: stop waiting for it
                step.pending.clear()
                step.done.set()
            self._apply(message["v"], message["o"], [k.encode("utf-8") for k in message["k"]])
            self._send_ack(frame.sender, addr, key)
        elif theirs == ours:
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WireError("keyring_malformed", "not JSON") from None
    if not isinstance(message, dict):
        raise WireError("keyring_malformed", "not an object")
    origin = message.get("o")
    if not isinstance(origin, str) or len(origin.encode("utf-8", "surrogatepass")) > NODE_ID_MAX_BYTES:
        raise WireError("keyring_malformed", "origin")
    if "ack" in message:
        if (set(message) != {"ack", "o", "d"} or type(message["ack"]) is not int
                or not isinstance(message["d"], str)):
            raise WireError("keyring_malformed", "acknowledgement")
        return message
    version, keys = message.get("v"), message.get("k")
    if (set(message) != {"v", "o", "k"} or type(version) is not int or version < 0
            or not isinstance(keys, list)):
        raise WireError("keyring_malformed", "fields")
    try:
        check_keyring(keys)
    except (ValueError, UnicodeEncodeError) as exc:
        raise WireError("keyring_malformed", str(exc)) from None
    return message


__all__ = ["CATCH_UP_EVERY_S", "KeyRotation", "KeyringHandler", "RotationStats", "ring_digest"]
