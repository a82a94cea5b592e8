from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowmesh_edge.mesh.security import MacKey, ReplayGuard


def test_mac_detects_any_change_and_a_wrong_key():
    key = MacKey("correct horse battery staple")
    data = b"frame bytes"
    tag = key.sign(data)
    assert key.verify(data, tag)
    assert not key.verify(b"frame bytez", tag)
    assert not key.verify(data, bytes(16))
    assert not MacKey("another key, also long").verify(data, tag)


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        MacKey("short")


def test_replay_window():
    g = ReplayGuard(window=8, max_skew_s=60)
    assert g.check("a", 1, 5, 100, 100) is None
    assert g.check("a", 1, 5, 100, 100) == "replayed"
    assert g.check("a", 1, 3, 100, 100) is None  # late but new
    assert g.check("a", 1, 3, 100, 100) == "replayed"
    assert g.check("a", 1, 20, 100, 100) is None
    assert g.check("a", 1, 11, 100, 100) == "replayed"  # older than the window
    assert g.check("a", 0, 99, 100, 100) == "replayed"  # an older incarnation
    assert g.check("a", 2, 1, 100, 100) is None  # a restart resets the window
    assert g.check("b", 1, 1, 100, 200) == "skew"


@given(st.permutations(list(range(1, 65))))
def test_each_sequence_accepted_exactly_once_in_any_order(order):
    g = ReplayGuard(window=64, max_skew_s=0)
    accepted = [s for s in order if g.check("n", 7, s, 0, 0) is None]
    assert sorted(accepted) == sorted(set(accepted))
    assert all(g.check("n", 7, s, 0, 0) == "replayed" for s in order)


def test_sender_table_is_bounded():
    g = ReplayGuard(max_senders=10)
    for i in range(50):
        g.check(f"n{i}", 1, 1, 0, 0)
    assert len(g._state) == 10
