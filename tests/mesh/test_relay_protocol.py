"""The relay protocol as pure code: encode, decode, refuse (no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowmesh.limits import NODE_ID_MAX_BYTES
from flowmesh_edge.mesh import relay_protocol as rp
from flowmesh_edge.mesh.wire import MAX_DATAGRAM

MESH = "0123456789abcdef"
TOKEN = "relay-token-0123456789"

node_ids = st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=40).filter(
    lambda s: len(s.encode()) <= NODE_ID_MAX_BYTES)


@given(node=node_ids | st.just(""), datagram=st.binary(min_size=1, max_size=MAX_DATAGRAM))
def test_data_messages_round_trip_and_leave_the_datagram_untouched(node, datagram):
    message = rp.encode_data(node, datagram)
    assert len(message) <= rp.MAX_DATA_MESSAGE
    assert rp.decode_data(message) == (node, datagram)
    assert message.endswith(datagram)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_a_protocol_error(raw):
    try:
        node, datagram = rp.decode_data(raw)
    except rp.ProtocolError:
        return
    assert datagram and rp.encode_data(node, datagram) == raw


def test_bad_data_headers_are_refused_with_a_reason():
    cases = {
        b"": "empty",
        b"\x05ab": "truncated",
        bytes([NODE_ID_MAX_BYTES + 1]) + b"x" * 300: "truncated",
        b"\x02\xff\xfex": "UTF-8",
        b"\x01a": "without a datagram",
        b"\x01\x07x": "non-printable",
        b"\x01a" + b"x" * (MAX_DATAGRAM + 1): "size limit",
    }
    for raw, reason in cases.items():
        with pytest.raises(rp.ProtocolError, match=reason):
            rp.decode_data(raw)
    with pytest.raises(ValueError):
        rp.encode_data("x" * (NODE_ID_MAX_BYTES + 1), b"d")


def test_hello_round_trips_and_never_shows_its_token():
    hello = rp.Hello(TOKEN, MESH, "cam-1")
    text = rp.encode_hello(hello)
    assert rp.decode_hello(text) == hello
    assert len(text) < rp.MAX_HELLO and TOKEN not in repr(hello)
    longest = rp.Hello("t" * rp.MAX_TOKEN_BYTES, MESH, "\u00e9" * (NODE_ID_MAX_BYTES // 2))
    assert rp.decode_hello(rp.encode_hello(longest)) == longest  # the largest hello still fits


@pytest.mark.parametrize(("message", "reason"), [
    (b"binary", "must be text"),
    ("not json", "JSON"),
    ("[1]", "JSON object"),
    ('{"type": "ok", "peers": []}', "first message must be a hello"),
    ('{"type": "hello", "token": "t", "mesh": "0123456789abcdef", "node": "a"}', "version"),
    ('{"type": "hello", "version": true, "token": "t", "mesh": "0123456789abcdef", "node": "a"}',
     "version"),
    ('{"type": "hello", "version": 1, "token": "", "mesh": "0123456789abcdef", "node": "a"}', "token"),
    ('{"type": "hello", "version": 1, "token": "t", "mesh": "XYZ", "node": "a"}', "mesh id"),
    ('{"type": "hello", "version": 1, "token": "t", "mesh": "0123456789abcdef", "node": ""}', "node id"),
    ('{"type": "hello", "version": 1, "token": "t", "mesh": "0123456789abcdef", "node": 5}', "node id"),
    ("x" * (rp.MAX_HELLO + 1), "too long"),
])
def test_bad_hellos_are_refused_with_a_reason_that_never_quotes_the_token(message, reason):
    with pytest.raises(rp.ProtocolError, match=reason) as info:
        rp.decode_hello(message)
    assert "t\"" not in str(info.value)


def test_a_hello_of_another_version_decodes_so_the_relay_can_say_which_it_speaks():
    text = json.dumps({"type": "hello", "version": 2, "token": TOKEN, "mesh": MESH, "node": "a"})
    assert rp.decode_hello(text).version == 2


def test_control_messages_round_trip():
    assert rp.decode_control(rp.encode_ok(["a", "b"])) == rp.Control("ok", ("a", "b"))
    assert rp.decode_control(rp.encode_ok([])) == rp.Control("ok")
    assert rp.decode_control(rp.encode_joined("c")) == rp.Control("joined", node="c")
    assert rp.decode_control(rp.encode_left("c")) == rp.Control("left", node="c")
    for bad in ('{"type": "ok"}', '{"type": "ok", "peers": [1]}', '{"type": "joined"}',
                '{"type": "nope"}', b"{}"):
        with pytest.raises(rp.ProtocolError):
            rp.decode_control(bad)
