"""Addresses name their transport; the text form round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowmesh_edge.mesh.address import NOWHERE, Address


def test_text_form_round_trips_ipv4_ipv6_and_names():
    for text in ("udp:127.0.0.1:9999", "udp:[::1]:9999", "ws:relay.example.org:443", "ble-gatt:cam-01:0"):
        assert str(Address.parse(text)) == text
    assert Address.parse("udp:[fe80::1]:5") == Address("udp", "fe80::1", 5)


@given(st.sampled_from(["udp", "ws", "relay", "ble"]), st.from_regex(r"[a-z0-9.:-]{0,30}", fullmatch=True),
       st.integers(0, 65535))
def test_any_address_round_trips_through_text(transport, host, port):
    address = Address(transport, host, port)
    assert Address.parse(str(address)) == address


def test_host_port_pairs_are_udp_addresses():
    assert Address.of(("127.0.0.1", 10001)) == Address("udp", "127.0.0.1", 10001)
    assert Address.of("udp:10.0.0.1:1") == Address.udp("10.0.0.1", 1)
    same = Address.udp("h", 1)
    assert Address.of(same) is same


@pytest.mark.parametrize("text", ["127.0.0.1:9999", "udp:127.0.0.1", "udp:host:port", "UDP:h:1",
                                  "udp:h:70000"])
def test_malformed_addresses_are_refused_with_the_form_expected(text):
    with pytest.raises(ValueError):
        Address.parse(text)


def test_wildcard_hosts_and_nowhere():
    assert Address.udp("0.0.0.0", 9999).is_wildcard and Address.udp("::", 1).is_wildcard
    assert not Address.udp("127.0.0.1", 9999).is_wildcard
    assert Address.udp("0.0.0.0", 9999).with_host("") == Address.udp("", 9999)
    assert NOWHERE.transport == "" and NOWHERE.port == 0


def test_addresses_are_values():
    assert Address.udp("h", 1) == Address("udp", "h", 1)
    assert len({Address.udp("h", 1), Address.udp("h", 1)}) == 1
    assert Address.udp("h", 1) != Address("ws", "h", 1)
