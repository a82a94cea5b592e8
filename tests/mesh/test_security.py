from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowmesh_edge.mesh.security import MAX_RETIRED, ReplayGuard


def test_replay_window():
    g = ReplayGuard(window=8, max_skew_s=60)
    assert g.check("a", 1, 5, 100, 100) is None
    assert g.check("a", 1, 5, 100, 100) == "replayed"
    assert g.check("a", 1, 3, 100, 100) is None  # late but new
    assert g.check("a", 1, 3, 100, 100) == "replayed"
    assert g.check("a", 1, 20, 100, 100) is None
    assert g.check("a", 1, 11, 100, 100) == "replayed"  # older than the window
    assert g.check("a", 0, 99, 100, 100) == "old_epoch"  # an older boot, while this one talks
    assert g.check("a", 2, 1, 100, 100) is None  # a restart (a later boot) resets the window
    assert g.check("a", 1, 21, 100, 100) == "replayed"  # the boot it replaced is retired
    assert g.check("b", 1, 1, 100, 200) == "skew"


def test_a_lower_epoch_is_a_new_boot_only_once_the_tracked_one_fell_silent():
    g = ReplayGuard(window=8, max_skew_s=60)
    assert g.check("a", 500, 1, 1000, 1000) is None
    assert g.check("a", 400, 1, 1000, 1030) == "old_epoch"  # a restart with a clock behind...
    assert g.check("a", 500, 2, 1000, 1050) is None  # ...but the tracked boot still talks
    assert g.check("a", 400, 2, 1100, 1100) == "old_epoch"  # silent 50 s: not yet
    assert g.check("a", 400, 3, 1111, 1111) is None  # silent over 60 s: a new boot
    assert g.epoch_of("a") == 400
    # the boot it replaced is retired: its frames, even ones it sent others after its
    # last to us and never seen here, are refused while the skew bound lets them by...
    assert g.check("a", 500, 3, 1100, 1112) == "replayed"
    assert g.check("a", 500, 99, 1100, 1150) == "replayed"
    assert g.check("a", 400, 4, 1240, 1240) is None  # ...while the new one goes on
    assert g.check("a", 500, 100, 1100, 1240) == "skew"  # ...and later the skew bound does


def test_without_a_clock_check_a_lower_epoch_is_never_a_new_boot():
    g = ReplayGuard(window=8, max_skew_s=0)
    assert g.check("a", 500, 1, 0, 0) is None
    assert g.check("a", 400, 1, 0, 10**9) == "old_epoch"


@given(st.lists(st.tuples(st.sampled_from([100, 200, 300]), st.integers(1, 12), st.integers(0, 40)),
                min_size=1, max_size=80))
def test_no_frame_is_accepted_twice_whatever_boots_are_replayed_in_whatever_order(frames):
    """Frames of three boots of one node, sent and replayed in any order as time passes
    (each step moves the clock 0-40 s; a frame keeps the clock it was first sent
    with): whatever the guard switches to, it never accepts a frame twice."""
    g = ReplayGuard(window=8, max_skew_s=60)
    now, accepted, sent_at = 0.0, set(), {}
    for epoch, seq, step in frames:
        now += step
        stamp = sent_at.setdefault((epoch, seq), int(now))
        if g.check("n", epoch, seq, stamp, now) is None:
            assert (epoch, seq) not in accepted, (epoch, seq, now)
            accepted.add((epoch, seq))


def test_retired_epochs_are_bounded():
    g = ReplayGuard(window=8, max_skew_s=60)
    for epoch in range(1, 20):
        assert g.check("a", epoch, 1, 0, 0) is None
    assert len(g._state["a"].retired) == MAX_RETIRED


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
