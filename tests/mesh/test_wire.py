"""The wire format as pure code: round trips, limits, and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowmesh.limits import NODE_ID_MAX_BYTES
from flowmesh_edge.mesh import wire
from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.keyring import MeshKey
from flowmesh_edge.mesh.wire import Envelope, Frame, MessageType, Update, WireError

KEY = MeshKey(b"0123456789abcdef0123456789abcdef")

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=16)
u32 = st.integers(0, 2**32 - 1)
addresses = st.builds(Address, st.sampled_from(["udp", "mem", "ws", "ble-gatt"]), st.text(max_size=20),
                      st.integers(0, 65535))
updates = st.builds(Update, st.sampled_from(wire.UPDATE_KINDS), ids, u32, addresses,
                    st.one_of(st.just(""), ids), st.binary(max_size=40),
                    st.lists(addresses, max_size=2).map(tuple))
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
payloads = st.dictionaries(st.text(max_size=10), json_scalars, max_size=6)
envelopes = st.builds(Envelope, ids, u32, payloads, st.integers(0, 255), st.integers(0, 255),
                      st.one_of(st.just(""), ids), st.lists(ids, max_size=5).map(tuple))


def roundtrip(frame: Frame, raw=()) -> Frame:
    signed, tag = wire.split_tag(wire.encode_frame(frame, KEY.tagged, raw))
    assert KEY.verify(signed, tag)
    return wire.decode_frame(signed)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(MessageType)), ids, u32, u32, u32, st.binary(max_size=200),
       st.lists(updates, max_size=8), st.integers(0, 2**64 - 1))
def test_frames_round_trip(mtype, sender, inc, seq, ts, body, ups, epoch):
    frame = Frame(mtype, sender, inc, seq, ts, body, tuple(ups), epoch)
    assert roundtrip(frame) == frame


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_envelopes_round_trip(env):
    assert wire.decode_envelope(wire.encode_envelope(env)) == env


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_only_raise_wire_errors(data):
    for decode in (wire.decode_frame, wire.decode_envelope, wire.decode_update, wire.decode_ping,
                   wire.decode_ping_req, wire.decode_probe_ack, wire.decode_gossip, wire.decode_epoch,
                   wire.decode_discovery):
        try:
            decode(data)
        except WireError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.lists(updates, min_size=1, max_size=4), st.data())
def test_every_truncation_is_refused(ups, data):
    frame = Frame(MessageType.GOSSIP, "node", 1, 2, 3, b"body", tuple(ups))
    signed, _ = wire.split_tag(wire.encode_frame(frame, KEY.tagged))
    cut = data.draw(st.integers(0, len(signed) - 1))
    with pytest.raises(WireError):
        wire.decode_frame(signed[:cut])


def test_probes_and_acks_are_small_and_carry_the_state_stamp():
    top = 2**32 - 1
    longest = "n" * NODE_ID_MAX_BYTES
    ping = Frame(MessageType.PING, longest, top, top, top, wire.encode_ping(top, longest, (top, top)))
    assert len(wire.encode_frame(ping, KEY.tagged)) == 312
    assert wire.decode_ping(ping.body) == (top, longest, (top, top))
    body = wire.encode_ping(1, "camera_002_abcde", (7, 3))
    short = Frame(MessageType.PING, "camera_001_abcde", 1, 1, 1, body)
    assert len(wire.encode_frame(short, KEY.tagged)) == 88  # as wire.py says
    ack = wire.encode_probe_ack(9, (7, 3))
    assert wire.decode_probe_ack(ack) == (9, (7, 3))
    for bad in (ack[:-1], ack + b"x"):
        with pytest.raises(WireError):
            wire.decode_probe_ack(bad)


def test_limits():
    with pytest.raises(ValueError, match="exceeds"):
        wire.encode_frame(Frame(MessageType.GOSSIP, "n", 1, 1, 1, b"x" * 2000), KEY.tagged)
    with pytest.raises(WireError) as info:
        wire.split_tag(b"x" * (wire.MAX_DATAGRAM + 1))
    assert info.value.reason == "oversized"
    with pytest.raises(WireError) as info:
        wire.split_tag(b"x" * 10)
    assert info.value.reason == "truncated"
    with pytest.raises(ValueError):
        wire.encode_envelope(Envelope("n" * (NODE_ID_MAX_BYTES + 1), 1, {}))


def test_unknown_version_and_type_are_named():
    frame = wire.encode_frame(Frame(MessageType.PING, "a", 1, 1, 1, b""), KEY.tagged)
    signed, _ = wire.split_tag(frame)
    with pytest.raises(WireError) as info:
        wire.decode_frame(b"\x09" + signed[1:])
    assert info.value.reason == "version"
    with pytest.raises(WireError) as info:
        wire.decode_frame(signed[:1] + b"\xee" + signed[2:])
    assert info.value.reason == "malformed"


def test_envelope_payload_must_be_a_json_object():
    good = wire.encode_envelope(Envelope("a", 1, {"x": 1}))
    with pytest.raises(WireError):
        wire.decode_envelope(good[:-7] + b"[1,2,3]")
    with pytest.raises(WireError):
        wire.decode_envelope(good[:-7] + b"\xff\xfe")


def test_addresses_carry_their_transport_and_a_bad_transport_name_is_malformed():
    update = Update(MessageType.ALIVE, "a", 1, Address("ws", "relay.example", 443), "a")
    raw = wire.encode_update(update)
    assert wire.decode_update(raw).address == Address("ws", "relay.example", 443)
    bad = raw.replace(b"\x02ws", b"\x02W!")
    with pytest.raises(WireError) as info:
        wire.decode_update(bad)
    assert info.value.reason == "malformed"


def test_ids_up_to_the_shared_limit_pass_and_longer_ones_do_not():
    longest = "n" * NODE_ID_MAX_BYTES
    frame = Frame(MessageType.PING, longest, 1, 1, 1, wire.encode_ping(1, longest, (1, 0)))
    assert roundtrip(frame) == frame
    with pytest.raises(ValueError):
        wire.encode_frame(Frame(MessageType.PING, longest + "n", 1, 1, 1, b""), KEY.tagged)


def test_an_update_carries_up_to_max_endpoints_and_a_longer_list_is_refused():
    endpoints = tuple(Address("ws", f"10.0.0.{i}", 8000 + i) for i in range(wire.MAX_ENDPOINTS))
    update = Update(MessageType.ALIVE, "cam", 7, Address.udp("10.0.0.1", 9999), "cam", b"", endpoints)
    assert wire.decode_update(wire.encode_update(update)) == update
    raw = bytearray(wire.encode_update(update))
    count_at = len(raw) - sum(len(wire._addr(a)) for a in endpoints) - 1
    assert raw[count_at] == wire.MAX_ENDPOINTS
    raw[count_at] += 1
    with pytest.raises(WireError):
        wire.decode_update(bytes(raw))
