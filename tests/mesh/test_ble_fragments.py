"""BLE fragmentation and reassembly, pure: no Bluetooth, no bus."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowmesh_edge.mesh.transports import ble_fragments as bf
from flowmesh_edge.mesh.wire import MAX_DATAGRAM

MAC = "AA:BB:CC:DD:EE:0F"


@given(data=st.binary(max_size=MAX_DATAGRAM), mtu=st.integers(min_value=bf.MIN_ATT_MTU, max_value=517),
       message_id=st.integers(min_value=0, max_value=0xFFFF))
def test_any_datagram_survives_any_mtu_byte_exact(data, mtu, message_id):
    fragments = bf.split(data, message_id, MAC, mtu)
    assert all(len(f) <= mtu - bf.ATT_OVERHEAD for f in fragments)
    reassembler = bf.Reassembler()
    results = [reassembler.feed(MAC, bf.parse(f)) for f in fragments]
    assert results[-1] == data and not any(results[:-1])
    assert reassembler.pending == 0 and not reassembler.dropped
    first = bf.parse(fragments[0])
    assert first.peer == MAC and first.mtu == mtu and first.message_id == message_id


def test_default_mtu_fragment_count():
    fragments = bf.split(b"x" * MAX_DATAGRAM, 1, MAC, bf.MIN_ATT_MTU)
    assert bf.payload_size(23) == 8 and len(fragments) == 175
    assert len(bf.split(b"x" * MAX_DATAGRAM, 1, MAC, 185)) == 9


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_malformed_gaps_interleaving_oversize_and_timeouts_are_dropped_and_counted():
    clock = Clock()
    r = bf.Reassembler(max_bytes=100, timeout_s=5.0, max_pending=2, clock=clock)
    a = bf.split(b"a" * 50, 1, MAC, 23)           # 7 fragments
    assert r.feed("A", bf.parse(b"\x10\x00")) is None                 # too short
    assert r.feed("A", bf.parse(b"\x20" + a[0][1:])) is None          # another version
    assert r.dropped["malformed"] == 2
    assert r.feed("A", bf.parse(a[1])) is None                        # starts mid-message
    assert r.dropped["out_of_order"] == 1
    r.feed("A", bf.parse(a[0]))
    assert r.feed("A", bf.parse(a[2])) is None                        # gap: message lost
    assert r.dropped["out_of_order"] == 2 and r.dropped["incomplete"] == 1 and r.pending == 0
    r.feed("A", bf.parse(a[0]))
    r.feed("A", bf.parse(bf.split(b"b", 2, MAC, 23)[0][:-1]))         # new message before the last
    assert r.dropped["incomplete"] == 2
    big = bf.split(b"c" * 101, 3, MAC, 23)
    assert all(r.feed("B", bf.parse(f)) is None for f in big)
    assert r.dropped["oversized"] == 1
    r.feed("C", bf.parse(a[0]))
    clock.now = 10.0
    r.expire()
    assert r.dropped["timeout"] >= 1
    for source in "DEF":                                              # more senders than room
        r.feed(source, bf.parse(a[0]))
    assert r.pending == 2 and r.dropped["evicted"] == 1
    # a sender that keeps to the rules still gets through afterwards
    assert [r.feed("A", bf.parse(f)) for f in a][-1] == b"a" * 50


def test_bad_mac_and_too_many_fragments_are_refused():
    with pytest.raises(ValueError):
        bf.mac_bytes("not-a-mac")
    with pytest.raises(ValueError):
        bf.split(b"x" * 4000, 1, MAC, 23)
