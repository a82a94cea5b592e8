"""Proximity pairing: the messages and the two state machines, pure code (no I/O).

A new device (the *initiator*) joins a mesh through one of its members (the
*responder*, which accepts pairing). Both screens show a 6-digit code; once
both users say it matches, the responder sends the mesh's credentials over a
channel only the two of them can read. Every message is one datagram::

    7   magic b"FMPAIR1" (never a mesh frame: those start with their wire version, 4 or 5)
    u8  kind (Kind)
    16  session id (chosen by the initiator, fresh for every attempt; a query id for DISCOVER/OFFER)
    u8  step (STEP[kind]; an ABORT carries the step its sender had reached)
        body, by kind:

    COMMIT       I->R  32 commitment, str initiator node id, [16 cookie] (echoed from RETRY)
    RETRY        R->I  16 cookie                      (a COMMIT without a valid cookie gets this)
    RESPONSE     R->I  32 responder X25519 public key, 16 nonce, str responder node id
    REVEAL       I->R  32 initiator X25519 public key, 16 nonce
    READY        R->I  sealed ""                       (the responder shows the code; again at its user's yes)
    CONFIRM      I->R  sealed "confirmed"              (the initiator's user confirmed)
    CREDENTIALS  R->I  u8 part, u8 parts, sealed chunk (of the credentials' compact JSON)
    DONE         I->R  sealed {"node": .., "endpoints": [..]} (saved; where the new device will listen)
    ABORT        both  str reason
    DISCOVER     any   zero padding to DISCOVER_SIZE ("who accepts pairing?"; shorter is refused)
    OFFER        R     compact JSON {"node": .., "mesh": name, "endpoints": [..]}, never longer
                       than the DISCOVER it answers

``str`` is u8 length + UTF-8. Sealed is ChaCha20-Poly1305 under the session
key, the header (and part numbers) as associated data, and a nonce of the
direction and a counter fixed by the message (READY 0, CREDENTIALS part i
1+i; CONFIRM 0, DONE 1): a sealed message cannot be moved to another place
or direction, and a retransmission is byte-identical.

Why commit-then-reveal: a code derived from the two public keys alone lets a
man in the middle who sees one key grind about a million key pairs until both
codes agree. Here the initiator commits (COMMIT = SHA-256 of its public key
and a fresh nonce) before it sees the responder's key and nonce, and the
responder shows its key and nonce before it sees the initiator's: whoever
sits in the middle must fix its own values before learning the honest side's
fresh ones, so each attempt matches with probability 1 in 10^6, as in
Bluetooth LE numeric comparison and ZRTP. The code is an HMAC, labelled
"code", of the transcript (session id, roles, node ids, both keys, both
nonces); the session key is HKDF-SHA256 of the X25519 shared secret with the
transcript's hash as salt and another label. Fresh keys and nonces every attempt.

Why a cookie: a COMMIT costs the member a key pair and holds its one door for
a while, so it must come from an address that can hear the member. The member
answers a COMMIT that does not echo a valid cookie with a RETRY (smaller than
the COMMIT) whose cookie is an HMAC, under a per-process random secret, of the
source address, the session id and a coarse time; it keeps no state for it.
Only a COMMIT echoing a valid cookie opens an attempt (guard.py).

Whatever is refused (a message out of order, of another session, replayed, a
seal that does not open, a reveal that does not match its commitment) is
counted in ``refused`` by reason and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flowmesh.limits import node_id_problem

from ..mesh.keyring import check_keyring
from . import PAIRING_TIMEOUT_S

MAGIC = b"FMPAIR1"
HEADER = struct.Struct("!7sB16sB")
SESSION_BYTES = 16
NONCE_BYTES = 16
KEY_BYTES = 32
TAG_BYTES = 16
#: A DISCOVER is padded to this size (a shorter one is refused) and an OFFER is kept
#: within OFFER_MAX, no larger: an answer to a forged source address is never larger
#: than the question (no amplification).
OFFER_MAX = 512
DISCOVER_SIZE = OFFER_MAX
#: An OFFER lists at most this many endpoints, each at most ENDPOINT_MAX_CHARS long
#: (DONE too).
MAX_ENDPOINTS = 16
ENDPOINT_MAX_CHARS = 300
#: The return-routability cookie of RETRY, echoed in COMMIT.
COOKIE_BYTES = 16
#: The credentials are cut into parts of at most this many bytes, at most MAX_PARTS of
#: them: every message fits one mesh datagram (1400 bytes, wire.MAX_DATAGRAM).
PART_BYTES = 1024
MAX_PARTS = 8
#: Seconds a step before the code is shown may wait for the other side's next message
#: (the channel retransmits within it); the comparison itself has the caller's timeout.
STEP_TIMEOUT_S = 10.0
#: Seconds the member waits for the REVEAL once it answered a COMMIT: the door is busy
#: meanwhile, so this is short (the new device reveals as soon as it hears the answer).
REVEAL_TIMEOUT_S = 3.0
#: Seconds the member keeps sending the credentials again, waiting for DONE, counted
#: from when it first sent them; then it reports them sent but not confirmed.
DONE_WAIT_S = 10.0
CODE_DIGITS = 6

_LABEL = b"flowmesh pairing v1"
_COMMIT_LABEL = _LABEL + b" commit\x00"
_CODE_LABEL = _LABEL + b" code"
_KEY_LABEL = _LABEL + b" session key"
_INITIATOR, _RESPONDER = 1, 2  # nonce direction bytes: who seals
_CONFIRMED = b"confirmed"
_REASON = re.compile(r"[a-z_]{1,32}")


class Kind(IntEnum):
    DISCOVER = 1
    OFFER = 2
    COMMIT = 16
    RESPONSE = 17
    REVEAL = 18
    READY = 19
    CONFIRM = 20
    CREDENTIALS = 21
    DONE = 22
    RETRY = 23
    ABORT = 31


STEP = {Kind.DISCOVER: 0, Kind.OFFER: 0, Kind.COMMIT: 1, Kind.RESPONSE: 2, Kind.REVEAL: 3,
        Kind.READY: 4, Kind.CONFIRM: 5, Kind.CREDENTIALS: 6, Kind.DONE: 7, Kind.RETRY: 1}


class Reason:
    """Why a message was refused or an attempt ended (the names counted in ``refused``)."""

    NOT_PAIRING = "not_pairing"            # not a pairing message at all
    MALFORMED = "malformed"                # a pairing message that does not parse
    OTHER_SESSION = "other_session"        # of another attempt than ours
    UNKNOWN_SESSION = "unknown_session"    # of no attempt the responder knows
    OTHER_SOURCE = "other_source"          # our session id, from another address
    REPLAYED = "replayed"                  # seen before (or of an attempt that ended)
    DUPLICATE = "duplicate"                # the last message again (a retransmission)
    OUT_OF_ORDER = "out_of_order"          # a step that does not come now
    BAD_SEAL = "bad_seal"                  # a sealed message that does not open
    BAD_KEY = "bad_key"                    # a public key that gives no shared secret
    COMMITMENT_MISMATCH = "commitment_mismatch"  # a reveal that is not what was committed
    BAD_CREDENTIALS = "bad_credentials"    # credentials that make no sense
    BAD_COOKIE = "bad_cookie"              # a COMMIT echoing a cookie that is not valid
    SHORT_DISCOVER = "short_discover"      # a DISCOVER not padded to DISCOVER_SIZE
    BUSY = "busy"                          # another attempt is in progress
    RATE_LIMITED = "rate_limited"          # too many attempts started lately
    LOCKED_OUT = "locked_out"              # too many failed codes in a row
    REJECTED = "rejected"                  # a user said the codes differ
    TIMEOUT = "timeout"                    # the other side or a user took too long
    PEER_ABORTED = "peer_aborted"          # the other side ended the attempt
    SAVE_FAILED = "save_failed"            # the new device could not save the mesh


#: What a user is told when an attempt ends, by reason.
EXPLAINED = {
    Reason.REJECTED: "a user said the codes do not match",
    Reason.TIMEOUT: "no answer in time",
    Reason.BUSY: "the member is pairing another device; try again in a minute",
    Reason.RATE_LIMITED: "the member has seen too many pairing attempts lately; try again later",
    Reason.LOCKED_OUT: "the member stopped pairing after several failed codes; try again later",
    Reason.COMMITMENT_MISMATCH: "the other side's key does not match its commitment (an attack?)",
    Reason.BAD_CREDENTIALS: "the credentials received make no sense",
    Reason.SAVE_FAILED: "the new device could not save the mesh",
    Reason.BAD_KEY: "the other side sent an unusable key",
}


def explain(reason: str) -> str:
    return EXPLAINED.get(reason, reason.replace("_", " "))


class Refused(Exception):
    """A message refused, or an attempt ended, for ``reason`` (one of :class:`Reason`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


# -- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    kind: Kind
    session: bytes
    step: int
    body: bytes

    @property
    def header(self) -> bytes:
        return HEADER.pack(MAGIC, self.kind, self.session, self.step)


def is_pairing(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def encode(kind: Kind, session: bytes, body: bytes = b"", step: int | None = None) -> bytes:
    if len(session) != SESSION_BYTES:
        raise ValueError("a session id is 16 bytes")
    return HEADER.pack(MAGIC, kind, session, STEP[kind] if step is None else step) + body


def decode(data: bytes) -> Message:
    """Bytes -> Message (the header checked, the body not yet); Refused when not one."""
    if not is_pairing(data):
        raise Refused(Reason.NOT_PAIRING)
    if len(data) < HEADER.size:
        raise Refused(Reason.MALFORMED, "shorter than a header")
    _, kind, session, step = HEADER.unpack_from(data)
    try:
        kind = Kind(kind)
    except ValueError:
        raise Refused(Reason.MALFORMED, f"unknown kind {kind}") from None
    if kind is not Kind.ABORT and step != STEP[kind]:
        raise Refused(Reason.MALFORMED, f"{kind.name} at step {step}")
    return Message(kind, session, step, data[HEADER.size:])


class _Reader:
    """Reads a body field by field; anything missing or left over is MALFORMED."""

    def __init__(self, body: bytes):
        self.body, self.at = body, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.body):
            raise Refused(Reason.MALFORMED, "body too short")
        out = self.body[self.at:self.at + n]
        self.at += n
        return out

    def text(self) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(Reason.MALFORMED, "text is not UTF-8") from None

    def end(self) -> None:
        if self.at != len(self.body):
            raise Refused(Reason.MALFORMED, "trailing bytes")


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError("text field over 255 bytes")
    return bytes((len(raw),)) + raw


def _node_id(text: object) -> str:
    """A node id (flowmesh.limits' rule, the same in Postgres and on the mesh); MALFORMED otherwise."""
    if node_id_problem(text) is not None:
        raise Refused(Reason.MALFORMED, "not a node id")
    return text  # type: ignore[return-value]


def abort_message(session: bytes, step: int, reason: str) -> bytes:
    return encode(Kind.ABORT, session, _text(reason), step=step)


def abort_reason(message: Message) -> str:
    reader = _Reader(message.body)
    reason = reader.text()
    reader.end()
    if not _REASON.fullmatch(reason):
        raise Refused(Reason.MALFORMED, "abort reason")
    return reason


def printable(text: object, max_bytes: int = 255) -> bool:
    """Text safe to show on a terminal: no control characters, not empty, bounded."""
    return isinstance(text, str) and bool(text) and text.isprintable() and len(text.encode()) <= max_bytes


def _json(data: bytes) -> object:
    """Untrusted JSON; ValueError for anything that does not parse (deep nesting too)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _endpoints(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ENDPOINTS or not all(
            printable(e, ENDPOINT_MAX_CHARS) and len(e) <= ENDPOINT_MAX_CHARS for e in value):
        raise ValueError("endpoints")
    return value


def commit_parts(message: Message) -> tuple[bytes, str, bytes | None]:
    """A COMMIT's commitment, initiator node id and cookie (None when it has none)."""
    reader = _Reader(message.body)
    commit, node = reader.take(KEY_BYTES), _node_id(reader.text())
    rest = message.body[reader.at:]
    if len(rest) not in (0, COOKIE_BYTES):
        raise Refused(Reason.MALFORMED, "commit cookie")
    return commit, node, rest or None


def retry_message(session: bytes, cookie: bytes) -> bytes:
    return encode(Kind.RETRY, session, cookie)


def discover_message(query: bytes) -> bytes:
    data = encode(Kind.DISCOVER, query)
    return data + bytes(DISCOVER_SIZE - len(data))


@dataclass(frozen=True)
class Offer:
    """What an accepting member says of itself to a DISCOVER: who, which mesh, where."""

    node_id: str
    mesh_name: str
    endpoints: tuple[str, ...] = ()

    def encode(self, query: bytes, limit: int = OFFER_MAX) -> bytes:
        """The OFFER answering ``query``, at most ``limit`` bytes (ValueError when even
        without endpoints it does not fit)."""
        limit = min(limit, OFFER_MAX)
        endpoints: list[str] = []
        data = b""
        for endpoint in (*self.endpoints[:MAX_ENDPOINTS], None):  # as many endpoints as fit
            body = json.dumps({"node": self.node_id, "mesh": self.mesh_name, "endpoints": endpoints},
                              separators=(",", ":"), ensure_ascii=False).encode()
            candidate = encode(Kind.OFFER, query, body)
            if len(candidate) > limit:
                break
            data = candidate
            if endpoint is not None:
                endpoints.append(endpoint)
        if not data:
            raise ValueError(f"an offer does not fit {limit} bytes")
        return data

    @classmethod
    def decode(cls, message: Message) -> Offer:
        """The OFFER's fields, each checked: names shown to the user must be printable
        (no terminal control sequences), endpoints bounded."""
        try:
            fields = _json(message.body)
            if not isinstance(fields, dict) or set(fields) != {"node", "mesh", "endpoints"} \
                    or not isinstance(fields["node"], str) or not printable(fields["mesh"]):
                raise ValueError
            return cls(_node_id(fields["node"]), fields["mesh"], tuple(_endpoints(fields["endpoints"])))
        except (ValueError, TypeError):
            raise Refused(Reason.MALFORMED, "offer") from None


# -- credentials ---------------------------------------------------------------------------------


@dataclass
class Credentials:
    """What the responder hands over: everything a new device needs to join the mesh.
    ``repr`` never shows a key, the relay token or URL, or the device credential."""

    mesh_id: str
    name: str
    keys: list[str] = field(repr=False)  #: the keyring, primary first (mesh/keyring.py)
    keyring_version: int = 0  #: how many keyring changes the mesh has seen (rotation.py)
    encrypt: bool = True  #: whether members seal what they send
    relay_url: str | None = field(default=None, repr=False)
    relay_token: str | None = field(default=None, repr=False)
    #: The responder's mesh endpoints (Address text forms; a wildcard host means "the
    #: host pairing reached it at").
    endpoints: list[str] = field(default_factory=list)
    node_id: str = ""  #: the responder's node id
    capabilities: list[str] = field(default_factory=list)  #: its transports
    #: A database credential for the new device (``flowmesh devices add --output``), if given.
    device_credential: str | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        self.check()
        return json.dumps({
            "mesh_id": self.mesh_id, "name": self.name, "keys": self.keys,
            "keyring_version": self.keyring_version, "encrypt": self.encrypt,
            "relay_url": self.relay_url, "relay_token": self.relay_token,
            "endpoints": self.endpoints, "node_id": self.node_id, "capabilities": self.capabilities,
            "device_credential": self.device_credential,
        }, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Credentials:
        try:
            fields = _json(data)
            if not isinstance(fields, dict) or set(fields) != _CREDENTIAL_FIELDS:
                raise ValueError("unexpected fields")
            credentials = cls(**fields)
            credentials.check()
            return credentials
        except (ValueError, TypeError) as exc:
            raise Refused(Reason.BAD_CREDENTIALS, str(exc)[:80]) from None

    def check(self) -> None:
        """ValueError when a field makes no sense (never saying what a key is)."""
        if not isinstance(self.mesh_id, str) or not re.fullmatch(r"[0-9a-f]{16}", self.mesh_id):
            raise ValueError("mesh_id is not 16 hex digits")
        if not printable(self.name):  # it is shown: no terminal control characters
            raise ValueError("name")
        if not isinstance(self.keys, list):
            raise ValueError("keys is not a list")
        check_keyring(self.keys)
        if type(self.keyring_version) is not int or self.keyring_version < 0:
            raise ValueError("keyring_version")
        if not isinstance(self.encrypt, bool):
            raise ValueError("encrypt")
        for name in ("relay_url", "relay_token", "device_credential"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > 2048):
                raise ValueError(name)
        for name in ("endpoints", "capabilities"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) > 64 or \
                    not all(isinstance(v, str) and 0 < len(v) <= 300 for v in value):
                raise ValueError(name)
        if not isinstance(self.node_id, str):
            raise ValueError("node_id")
        try:
            _node_id(self.node_id)
        except Refused:
            raise ValueError("node_id") from None


_CREDENTIAL_FIELDS = {"mesh_id", "name", "keys", "keyring_version", "encrypt", "relay_url",
                      "relay_token", "endpoints", "node_id", "capabilities", "device_credential"}


# -- the cryptography ----------------------------------------------------------------------------


class Crypto:
    """Fresh key pairs and randomness, counting the X25519 operations (the costly part,
    which a flood of requests must not be able to buy). ``random_bytes`` is injectable
    so that tests are deterministic."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom):
        self.random_bytes = random_bytes
        self.x25519_operations = 0

    def key_pair(self) -> tuple[X25519PrivateKey, bytes]:
        self.x25519_operations += 1
        private = X25519PrivateKey.from_private_bytes(self.random_bytes(KEY_BYTES))
        return private, private.public_key().public_bytes_raw()

    def shared_secret(self, private: X25519PrivateKey, peer_public: bytes) -> bytes:
        self.x25519_operations += 1
        try:
            return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point: an all-zero secret
            raise Refused(Reason.BAD_KEY) from None


def commitment(session: bytes, public_key: bytes, nonce: bytes) -> bytes:
    return hashlib.sha256(_COMMIT_LABEL + session + public_key + nonce).digest()


def transcript(session: bytes, initiator: str, commit: bytes, initiator_key: bytes, initiator_nonce: bytes,
               responder: str, responder_key: bytes, responder_nonce: bytes) -> bytes:
    """Everything both sides agreed on, each field labelled by role and length-prefixed."""
    parts = [_LABEL, session]
    for label, value in ((b"initiator node", initiator.encode()), (b"initiator commitment", commit),
                         (b"initiator key", initiator_key), (b"initiator nonce", initiator_nonce),
                         (b"responder node", responder.encode()), (b"responder key", responder_key),
                         (b"responder nonce", responder_nonce)):
        parts += [label, len(value).to_bytes(2, "big"), value]
    return b"".join(parts)


def code_of(transcript_bytes: bytes) -> str:
    """The 6 digits both screens show."""
    digest = hmac.new(_CODE_LABEL, transcript_bytes, hashlib.sha256).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 10 ** CODE_DIGITS:0{CODE_DIGITS}d}"


def session_key_of(shared: bytes, transcript_bytes: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(transcript_bytes).digest(),
                info=_KEY_LABEL).derive(shared)


def format_code(code: str) -> str:
    """``123456`` -> ``123 456``."""
    return f"{code[:3]} {code[3:]}"


def _nonce(direction: int, counter: int) -> bytes:
    return bytes((direction, 0, 0, 0)) + counter.to_bytes(8, "big")


# -- the state machines --------------------------------------------------------------------------

#: Refusals that end the attempt: the other side is not who it claims, or is broken.
_FATAL = frozenset({"commitment_mismatch", "bad_key", "bad_credentials"})


@dataclass
class Outcome:
    """What handling one message gave: datagrams to send back, or why it was refused."""

    replies: list[bytes] = field(default_factory=list)
    refused: str | None = None


class _Party:
    """What both sides share: the session, the keys, the seal, the bookkeeping."""

    role = ""
    _direction = 0

    def __init__(self, node_id: str, crypto: Crypto | None, now: float, timeout_s: float):
        self.node_id = _node_id(node_id)
        self.crypto = crypto or Crypto()
        self.timeout_s = timeout_s
        self.started = now
        self.deadline = now + STEP_TIMEOUT_S
        self.phase = ""
        self.peer_node: str | None = None
        self.code: str | None = None
        self.session_key: bytes | None = None
        self.failure: str | None = None  #: why the attempt ended, when it failed (a Reason)
        self.peer_reason: str | None = None  #: the reason the peer's ABORT gave
        self.refused: Counter[str] = Counter()
        self._aead: ChaCha20Poly1305 | None = None
        self._seen: set[bytes] = set()  # datagrams accepted from the peer
        self._last_in: bytes | None = None
        self._answer: list[bytes] = []  # what we answered to _last_in
        self.session = b""

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "aborted")

    @property
    def succeeded(self) -> bool:
        return self.phase == "done"

    def _seal(self, counter: int, plaintext: bytes, aad: bytes) -> bytes:
        assert self._aead is not None
        return self._aead.encrypt(_nonce(self._direction, counter), plaintext, aad)

    def _open(self, counter: int, sealed: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            raise Refused(Reason.OUT_OF_ORDER, "no session key yet")
        other = _RESPONDER if self._direction == _INITIATOR else _INITIATOR
        try:
            return self._aead.decrypt(_nonce(other, counter), sealed, aad)
        except InvalidTag:
            raise Refused(Reason.BAD_SEAL) from None

    def _derive(self, shared: bytes, transcript_bytes: bytes) -> None:
        self.code = code_of(transcript_bytes)
        self.session_key = session_key_of(shared, transcript_bytes)
        self._aead = ChaCha20Poly1305(self.session_key)

    def abort(self, reason: str) -> list[bytes]:
        """End the attempt for ``reason``; the ABORT to send (none when already ended)."""
        if self.finished:
            return []
        message = abort_message(self.session, self._step, reason)
        self.phase, self.failure = "aborted", reason
        self._answer = [message]  # the peer's last message again is answered with it
        return [message]

    def tick(self, now: float) -> list[bytes]:
        """Abort when the current step (or the comparison) ran out of time."""
        if not self.finished and now >= self.deadline:
            return self.abort(Reason.TIMEOUT)
        return []

    def receive(self, message: Message, raw: bytes, now: float) -> Outcome:
        """Handle one message of our session; never raises. The last message again (a
        retransmission: our answer was lost) is answered again and counted as a duplicate;
        any other message seen before is refused as replayed."""
        if raw == self._last_in or raw in self._duplicates():
            self.refused[Reason.DUPLICATE] += 1
            return Outcome(list(self._answer), Reason.DUPLICATE)
        if raw in self._seen:
            return self._refuse(Reason.REPLAYED)
        if self.finished:
            return self._refuse(Reason.OUT_OF_ORDER)
        if message.kind is Kind.ABORT:
            try:
                said = abort_reason(message)
            except Refused as refused:
                return self._refuse(refused.reason)
            self.phase, self.failure, self.peer_reason = "aborted", Reason.PEER_ABORTED, said
            self._seen.add(raw)
            self._last_in, self._answer = raw, []
            return Outcome()
        try:
            replies = self._handle(message, now)
        except Refused as refused:
            self.refused[refused.reason] += 1
            if refused.reason in _FATAL:
                return Outcome(self.abort(refused.reason), refused.reason)
            return Outcome(refused=refused.reason)
        self._seen.add(raw)
        if self.phase != "aborted":
            self._last_in, self._answer = raw, list(replies)
        return Outcome(replies)

    def _refuse(self, reason: str) -> Outcome:
        self.refused[reason] += 1
        return Outcome(refused=reason)

    def _duplicates(self) -> set[bytes]:
        return set()

    @property
    def _step(self) -> int:
        return 0

    def _handle(self, message: Message, now: float) -> list[bytes]:
        raise NotImplementedError


class Initiator(_Party):
    """The new device. ``start()`` gives the COMMIT; then feed it every message of its
    session (``receive``), tell it what its user said (``user_confirmed`` /
    ``user_rejected``) once ``phase`` is ``comparing``, and ``saved()`` once the
    credentials are stored. Phases: committed, revealed, comparing, confirmed,
    received, done, aborted."""

    role = "initiator"
    _direction = _INITIATOR

    def __init__(self, node_id: str, *, crypto: Crypto | None = None, now: float = 0.0,
                 timeout_s: float = PAIRING_TIMEOUT_S, mesh_endpoints: list[str] | None = None):
        super().__init__(node_id, crypto, now, timeout_s)
        self.mesh_endpoints = list(mesh_endpoints or [])
        self.credentials: Credentials | None = None
        self._parts: dict[int, bytes] = {}
        self._part_raws: set[bytes] = set()

    def start(self) -> bytes:
        self.session = self.crypto.random_bytes(SESSION_BYTES)
        self._private, self._public = self.crypto.key_pair()
        self._nonce = self.crypto.random_bytes(NONCE_BYTES)
        self._commitment = commitment(self.session, self._public, self._nonce)
        self.phase = "committed"
        self._commit_bare = encode(Kind.COMMIT, self.session, self._commitment + _text(self.node_id))
        self._commit = self._commit_bare
        return self._commit

    @property
    def _step(self) -> int:
        return {"committed": 1, "revealed": 3, "comparing": 4, "confirmed": 5,
                "received": 6, "done": 7}.get(self.phase, 0)

    @property
    def retransmit(self) -> list[bytes]:
        """What to send again while waiting for the responder's answer."""
        if self.phase == "committed":
            return [self._commit]
        if self.phase == "revealed":
            return [self._reveal]
        return [self._confirm] if self.phase == "confirmed" else []

    def _duplicates(self) -> set[bytes]:
        return self._part_raws if self.phase in ("received", "done") else set()

    def _handle(self, message: Message, now: float) -> list[bytes]:
        if message.kind is Kind.RETRY and self.phase == "committed":
            # the member asks us to prove we hear it: the same COMMIT, echoing its cookie
            if len(message.body) != COOKIE_BYTES:
                raise Refused(Reason.MALFORMED, "retry")
            self._commit = self._commit_bare + message.body
            return [self._commit]
        if message.kind is Kind.RESPONSE and self.phase == "committed":
            reader = _Reader(message.body)
            peer_key, peer_nonce, peer = reader.take(KEY_BYTES), reader.take(NONCE_BYTES), reader.text()
            reader.end()
            shared = self.crypto.shared_secret(self._private, peer_key)
            self.peer_node = _node_id(peer)
            self._derive(shared, transcript(self.session, self.node_id, self._commitment, self._public,
                                            self._nonce, self.peer_node, peer_key, peer_nonce))
            self.phase, self.deadline = "revealed", now + STEP_TIMEOUT_S
            self._reveal = encode(Kind.REVEAL, self.session, self._public + self._nonce)
            return [self._reveal]
        if message.kind is Kind.READY and self.phase == "revealed":
            self._open(0, message.body, message.header)
            self.phase, self.deadline = "comparing", self.started + self.timeout_s
            return []
        if message.kind is Kind.CREDENTIALS and self.phase in ("comparing", "confirmed"):
            return self._credentials_part(message)
        raise Refused(Reason.OUT_OF_ORDER, f"{message.kind.name} while {self.phase}")

    def _credentials_part(self, message: Message) -> list[bytes]:
        if self.phase == "comparing":  # the responder may not send before our CONFIRM
            raise Refused(Reason.OUT_OF_ORDER, "credentials before our confirmation")
        if len(message.body) < 2:
            raise Refused(Reason.MALFORMED, "credentials part")
        part, parts = message.body[0], message.body[1]
        if not 0 < parts <= MAX_PARTS or part >= parts or (self._parts and self._expected_parts != parts):
            raise Refused(Reason.MALFORMED, "credentials part numbers")
        chunk = self._open(1 + part, message.body[2:], message.header + message.body[:2])
        self._expected_parts = parts
        self._parts[part] = chunk
        if len(self._parts) < parts:
            return []
        self.credentials = Credentials.decode(b"".join(self._parts[i] for i in range(parts)))
        self.phase = "received"
        return []

    def receive(self, message: Message, raw: bytes, now: float) -> Outcome:
        if message.session != self.session:
            return self._refuse(Reason.OTHER_SESSION)
        outcome = super().receive(message, raw, now)
        if message.kind is Kind.CREDENTIALS and outcome.refused is None:
            self._part_raws.add(raw)
        return outcome

    def user_confirmed(self) -> list[bytes]:
        """Our user says the codes match: the CONFIRM, sealed (proving we hold the key)."""
        if self.phase != "comparing":
            return []
        self._confirm = encode(Kind.CONFIRM, self.session,
                               self._seal(0, _CONFIRMED, encode(Kind.CONFIRM, self.session)))
        self.phase = "confirmed"
        self._answer = [self._confirm]  # a READY again (the member's user said yes) gets it again
        return [self._confirm]

    def user_rejected(self) -> list[bytes]:
        return self.abort(Reason.REJECTED)

    def saved(self) -> list[bytes]:
        """The credentials are stored: the DONE, telling where this device will listen."""
        if self.phase != "received":
            return []
        body = json.dumps({"node": self.node_id, "endpoints": self.mesh_endpoints},
                          separators=(",", ":"), ensure_ascii=False).encode()
        done = encode(Kind.DONE, self.session, self._seal(1, body, encode(Kind.DONE, self.session)))
        self.phase = "done"
        self._answer = [done]  # a credentials part seen again is answered with it
        return [done]


class Responder(_Party):
    """The accepting member, for one attempt, made from a COMMIT (``start``). Phases:
    awaiting_reveal, comparing (the code is shown; waiting for both confirmations),
    sending (credentials sent, waiting for DONE), done, aborted."""

    role = "responder"
    _direction = _RESPONDER

    def __init__(self, node_id: str, credentials: Credentials, *, crypto: Crypto | None = None,
                 now: float = 0.0, timeout_s: float = PAIRING_TIMEOUT_S):
        super().__init__(node_id, crypto, now, timeout_s)
        self.credentials = credentials
        self.user_ok = False
        self.peer_ok = False
        #: What the new device said in DONE: its node id and where it will listen.
        self.joined: dict | None = None
        #: Where the attempt's COMMIT came from (set by the guard).
        self.source: object | None = None
        self.done_wait_s = DONE_WAIT_S
        self._sent_parts: list[bytes] = []

    @property
    def _step(self) -> int:
        return {"awaiting_reveal": 2, "comparing": 4, "sending": 6, "done": 7}.get(self.phase, 0)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "unconfirmed", "aborted")

    def _duplicates(self) -> set[bytes]:
        return {self._bare_commit} if self.phase == "awaiting_reveal" else set()

    @property
    def succeeded(self) -> bool:
        """The credentials went out and the new device said it saved them (``done``), or
        went out and no DONE came back within ``done_wait_s`` (``unconfirmed``: its DONE
        was lost, or it could not say; ``joined`` stays None)."""
        return self.phase in ("done", "unconfirmed")

    def tick(self, now: float) -> list[bytes]:
        if self.phase == "sending" and now >= self.deadline:
            self.phase = "unconfirmed"  # no ABORT: the new device has most likely saved them
            return []
        return super().tick(now)

    def start(self, message: Message, raw: bytes) -> list[bytes]:
        """The attempt of this COMMIT (MALFORMED raised before any key is made). The
        REVEAL is awaited REVEAL_TIMEOUT_S only: the door is busy meanwhile."""
        self._commitment, self.peer_node, cookie = commit_parts(message)
        # the same COMMIT without its cookie, sent again before the RETRY arrived, is a
        # retransmission like any other (not a step out of order)
        self._bare_commit = raw[:-COOKIE_BYTES] if cookie else raw
        self.session = message.session
        self.deadline = self.started + REVEAL_TIMEOUT_S
        self._private, self._public = self.crypto.key_pair()
        self._nonce = self.crypto.random_bytes(NONCE_BYTES)
        self.phase = "awaiting_reveal"
        response = encode(Kind.RESPONSE, self.session, self._public + self._nonce + _text(self.node_id))
        self._seen.add(raw)
        self._last_in, self._answer = raw, [response]
        return [response]

    @property
    def retransmit(self) -> list[bytes]:
        return list(self._sent_parts) if self.phase == "sending" else []

    def _handle(self, message: Message, now: float) -> list[bytes]:
        if message.kind is Kind.REVEAL and self.phase == "awaiting_reveal":
            reader = _Reader(message.body)
            peer_key, peer_nonce = reader.take(KEY_BYTES), reader.take(NONCE_BYTES)
            reader.end()
            if not hmac.compare_digest(commitment(self.session, peer_key, peer_nonce), self._commitment):
                raise Refused(Reason.COMMITMENT_MISMATCH)
            shared = self.crypto.shared_secret(self._private, peer_key)
            assert self.peer_node is not None
            self._derive(shared, transcript(self.session, self.peer_node, self._commitment, peer_key,
                                            peer_nonce, self.node_id, self._public, self._nonce))
            self.phase, self.deadline = "comparing", self.started + self.timeout_s
            header = encode(Kind.READY, self.session)
            self._ready = header + self._seal(0, b"", header)
            return [self._ready]
        if message.kind is Kind.CONFIRM and self.phase == "comparing":
            if self._open(0, message.body, message.header) != _CONFIRMED:
                raise Refused(Reason.MALFORMED, "confirmation")
            self.peer_ok = True
            return self._send_credentials(now)
        if message.kind is Kind.DONE and self.phase == "sending":
            said = self._open(1, message.body, message.header)
            try:  # checked field by field: the CLI records these endpoints
                joined = _json(said)
                if not isinstance(joined, dict) or set(joined) != {"node", "endpoints"} \
                        or joined["node"] != self.peer_node:
                    raise ValueError
                _node_id(joined["node"])
                _endpoints(joined["endpoints"])
            except (ValueError, Refused):
                raise Refused(Reason.MALFORMED, "done") from None
            self.joined = joined
            self.phase = "done"
            return []
        raise Refused(Reason.OUT_OF_ORDER, f"{message.kind.name} while {self.phase}")

    def user_confirmed(self, now: float) -> list[bytes]:
        """Our user says the codes match: the credentials go out once the initiator's
        CONFIRM is in too (never before: its user may not have confirmed); until then
        the READY is sent again, which a new device that did confirm answers."""
        if self.phase != "comparing":
            return []
        self.user_ok = True
        if not self.peer_ok:
            # the READY again: a new device whose CONFIRM was lost (and whose resends ran
            # out while our user read the code) answers it with its CONFIRM again
            return [self._ready]
        return self._send_credentials(now)

    def user_rejected(self) -> list[bytes]:
        return self.abort(Reason.REJECTED)

    def _send_credentials(self, now: float) -> list[bytes]:
        if not (self.user_ok and self.peer_ok):
            return []
        payload = self.credentials.encode()
        chunks = [payload[i:i + PART_BYTES] for i in range(0, len(payload), PART_BYTES)]
        if len(chunks) > MAX_PARTS:
            return self.abort(Reason.BAD_CREDENTIALS)
        for index, chunk in enumerate(chunks):
            numbers = bytes((index, len(chunks)))
            header = encode(Kind.CREDENTIALS, self.session)
            self._sent_parts.append(header + numbers + self._seal(1 + index, chunk, header + numbers))
        self.phase, self.deadline = "sending", now + self.done_wait_s
        return list(self._sent_parts)
