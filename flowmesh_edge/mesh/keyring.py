"""The mesh keyring: which key signs and encrypts, which keys are accepted.

As memberlist's keyring: one *primary* key protects every datagram this
member sends, and every key of the ring (the primary and the *secondary*
ones) is tried on what arrives, primary first. A key is rotated without a
flag day: install the new key everywhere (accepted, not used), make it the
primary everywhere, then remove the old one (rotation.py spreads each step).

Protection
----------

Every key gives two keys (domain-separated SHA-256 of it): an HMAC-SHA256 key
for *authenticated* frames (wire.py: the signed frame and a 16-byte tag, as
before) and a ChaCha20-Poly1305 key for *sealed* ones, which hide everything
but the wire version::

    u8 version (5)  u8 0 (sealed)  u8 key hint  12 nonce  AEAD(plain frame without its tag)

with the first three bytes as associated data. The key hint is the first
byte of the sealing key's id: a receiver tries only the keys of its ring
with that hint (one, nearly always), so a forged datagram costs one failed
decryption whatever the size of the ring. The plain frame inside keeps
its own sender, boot epoch, sequence and clock, so the replay window and the
skew bound (security.py) apply to sealed frames unchanged. ChaCha20-Poly1305
rather than AES-GCM: a Raspberry Pi has no AES instructions, and ChaCha is
fast in software. It is RFC 8439's construction, from libsodium through
PyNaCl: ``cryptography``'s ``ChaCha20Poly1305`` opens what it seals (a
test checks), but loading ``cryptography`` costs an agent 8.8 MB of
resident memory and PyNaCl 1.1 MB, against a 30 MB goal. Only
``flowmesh-edge pair`` loads ``cryptography``, for X25519 and HKDF.

Nonces are random (96 bits): the same key is shared by every member, so a
counter would need coordination; a collision becomes likely only
after about 2^48 datagrams under one key, far beyond any rotation period.
A sealed frame costs SEAL_OVERHEAD (15) bytes more than an authenticated one:
a probe between 16-character node ids is 103 bytes.

A member with ``encrypt`` on seals what it sends; every member accepts both
kinds, each authenticated by a key of the ring, so encryption is turned on
member by member (a downgrade needs a key, which is the whole mesh's trust).

A datagram that no key opens is ``forged``; one that opens under a key
removed from this ring (in the last REMOVED_REMEMBERED removals since the
process started) is counted as ``removed_key`` instead, so that a member
left behind by a rotation shows up for what it is.

Keys are text of MIN_KEY_BYTES to MAX_KEY_BYTES UTF-8 bytes without control
characters (the mesh key of ``--mesh-key``); a ring holds at most MAX_KEYS,
so a whole ring always fits one KEYRING datagram. ``key_id`` names a key
(8 hex digits of a hash) for ``flowmesh-edge keys list`` and logs; nothing
else about a key is ever shown.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import unicodedata
from collections.abc import Iterable, Sequence

from nacl.bindings import crypto_aead_chacha20poly1305_ietf_decrypt as _decrypt
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt as _encrypt
from nacl.exceptions import CryptoError

from .wire import MAX_DATAGRAM, SEALED, TAG_LEN, WIRE_VERSION, WireError, split_tag

#: Keys a ring holds at most: a rotation needs two; four leave room for a second
#: rotation started before the first one's old key was removed.
MAX_KEYS = 4
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 128
#: Removed keys remembered (in memory) to tell ``removed_key`` drops from forgeries.
REMOVED_REMEMBERED = 4
NONCE_LEN = 12
_HEAD_LEN = 3


def key_bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def key_problem(key: object) -> str | None:
    """Why ``key`` cannot be a mesh key, or None."""
    if not isinstance(key, str | bytes):
        return "a key must be text"
    try:
        # keys travel as text (saved meshes, KEYRING messages)
        text = key.decode("utf-8") if isinstance(key, bytes) else key.encode("utf-8").decode("utf-8")
    except UnicodeError:
        return "a key must be UTF-8 text"
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "a key must not hold control characters"
    size = len(key_bytes(key))
    if size < MIN_KEY_BYTES:
        return f"a key must be at least {MIN_KEY_BYTES} bytes"
    if size > MAX_KEY_BYTES:
        return f"a key must be at most {MAX_KEY_BYTES} bytes"
    return None


def check_keyring(keys: Sequence[object]) -> None:
    """ValueError (saying which key, never showing it) for a keyring that cannot be."""
    if not keys:
        raise ValueError("a keyring needs a primary key")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"a keyring holds at most {MAX_KEYS} keys, not {len(keys)}")
    for index, key in enumerate(keys):
        problem = key_problem(key)
        if problem:
            raise ValueError(f"key {index + 1}: {problem}")
    if len({key_bytes(k) for k in keys}) != len(keys):  # type: ignore[arg-type]
        raise ValueError("a key appears twice in the keyring")


def key_id(key: bytes | str) -> str:
    """A key's name: 8 hex digits that say nothing about the key."""
    return hashlib.sha256(b"flowmesh key id v1\x00" + key_bytes(key)).hexdigest()[:8]


def generate_key() -> str:
    """A new random key: 256 bits, URL-safe text."""
    return secrets.token_urlsafe(32)


