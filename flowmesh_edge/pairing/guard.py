"""The accepting member's front door: one attempt at a time, rate-limited, locked after failures.

Every datagram that reaches a member accepting pairing goes through
:meth:`PairingGuard.receive` (pure: no I/O, an injected clock), which answers
with the datagrams to send. What it decides, in this order, before any
X25519 work is done for a new attempt (a COMMIT):

1. it parses (anything else is ``not_pairing`` or ``malformed``);
2. its session is not one that ended (``replayed``);
3. it echoes a valid cookie: a COMMIT without one is answered with a RETRY
   carrying one (an HMAC under a per-process random secret of the source, the
   session and a coarse time: no state is kept), a wrong or stale one too
   (``bad_cookie``). A forged source never hears the cookie, so it can neither
   start an attempt nor hold the door;
4. no other attempt is in progress (``busy``, answered with an ABORT so the
   honest sender knows);
5. the member is not locked out: ``lockout_after`` attempts in a row whose
   code was shown but never confirmed by both (a user said no, or a side went
   silent) lock pairing for ``lockout_s`` (``locked_out``). A reveal that
   breaks its commitment ends its attempt (``commitment_mismatch``, counted)
   but not towards the lockout: no code was shown, nothing was guessed;
6. at most ``max_starts`` attempts started in the last ``window_s`` seconds,
   and at most ``max_starts_per_source`` from one host (``rate_limited``).

So a flood of requests costs a parse, an HMAC and a few counters each, and a
man in the middle gets ``lockout_after`` guesses (1 in 10^6 each) per
``lockout_s``, and ``max_starts`` attempts per ``window_s``. An attempt that
never reveals holds the door protocol.REVEAL_TIMEOUT_S. Every refusal is
counted in ``refused`` by reason (the sessions' own refusals too).

DISCOVER ("who accepts pairing?") is answered with an OFFER, at most
``offers_per_s`` a second (``offer_limited`` beyond), never larger than the
DISCOVER itself; a DISCOVER not padded to protocol.DISCOVER_SIZE is refused
(``short_discover``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable

from .protocol import (
    COOKIE_BYTES,
    DISCOVER_SIZE,
    DONE_WAIT_S,
    PAIRING_TIMEOUT_S,
    Credentials,
    Crypto,
    Kind,
    Offer,
    Reason,
    Refused,
    Responder,
    abort_message,
    commit_parts,
    decode,
    retry_message,
)

#: Defaults: attempts started per window, the window (s), failed codes in a row before
#: the lockout, its length (s), DISCOVER answers a second, ended sessions remembered.
MAX_STARTS = 5
MAX_STARTS_PER_SOURCE = 3
WINDOW_S = 60.0
LOCKOUT_AFTER = 3
LOCKOUT_S = 300.0
OFFERS_PER_S = 10
REMEMBERED_SESSIONS = 256
#: A cookie is valid in the COOKIE_S-long slot it was made in and the next one.
COOKIE_S = 30.0

Reply = tuple[bytes, Hashable]


class PairingGuard:
    """One member's pairing front door. ``source`` values are whatever the transport
    reports (an :class:`~flowmesh_edge.mesh.address.Address`), compared for equality:
    an attempt is bound to the source of its COMMIT."""

    def __init__(self, node_id: str, credentials: Credentials, offer: Offer | None = None, *,
                 crypto: Crypto | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = PAIRING_TIMEOUT_S, max_starts: int = MAX_STARTS,
                 window_s: float = WINDOW_S, lockout_after: int = LOCKOUT_AFTER,
                 lockout_s: float = LOCKOUT_S, offers_per_s: int = OFFERS_PER_S,
                 max_starts_per_source: int = MAX_STARTS_PER_SOURCE, done_wait_s: float = DONE_WAIT_S):
        self.node_id = node_id
        self.credentials = credentials
        self.offer = offer or Offer(node_id, credentials.name)
        self.crypto = crypto or Crypto()
        self.clock = clock
        self.timeout_s = timeout_s
        self.max_starts, self.window_s = max_starts, window_s
        self.max_starts_per_source = max_starts_per_source
        self.done_wait_s = done_wait_s
        self.lockout_after, self.lockout_s = lockout_after, lockout_s
        self.offers_per_s = offers_per_s
        #: Refusals by reason, the guard's and its sessions'.
        self.refused: Counter[str] = Counter()
        self.started = 0  #: attempts started (a key pair made for each)
        self.offers = 0   #: DISCOVERs answered
        self.retries = 0  #: COMMITs without a cookie, answered with a RETRY
        self.failures_in_row = 0
        self.locked_until = float("-inf")
        #: The attempt in progress, and where its COMMIT came from.
        self.session: Responder | None = None
        self.source: Hashable | None = None
        #: Attempts that ended, oldest first (the channel reports them).
        self.ended: list[Responder] = []
        self._last: tuple[Responder, Hashable] | None = None
        self._starts: deque[float] = deque()
        self._starts_by_host: dict[Hashable, deque[float]] = {}
        self._secret = os.urandom(32)  # per process: cookies need no state and die with it
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
            return replies + self._answer_discover(message, source, now, len(data))
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
        try:
            cookie = commit_parts(message)[2]
        except Refused as refused:
            return replies + self._refuse(refused.reason)
        if cookie is None or not self._cookie_valid(cookie, source, message.session, now):
            # prove you hear us first: nothing is kept, no key made, the door stays free
            if cookie is None:
                self.retries += 1
            else:
                self.refused[Reason.BAD_COOKIE] += 1
            return replies + [(retry_message(message.session, self._cookie(source, message.session, now)),
                               source)]
        host = _host_of(source)
        reason = None
        if current is not None:
            reason = Reason.BUSY
        elif now < self.locked_until:
            reason = Reason.LOCKED_OUT
        else:
            _forget_before(self._starts, now - self.window_s)
            for known in list(self._starts_by_host):
                if not _forget_before(self._starts_by_host[known], now - self.window_s):
                    del self._starts_by_host[known]
            if len(self._starts) >= self.max_starts or \
                    len(self._starts_by_host.get(host, ())) >= self.max_starts_per_source:
                reason = Reason.RATE_LIMITED
        if reason is not None:
            self.refused[reason] += 1
            return replies + [(abort_message(message.session, 0, reason), source)]
        responder = Responder(self.node_id, self.credentials, crypto=self.crypto, now=now,
                              timeout_s=self.timeout_s)
        responder.done_wait_s = self.done_wait_s
        try:
            answer = responder.start(message, data)  # parses before it makes a key
        except Refused as refused:
            return replies + self._refuse(refused.reason)
        responder.source = source
        self.started += 1
        self._starts.append(now)
        self._starts_by_host.setdefault(host, deque()).append(now)
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
        return self._act(lambda session: session.user_confirmed(self.clock()))

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
        """An attempt that ended frees the door; one whose code was shown and then failed
        counts towards the lockout (only those: anything earlier, a broken commitment
        too, guessed nothing and may come from anyone)."""
        session = self.session
        if session is None or not session.finished:
            return
        if session.succeeded:
            self.failures_in_row = 0
        elif session.code is not None:
            self.failures_in_row += 1
            if self.failures_in_row >= self.lockout_after:
                self.locked_until = self.clock() + self.lockout_s
                self.failures_in_row = 0
        self._last = (session, self.source)
        self.ended.append(session)
        self.session = self.source = None

    def _cookie(self, source: Hashable, session: bytes, now: float, slots_ago: int = 0) -> bytes:
        slot = int(now // COOKIE_S) - slots_ago
        mac = hmac.new(self._secret, slot.to_bytes(8, "big", signed=True) + session + str(source).encode(),
                       hashlib.sha256)
        return mac.digest()[:COOKIE_BYTES]

    def _cookie_valid(self, cookie: bytes, source: Hashable, session: bytes, now: float) -> bool:
        return any(hmac.compare_digest(cookie, self._cookie(source, session, now, ago)) for ago in (0, 1))

    def _answer_discover(self, message, source: Hashable, now: float, size: int) -> list[Reply]:
        if size < DISCOVER_SIZE:  # the answer must never be larger than the question
            return self._refuse(Reason.SHORT_DISCOVER)
        second = int(now)
        if second != self._offer_second:
            self._offer_second, self._offers_this_second = second, 0
        if self._offers_this_second >= self.offers_per_s:
            return self._refuse("offer_limited")
        try:
            answer = self.offer.encode(message.session, limit=size)
        except ValueError:  # a name too long to fit: not found by broadcast
            return self._refuse("offer_too_large")
        self._offers_this_second += 1
        self.offers += 1
        return [(answer, source)]

    def _refuse(self, reason: str) -> list[Reply]:
        self.refused[reason] += 1
        return []


def _host_of(source: Hashable) -> Hashable:
    """Who sent, for the per-source quota: the host without the port (nor a WebSocket
    connection's suffix), so that changing ports does not buy more attempts."""
    host = getattr(source, "host", None)
    return source if host is None else str(host).split("#", 1)[0]


def _forget_before(times: deque[float], cutoff: float) -> int:
    """Drop the times at or before ``cutoff`` (oldest first); how many are left."""
    while times and times[0] <= cutoff:
        times.popleft()
    return len(times)
