"""Running pairing over one of the mesh's datagram transports (UDP, WebSocket, BLE).

Every pairing message fits one datagram, so any
:class:`~flowmesh_edge.mesh.transport.Transport` carries it: the accepting
member listens (``accept``), the new device sends to the member's address
(``pair``). The state machines (protocol.py) and the guard (guard.py) decide
everything; this module only moves datagrams, keeps time and asks the users.

Datagrams get lost (UDP, BLE): the side waiting for an answer sends its last
message again after RESEND_AFTER_S (at most len(RESEND_AFTER_S) times per
step), and the other side answers a repeated message with its last answer.
The users are asked (``ask(code, peer_node)``, a coroutine) while messages
keep flowing: an ABORT from the other side, or a timeout, cancels the
question.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..mesh.address import Address
from ..mesh.transport import Transport
from .guard import PairingGuard
from .protocol import (
    PAIRING_TIMEOUT_S,
    Credentials,
    Crypto,
    Initiator,
    Reason,
    Refused,
    Responder,
    decode,
    explain,
)

log = logging.getLogger("flowmesh_edge.pairing")

#: Seconds before each retransmission of a step that is not answered (bounded: a
#: lost datagram is sent again at most this many times; the step then times out).
RESEND_AFTER_S = (0.5, 1.0, 1.0, 2.0, 2.0, 2.0)
#: Longest sleep of the loops: how late a timeout or a retransmission may be.
TICK_S = 0.2
#: Times the final DONE is sent (the new device does not wait for an answer to it).
DONE_COPIES = 3
#: What the member says when the credentials went out but no DONE came back.
UNCONFIRMED = "credentials sent; the new device did not confirm it saved them"

#: ``ask(code, peer_node)``: show the code, return whether the user says it matches.
Ask = Callable[[str, str], Awaitable[bool]]
#: ``save(credentials)``: store the mesh on the new device (raises when it cannot).
Save = Callable[[Credentials], None]


@dataclass
class PairingResult:
    """How an attempt ended, for either side."""

    ok: bool
    reason: str | None = None  #: a protocol.Reason when not ok
    detail: str = ""           #: one line for the user
    code: str | None = None
    peer_node: str | None = None
    peer_address: Address | None = None
    #: The new device's: what it received. The member's: what the new device said (DONE).
    credentials: Credentials | None = field(default=None, repr=False)
    joined: dict | None = None
    refused: dict[str, int] = field(default_factory=dict)


class Channel:
    """A transport whose received datagrams go to ``handler`` (which the pairing and
    discovery steps replace as they go)."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.handler: Callable[[bytes, Address], None] = lambda data, source: None
        self.started = False

    async def start(self) -> None:
        await self.transport.start(self._receive)
        self.started = True

    async def close(self) -> None:
        if self.started:
            self.started = False
            await self.transport.close()

    def send(self, data: bytes, address: Address) -> None:
        self.transport.send(data, address)

    def endpoints(self) -> list[Address]:
        return self.transport.endpoints()

    def _receive(self, data: bytes, source: Address) -> None:
        try:
            self.handler(data, source)
        except Exception:  # a transport's receiver must never raise
            log.exception("pairing: handling a datagram from %s failed", source)


class _Resender:
    """Sends the datagrams of a step again while they stay unanswered, a bounded number of times."""

    def __init__(self) -> None:
        self.current: list[bytes] = []
        self.count = 0
        self.next_at = 0.0

    def due(self, datagrams: list[bytes], now: float) -> list[bytes]:
        if datagrams != self.current:
            self.current, self.count, self.next_at = list(datagrams), 0, now + RESEND_AFTER_S[0]
            return []
        if not self.current or self.count >= len(RESEND_AFTER_S) or now < self.next_at:
            return []
        self.count += 1
        self.next_at = now + RESEND_AFTER_S[min(self.count, len(RESEND_AFTER_S) - 1)]
        return self.current


async def _asked(ask: Ask, code: str, peer: str) -> bool:
    try:
        return bool(await ask(code, peer))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # stdin closed, a broken prompt: not a yes
        log.info("pairing: asking the user failed: %s", exc)
        return False