class MeshKey:
    """One key of the ring, with the keys derived from it."""

    __slots__ = ("_aead", "_head", "_mac", "hint", "id", "raw")

    def __init__(self, key: bytes | str):
        problem = key_problem(key)
        if problem:
            raise ValueError(problem.replace("a key", "the mesh key"))
        self.raw = key_bytes(key)
        self.id = key_id(self.raw)
        #: Sealed frames name their key by this byte (the first of its id).
        self.hint = int(self.id[:2], 16)
        self._head = bytes((WIRE_VERSION, SEALED, self.hint))
        # domain separation: the same secret gives unrelated keys for each use
        self._mac = hashlib.sha256(b"flowmesh mesh mac v1\x00" + self.raw).digest()
        self._aead = hashlib.sha256(b"flowmesh mesh aead v1\x00" + self.raw).digest()

    def __repr__(self) -> str:
        return f"MeshKey({self.id})"

    def sign(self, data: bytes) -> bytes:
        return hmac.digest(self._mac, data, "sha256")[:TAG_LEN]

    def verify(self, data: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.sign(data), tag)

    def tagged(self, data: bytes) -> bytes:
        """An authenticated datagram: ``data`` and its tag."""
        return data + self.sign(data)

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return self._head + nonce + _encrypt(data, self._head, nonce, self._aead)

    def unseal(self, sealed: bytes) -> bytes | None:
        """The data sealed by ``seal``, or None."""
        head, nonce = sealed[:_HEAD_LEN], sealed[_HEAD_LEN:_HEAD_LEN + NONCE_LEN]
        try:
            return _decrypt(sealed[_HEAD_LEN + NONCE_LEN:], head, nonce, self._aead)
        except CryptoError:
            return None


class Keyring:
    """The keys of one mesh on one member: ``keys[0]`` is the primary."""

    def __init__(self, keys: bytes | str | Iterable[bytes | str], *, encrypt: bool = True):
        ring = [keys] if isinstance(keys, bytes | str) else list(keys)
        check_keyring(ring)
        self._keys = [MeshKey(k) for k in ring]
        self.encrypt = encrypt
        self._removed: list[MeshKey] = []

    @property
    def primary(self) -> MeshKey:
        return self._keys[0]

    @property
    def keys(self) -> list[MeshKey]:
        """Primary first."""
        return list(self._keys)

    def ids(self) -> list[str]:
        return [k.id for k in self._keys]

    # -- protecting and opening datagrams ------------------------------------------------
    def protect(self, data: bytes, key: MeshKey | None = None, seal: bool = False) -> bytes:
        """A frame's signed part -> the datagram: sealed when ``encrypt`` or ``seal``,
        else tagged; under the primary unless ``key`` (a member behind a rotation is
        told under the key it still uses)."""
        key = key or self._keys[0]
        return key.seal(data) if self.encrypt or seal else key.tagged(data)

    def open(self, datagram: bytes) -> tuple[bytes, MeshKey]:
        """(the frame's signed part, the key that opened it); WireError (``forged``,
        ``removed_key``, ``truncated``, ``oversized``) for anything else."""
        if len(datagram) > MAX_DATAGRAM:
            raise WireError("oversized", f"{len(datagram)} bytes")
        if len(datagram) >= 3 and datagram[1] == SEALED and datagram[0] == WIRE_VERSION:
            if len(datagram) < _HEAD_LEN + NONCE_LEN + TAG_LEN:
                raise WireError("truncated", f"sealed datagram of {len(datagram)} bytes")
            hint = datagram[2]
            for key in self._keys:
                if key.hint == hint:
                    plain = key.unseal(datagram)
                    if plain is not None:
                        return plain, key
            if any(k.hint == hint and k.unseal(datagram) is not None for k in self._removed):
                raise WireError("removed_key")
            raise WireError("forged")
        signed, tag = split_tag(datagram)
        for key in self._keys:
            if key.verify(signed, tag):
                return signed, key
        if any(k.verify(signed, tag) for k in self._removed):
            raise WireError("removed_key")
        raise WireError("forged")

    # -- changing the ring (rotation.py spreads these) -----------------------------------
    def holds(self, key: bytes | str) -> bool:
        raw = key_bytes(key)
        return any(k.raw == raw for k in self._keys)

    def replace(self, keys: Sequence[bytes | str]) -> None:
        """Make ``keys`` (primary first) the ring; a key that leaves it is remembered
        as removed (REMOVED_REMEMBERED)."""
        check_keyring(list(keys))
        held = {k.raw: k for k in self._keys}
        # a key kept is the same object: ``key is ring.primary`` stays meaningful
        fresh = [held.get(key_bytes(k)) or MeshKey(k) for k in keys]
        kept = {k.raw for k in fresh}
        gone = [k for k in self._keys if k.raw not in kept]
        self._removed = ([k for k in self._removed if k.raw not in kept] + gone)[-REMOVED_REMEMBERED:]
        self._keys = fresh

    def install(self, key: bytes | str) -> None:
        """Accept ``key`` too (a secondary key); nothing when it is held already."""
        if not self.holds(key):
            self.replace([*(k.raw for k in self._keys), key_bytes(key)])

    def use(self, key: bytes | str) -> None:
        """Make ``key`` the primary (installing it when needed)."""
        raw = key_bytes(key)
        self.replace([raw, *(k.raw for k in self._keys if k.raw != raw)])

    def remove(self, key: bytes | str) -> None:
        """Stop accepting ``key``; ValueError for the primary (use another first)."""
        raw = key_bytes(key)
        if self._keys[0].raw == raw:
            raise ValueError("the primary key cannot be removed: make another key the primary first")
        self.replace([k.raw for k in self._keys if k.raw != raw])
