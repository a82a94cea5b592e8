"""The keyring: keys that sign and seal, keys that are accepted, and the sizes it costs."""

from __future__ import annotations

import pytest

from flowmesh_edge.mesh import wire
from flowmesh_edge.mesh.keyring import (
    MAX_KEYS,
    Keyring,
    MeshKey,
    check_keyring,
    generate_key,
    key_id,
)
from flowmesh_edge.mesh.wire import Frame, MessageType, WireError

OLD, NEW, OTHER = "the old mesh key, 16+ bytes", "the new mesh key, 16+ bytes", "somebody else's key!"


def ping(sender: str = "pi-kitchen-0001", target: str = "phone-alice-001") -> Frame:
    return Frame(MessageType.PING, sender, 1_790_000_000, 7, 1_790_000_000,
                 wire.encode_ping(42, target, (1_790_000_000, 3)), (), 1_790_000_000_000_000)


def test_mac_detects_any_change_and_a_wrong_key():
    key = MeshKey("correct horse battery staple")
    data = b"frame bytes"
    tag = key.sign(data)
    assert key.verify(data, tag)
    assert not key.verify(b"frame bytez", tag)
    assert not key.verify(data, bytes(16))
    assert not MeshKey("another key, also long").verify(data, tag)


@pytest.mark.parametrize("keys, problem", [
    ([], "needs a primary key"),
    (["short"], "key 1: a key must be at least 16 bytes"),
    ([OLD, "x" * 129], "key 2: a key must be at most 128 bytes"),
    ([OLD, OLD], "appears twice"),
    ([f"{OLD}{i}" for i in range(MAX_KEYS + 1)], f"at most {MAX_KEYS} keys"),
    ([b"\xff" * 20], "UTF-8"),
    ([12345678901234567890], "must be text"),
    ([OLD + "\n"], "control characters"),
    (["a lone surrogate \ud800 16+"], "UTF-8"),
])
def test_a_keyring_that_cannot_be_is_refused_without_showing_a_key(keys, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        check_keyring(keys)
    assert OLD not in str(caught.value)


def test_a_sealed_frame_hides_everything_and_opens_under_any_key_of_the_ring():
    sender, receiver = Keyring([NEW, OLD]), Keyring([OLD, NEW])
    datagram = wire.encode_frame(ping(), sender.protect)
    # the head names the sealing key by one byte: a receiver tries only that key
    assert datagram[:3] == bytes((wire.WIRE_VERSION, wire.SEALED, MeshKey(NEW).hint))
    assert b"pi-kitchen" not in datagram and b"phone-alice" not in datagram  # ids are sealed too
    signed, key = receiver.open(datagram)
    assert key.id == key_id(NEW) and key is not receiver.primary  # a secondary key opened it
    assert wire.decode_frame(signed) == ping()


def test_authenticated_frames_are_still_accepted_and_sent_when_encryption_is_off():
    plain = Keyring(OLD, encrypt=False)
    datagram = wire.encode_frame(ping(), plain.protect)
    assert datagram[1] == MessageType.PING and b"pi-kitchen" in datagram
    signed, key = Keyring(OLD).open(datagram)  # an encrypting member reads it
    assert key.id == key_id(OLD) and wire.decode_frame(signed).sender == "pi-kitchen-0001"


@pytest.mark.parametrize("encrypt", [True, False])
def test_tampering_a_wrong_key_and_a_removed_key_are_refused_with_their_reason(encrypt):
    ring = Keyring([OLD, NEW], encrypt=encrypt)
    good = wire.encode_frame(ping(), ring.protect)
    tampered = good[:-20] + bytes([good[-20] ^ 1]) + good[-19:]
    with pytest.raises(WireError) as caught:
        ring.open(tampered)
    assert caught.value.reason == "forged"
    with pytest.raises(WireError) as caught:
        ring.open(wire.encode_frame(ping(), Keyring(OTHER, encrypt=encrypt).protect))
    assert caught.value.reason == "forged"
    ring.use(NEW)
    ring.remove(OLD)
    assert ring.ids() == [key_id(NEW)]
    with pytest.raises(WireError) as caught:
        ring.open(good)  # sealed under OLD, which this ring no longer accepts
    assert caught.value.reason == "removed_key"
    with pytest.raises(WireError) as caught:
        ring.open(good[:20])
    assert caught.value.reason == "truncated"


def test_ring_changes_keep_the_primary_and_refuse_removing_it():
    ring = Keyring(OLD)
    ring.install(NEW)
    assert ring.ids() == [key_id(OLD), key_id(NEW)]
    primary = ring.primary
    ring.install(NEW)  # already held: nothing
    assert ring.primary is primary and len(ring.keys) == 2
    with pytest.raises(ValueError, match="primary key cannot be removed"):
        ring.remove(OLD)
    ring.use(NEW)
    assert ring.primary.id == key_id(NEW) and ring.keys[1] is primary  # the same object, kept
    assert "16+" not in repr(ring.keys) and key_id(NEW) in repr(ring.primary)


def test_a_heartbeat_stays_under_200_bytes_sealed():
    # the probe (PING) and its answer are the heartbeat: node ids of 15 characters, as a fleet names them
    sealed = wire.encode_frame(ping(), Keyring(OLD).protect)
    plain = wire.encode_frame(ping(), Keyring(OLD, encrypt=False).protect)
    assert len(sealed) == len(plain) + wire.SEAL_OVERHEAD < 200
    ack = Frame(MessageType.PROBE_ACK, "phone-alice-001", 1, 8, 1, wire.encode_probe_ack(42, (1, 3)))
    assert len(wire.encode_frame(ack, Keyring(OLD).protect)) < 200
    # a 32-character id each way still fits
    assert len(wire.encode_frame(ping("a" * 32, "b" * 32), Keyring(OLD).protect)) < 200


def test_generated_keys_are_long_random_text():
    a, b = generate_key(), generate_key()
    assert a != b and len(a.encode()) >= 32
    check_keyring([a, b])


def test_a_forged_sealed_datagram_costs_one_decryption_whatever_the_ring(monkeypatch):
    ring = Keyring([OLD, NEW, OTHER, "a fourth key, 16+ bytes"])
    ring.remove(OTHER)  # remembered as removed: also tried only when its hint matches
    tries = []
    monkeypatch.setattr(MeshKey, "unseal", lambda self, data: tries.append(self.id) and None)
    forged = bytearray(wire.encode_frame(ping(), Keyring(OLD).protect))
    forged[-1] ^= 1
    with pytest.raises(WireError):
        ring.open(bytes(forged))
    assert tries == [key_id(OLD)]


def test_sealed_frames_are_rfc_8439_chacha20_poly1305_as_cryptography_opens_them():
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    data = wire.encode_frame(ping(), Keyring(OLD, encrypt=False).protect)[:-wire.TAG_LEN]
    sealed = MeshKey(OLD).seal(data)
    aead = ChaCha20Poly1305(hashlib.sha256(b"flowmesh mesh aead v1\x00" + OLD.encode()).digest())
    assert aead.decrypt(sealed[3:15], sealed[15:], sealed[:3]) == data