async def accept(channel: Channel, guard: PairingGuard, ask: Ask, *,
                 timeout_s: float = PAIRING_TIMEOUT_S,
                 on_refused_attempt: Callable[[Responder], None] | None = None) -> PairingResult:
    """Wait up to ``timeout_s`` for a request and see it through. Attempts that end
    before any code is shown (a broken commitment, a sender that went silent) are
    counted by the guard and the wait goes on; the first attempt whose code was shown
    ends the call, successful or not. The channel must be started."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    guard.clock = loop.time

    def receive(data: bytes, source: Address) -> None:
        for reply, destination in guard.receive(data, source):
            channel.send(reply, destination)
        wake.set()

    channel.handler = receive
    deadline = loop.time() + timeout_s
    asking: asyncio.Task | None = None
    asked: Responder | None = None
    reported = len(guard.ended)
    resender = _Resender()
    try:
        while True:
            for reply, destination in guard.tick():
                channel.send(reply, destination)
            while reported < len(guard.ended):
                ended, reported = guard.ended[reported], reported + 1
                if ended.code is not None:
                    return _result(ended, guard.refused)
                log.info("pairing: an attempt from %s ended before a code was shown: %s",
                         ended.peer_node, ended.failure if ended.failure != Reason.PEER_ABORTED
                         else f"it gave up ({ended.peer_reason})")
                if on_refused_attempt is not None:
                    on_refused_attempt(ended)
            if asking is not None and asking.done():
                yes, asking = asking.result(), None
                for reply, destination in guard.user_confirmed() if yes else guard.user_rejected():
                    channel.send(reply, destination)
                continue
            session = guard.session
            if session is not None and session.phase == "comparing" and asked is not session:
                asked = session
                asking = asyncio.create_task(_asked(ask, session.code, session.peer_node),
                                             name="pairing-ask")
                asking.add_done_callback(lambda _task: wake.set())
            now = loop.time()
            for datagram in resender.due(guard.session.retransmit if guard.session else [], now):
                channel.send(datagram, guard.source)
            if guard.session is None and now >= deadline:
                return PairingResult(False, Reason.TIMEOUT,
                                     f"no pairing request within {timeout_s:g} s",
                                     refused=dict(guard.refused))
            await _nap(wake)
    finally:
        await _hang_up(channel, asking)


async def _nap(wake: asyncio.Event) -> None:
    """Until something happens (a datagram, the user's answer), or TICK_S."""
    wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TICK_S):
            await wake.wait()


async def _hang_up(channel: Channel, asking: asyncio.Task | None) -> None:
    """Stop listening, and stop asking the user."""
    channel.handler = lambda data, source: None
    if asking is not None:
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking


def _result(session: Responder | Initiator, refused) -> PairingResult:
    if session.succeeded:
        return PairingResult(True, detail=UNCONFIRMED if session.phase == "unconfirmed" else "",
                             code=session.code, peer_node=session.peer_node,
                             peer_address=getattr(session, "source", None),
                             credentials=getattr(session, "credentials", None),
                             joined=getattr(session, "joined", None), refused=dict(refused))
    return PairingResult(False, session.failure, _why(session), code=session.code,
                         peer_node=session.peer_node, peer_address=getattr(session, "source", None),
                         refused=dict(refused))


def _why(session: Responder | Initiator) -> str:
    if session.failure == Reason.PEER_ABORTED:
        return f"the other device ended the pairing: {explain(session.peer_reason or 'unknown')}"
    return explain(session.failure or "unknown")


async def pair(channel: Channel, address: Address, node_id: str, ask: Ask, save: Save, *,
               timeout_s: float = PAIRING_TIMEOUT_S, mesh_endpoints: list[str] | None = None,
               crypto: Crypto | None = None) -> PairingResult:
    """Pair with the member at ``address``: commit, compare codes, receive and ``save``
    the credentials, say DONE. The channel must be started."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    initiator = Initiator(node_id, crypto=crypto, now=loop.time(), timeout_s=timeout_s,
                          mesh_endpoints=mesh_endpoints)

    def receive(data: bytes, source: Address) -> None:
        if source != address:
            initiator.refused[Reason.OTHER_SOURCE] += 1
            return
        try:
            message = decode(data)
        except Refused as refused:
            initiator.refused[refused.reason] += 1
            return
        for reply in initiator.receive(message, data, loop.time()).replies:
            channel.send(reply, address)
        wake.set()

    channel.handler = receive
    asking: asyncio.Task | None = None
    resender = _Resender()
    channel.send(initiator.start(), address)
    try:
        while True:
            for reply in initiator.tick(loop.time()):
                channel.send(reply, address)
            if initiator.phase == "aborted":
                if initiator.failure == Reason.TIMEOUT and initiator.code is None:
                    return PairingResult(False, Reason.TIMEOUT, f"no answer from {address}",
                                         refused=dict(initiator.refused))
                return _result(initiator, initiator.refused)
            if initiator.phase == "received":
                return await _store(initiator, save, channel, address)
            if asking is not None and asking.done():
                yes, asking = asking.result(), None
                for reply in initiator.user_confirmed() if yes else initiator.user_rejected():
                    channel.send(reply, address)
                continue
            if initiator.phase == "comparing" and asking is None and initiator.code is not None:
                asking = asyncio.create_task(_asked(ask, initiator.code, initiator.peer_node or "?"),
                                             name="pairing-ask")
                asking.add_done_callback(lambda _task: wake.set())
            for datagram in resender.due(initiator.retransmit, loop.time()):
                channel.send(datagram, address)
            await _nap(wake)
    finally:
        await _hang_up(channel, asking)


async def _store(initiator: Initiator, save: Save, channel: Channel, address: Address) -> PairingResult:
    """The credentials are in: save them, then say DONE (or abort when they cannot be saved)."""
    assert initiator.credentials is not None
    try:
        save(initiator.credentials)
    except Exception as exc:
        for reply in initiator.abort(Reason.SAVE_FAILED):
            channel.send(reply, address)
        return PairingResult(False, Reason.SAVE_FAILED, f"the mesh could not be saved: {exc}",
                             code=initiator.code, peer_node=initiator.peer_node)
    (done,) = initiator.saved()
    for copy in range(DONE_COPIES):  # nothing answers a DONE: a lost one is sent again
        channel.send(done, address)
        if copy + 1 < DONE_COPIES:
            await asyncio.sleep(0.1)
    result = _result(initiator, initiator.refused)
    result.credentials = initiator.credentials
    return result
