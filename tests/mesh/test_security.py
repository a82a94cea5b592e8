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


def test_replay_window_accepts_every_fresh_sequence_and_refuses_every_replay():
    g = ReplayGuard(window=8, max_skew_s=0)
    fresh = list(range(1, 21))
    assert [g.check("a", 1, s, 0, 0) for s in fresh] == [None] * 20  # in order: all new
    assert [g.check("a", 1, s, 0, 0) for s in fresh] == ["replayed"] * 20
    g = ReplayGuard(window=8, max_skew_s=0)
    assert g.check("a", 1, 100, 0, 0) is None
    late = list(range(99, 91, -1))  # 1 to 8 behind the highest: inside the window
    assert [g.check("a", 1, s, 0, 0) for s in late] == [None] * 8
    assert [g.check("a", 1, s, 0, 0) for s in late] == ["replayed"] * 8
    assert g.check("a", 1, 91, 0, 0) == "replayed"  # 9 behind: outside, refused though never seen


def test_replay_window_edge_after_a_jump_of_exactly_the_window():
    g = ReplayGuard(window=8, max_skew_s=0)
    assert g.check("a", 1, 100, 0, 0) is None
    assert g.check("a", 1, 108, 0, 0) is None
    assert g.check("a", 1, 100, 0, 0) == "replayed"  # 8 behind, inside the window, seen
    assert g.check("a", 1, 101, 0, 0) is None  # 7 behind, never seen
    assert g.check("a", 1, 117, 0, 0) is None  # a jump past the window forgets everything...
    assert g.check("a", 1, 108, 0, 0) == "replayed"  # ...which is then too old anyway


@given(st.lists(st.integers(1, 30), min_size=1, max_size=60), st.integers(1, 8))
def test_replay_window_matches_its_definition(seqs, window):
    """Accepted exactly when never seen and no more than ``window`` behind the highest."""
    g = ReplayGuard(window=window, max_skew_s=0)
    seen: set[int] = set()
    highest = None
    for s in seqs:
        fresh = s not in seen and (highest is None or s >= highest - window)
        assert (g.check("n", 7, s, 0, 0) is None) == fresh, (s, sorted(seen), highest)
        if fresh:
            seen.add(s)
            highest = s if highest is None else max(highest, s)


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
