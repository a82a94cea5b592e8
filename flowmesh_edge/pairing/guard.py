"""The accepting member's front door: one attempt at a time, rate-limited, locked after failures.

Every datagram that reaches a member accepting pairing goes through
:meth:`PairingGuard.receive` (pure: no I/O, an injected clock), which answers
with the datagrams to send. What it decides, in this order, before any
X25519 work is done for a new attempt (a COMMIT):

1. it parses (anything else is ``not_pairing`` or ``malformed``);
2. its session is not one that ended (``replayed``), nor another while one is
   in progress (``busy``, answered with an ABORT so the honest sender knows);
3. the member is not locked out: ``lockout_after`` attempts in a row whose
   code was shown but never confirmed by both (a user said no, or a side went
   silent), or whose reveal broke its commitment, lock pairing for
   ``lockout_s`` (``locked_out``);
4. at most ``max_starts`` attempts started in the last ``window_s`` seconds
   (``rate_limited``).

So a flood of requests costs a parse and a few counters each, and a man in
the middle gets ``lockout_after`` guesses (1 in 10^6 each) per ``lockout_s``,
and ``max_starts`` attempts per ``window_s``. Every refusal is counted in
``refused`` by reason (the sessions' own refusals too).

DISCOVER ("who accepts pairing?") is answered with an OFFER, at most
``offers_per_s`` a second (``offer_limited`` beyond), never larger than
the question allows (see protocol.OFFER_MAX).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Hashable

from .protocol import (
    PAIRING_TIMEOUT_S,
    Credentials,
    Crypto,
    Kind,
    Offer,
    Reason,
    Refused,
    Responder,
    abort_message,
    decode,
)

#: Defaults: attempts started per window, the window (s), failed codes in a row before
#: the lockout, its length (s), DISCOVER answers a second, ended sessions remembered.
MAX_STARTS = 5
WINDOW_S = 60.0
LOCKOUT_AFTER = 3
LOCKOUT_S = 300.0
OFFERS_PER_S = 10
REMEMBERED_SESSIONS = 256

Reply = tuple[bytes, Hashable]


class PairingGuard:
    """One member's pairing front door. ``source`` values are whatever the transport
    reports (an :class:`~flowmesh_edge.mesh.address.Address`), compared for equality:
    an attempt is bound to the source of its COMMIT."""

    def __init__(self, node_id: str, credentials: Credentials, offer: Offer | None = None, *,
                 crypto: Crypto | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = PAIRING_TIMEOUT_S, max_starts: int = MAX_STARTS,
                 window_s: float = WINDOW_S, lockout_after: int = LOCKOUT_AFTER,
                 lockout_s: float = LOCKOUT_S, offers_per_s: int = OFFERS_PER_S):
        self.node_id = node_id
        self.credentials = credentials
        self.offer = offer or Offer(node_id, credentials.name)
        self.crypto = crypto or Crypto()
        self.clock = clock
        self.timeout_s = timeout_s
        self.max_starts, self.window_s = max_starts, window_s
        self.lockout_after, self.lockout_s = lockout_after, lockout_s
        self.offers_per_s = offers_per_s
        #: Refusals by reason, the guard's and its sessions'.
        self.refused: Counter[str] = Counter()
        self.started = 0  #: attempts started (a key pair made for each)
        self.offers = 0   #: DISCOVERs answered
        self.failures_in_row = 0
        self.locked_until = float("-inf")
        #: The attempt in progress, and where its COMMIT came from.
        self.session: Responder | None = None
        self.source: Hashable | None = None
        #: Attempts that ended, oldest first (the channel reports them).
        self.ended: list[Responder] = []
        self._last: tuple[Responder, Hashable] | None = None
        self._starts: deque[float] = deque()
        self._known: deque[bytes] = deque(maxlen=REMEMBERED_SESSIONS)
        self._offer_second, self._offers_this_second = -1, 0

    @property
    def locked(self) -> bool:
        return self.clock() < self.locked_until

    def receive(self, data: bytes, source: Hashable) -> list[Reply]:
        """Handle one datagram; the datagrams to send. Never raises."""
        try:
            message = decode(data)
        except Refused as refused:
            return self._refuse(refused.reason)
        now = self.clock()
        replies = self.tick()
        if message.kind is Kind.DISCOVER:
            return replies + self._answer_discover(message, source, now)
        if message.kind is Kind.OFFER:
            return replies + self._refuse(Reason.OUT_OF_ORDER)
        current = self.session
        if current is not None and message.session == current.session:
            if source != self.source:
                return replies + self._refuse(Reason.OTHER_SOURCE)
            return replies + self._deliver(current, source, message, data, now)
        if self._last is not None and message.session == self._last[0].session and source == self._last[1]:
            # the attempt that just ended: its last message again is answered as before
            return replies + self._deliver(self._last[0], source, message, data, now)
        if message.kind is not Kind.COMMIT:
            return replies + self._refuse(
                Reason.REPLAYED if message.session in self._known else Reason.UNKNOWN_SESSION)
        if message.session in self._known:
            return replies + self._refuse(Reason.REPLAYED)
        reason = None
        if current is not None:
            reason = Reason.BUSY
        elif now < self.locked_until:
            reason = Reason.LOCKED_OUT
        else:
            while self._starts and self._starts[0] <= now - self.window_s:
                self._starts.popleft()
            if len(self._starts) >= self.max_starts:
                reason = Reason.RATE_LIMITED
        if reason is not None:
            self.refused[reason] += 1
            return replies + [(abort_message(message.session, 0, reason), source)]
        responder = Responder(self.node_id, self.credentials, crypto=self.crypto, now=now,
                              timeout_s=self.timeout_s)
        try:
            answer = responder.start(message, data)  # parses before it makes a key
        except Refused as refused:
            return replies + self._refuse(refused.reason)
        responder.source = source
        self.started += 1
        self._starts.append(now)
        self._known.append(message.session)
        self.session, self.source = responder, source
        return replies + [(d, source) for d in answer]

    def tick(self) -> list[Reply]:
        """Time passing: the attempt in progress aborts when its step runs out of time."""
        if self.session is None:
            return []
        source = self.source
        aborts = self.session.tick(self.clock())
        self._settle()
        return [(d, source) for d in aborts]

    def user_confirmed(self) -> list[Reply]:
        """The member's user says the codes match."""
        return self._act(lambda session: session.user_confirmed())

    def user_rejected(self) -> list[Reply]:
        return self._act(lambda session: session.user_rejected())

    def retransmit(self) -> list[Reply]:
        if self.session is None:
            return []
        return [(d, self.source) for d in self.session.retransmit]

    def _act(self, action: Callable[[Responder], list[bytes]]) -> list[Reply]:
        if self.session is None:
            return []
        source = self.source
        out = action(self.session)
        self._settle()
        return [(d, source) for d in out]

    def _deliver(self, session: Responder, source: Hashable, message, data: bytes, now: float) -> list[Reply]:
        outcome = session.receive(message, data, now)
        if outcome.refused:
            self.refused[outcome.refused] += 1
        self._settle()
        return [(d, source) for d in outcome.replies]

    def _settle(self) -> None:
        """An attempt that ended frees the door, and counts towards the lockout."""
        session = self.session
        if session is None or not session.finished:
            return
        if session.succeeded:
            self.failures_in_row = 0
        elif session.code is not None or session.failure == Reason.COMMITMENT_MISMATCH:
            self.failures_in_row += 1
            if self.failures_in_row >= self.lockout_after:
                self.locked_until = self.clock() + self.lockout_s
                self.failures_in_row = 0
        self._last = (session, self.source)
        self.ended.append(session)
        self.session = self.source = None

    def _answer_discover(self, message, source: Hashable, now: float) -> list[Reply]:
        second = int(now)
        if second != self._offer_second:
            self._offer_second, self._offers_this_second = second, 0
        if self._offers_this_second >= self.offers_per_s:
            return self._refuse("offer_limited")
        try:
            answer = self.offer.encode(message.session)
        except ValueError:  # a name too long to fit OFFER_MAX: not found by broadcast
            return self._refuse("offer_too_large")
        self._offers_this_second += 1
        self.offers += 1
        return [(answer, source)]

    def _refuse(self, reason: str) -> list[Reply]:
        self.refused[reason] += 1
        return []
