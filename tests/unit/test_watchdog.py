"""The process's deadline keeper: fires what passes, never what was disarmed,
and never runs a callback after disarm() returned."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from flowmesh_edge.watchdog import Watchdog


def test_a_deadline_that_passes_runs_its_callback_once():
    dog, runs, fired = Watchdog(), [], threading.Event()
    alarm = dog.arm(0.05, lambda: (runs.append(1), fired.set()))
    assert fired.wait(2)
    time.sleep(0.2)  # time enough for a second run, if there were one
    assert runs == [1]
    assert alarm.disarm() is True  # it ran
    assert alarm.disarm() is True  # asking again changes nothing


def test_a_disarmed_deadline_never_fires():
    dog, fired = Watchdog(), threading.Event()
    alarm = dog.arm(0.05, fired.set)
    assert alarm.disarm() is False
    assert not fired.wait(0.3)


def test_an_earlier_deadline_armed_later_wakes_the_keeper():
    dog, early = Watchdog(), threading.Event()
    late = dog.arm(5, lambda: None)
    time.sleep(0.05)  # the keeper now sleeps until the late one
    dog.arm(0.05, early.set)
    assert early.wait(2)  # long before the keeper's own wake-up
    assert late.disarm() is False


def test_disarm_waits_for_a_callback_in_progress():
    dog = Watchdog()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(2)
        finished.set()

    alarm = dog.arm(0.01, slow)
    assert started.wait(2)
    threading.Timer(0.2, release.set).start()
    assert alarm.disarm() is True
    assert finished.is_set()  # disarm returned only after the callback ended


def test_a_failing_callback_does_not_stop_the_keeper(caplog):
    dog, fired = Watchdog(), threading.Event()

    def broken() -> None:
        raise RuntimeError("boom")

    dog.arm(0.01, broken)
    dog.arm(0.05, fired.set)
    assert fired.wait(2)
    assert "callback failed" in caplog.text


def test_many_deadlines_fire_in_order_and_disarmed_ones_are_skipped():
    dog, fired = Watchdog(), []
    lock = threading.Lock()
    alarms = []
    for i in range(50):
        def note(i=i) -> None:
            with lock:
                fired.append(i)
        alarms.append(dog.arm(0.3 + i * 0.002, note))
    for alarm in alarms[1::2]:
        alarm.disarm()
    deadline = time.monotonic() + 3
    while len(fired) < 25 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fired == list(range(0, 50, 2))


def test_a_keeper_that_could_not_start_is_started_by_the_next_arm(monkeypatch):
    dog, fired = Watchdog(), threading.Event()
    real_start = threading.Thread.start

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError):
        dog.arm(0.01, fired.set)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    dog.arm(0.05, fired.set)
    assert fired.wait(2)


def test_a_deadline_beyond_what_a_wait_takes_does_not_stop_the_keeper():
    dog, fired = Watchdog(), threading.Event()
    far = dog.arm(threading.TIMEOUT_MAX * 2, lambda: None)
    time.sleep(0.05)  # the keeper waits for it
    dog.arm(0.05, fired.set)
    assert fired.wait(2)
    assert far.disarm() is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_heap_is_locked_keeps_deadlines_of_its_own():
    dog = Watchdog()
    os.register_at_fork(after_in_child=dog._after_fork)
    dog.arm(30, lambda: None).disarm()  # the parent's keeper runs
    with dog._changed:  # as when another thread arms at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: that lock would be held for ever, and no keeper runs
            signal.alarm(5)  # a child that hangs dies
            fired = threading.Event()
            dog.arm(0.05, fired.set)
            os._exit(0 if fired.wait(2) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
