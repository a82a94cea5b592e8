"""The process's deadline keeper: fires what passes, never what was disarmed,
and never runs a callback after disarm() returned."""

from __future__ import annotations

import threading
import time

from flowmesh_edge.watchdog import Watchdog


def test_a_deadline_that_passes_runs_its_callback_once():
    dog, fired = Watchdog(), threading.Event()
    alarm = dog.arm(0.05, fired.set)
    assert fired.wait(2)
    assert alarm.disarm() is True  # it ran
    assert alarm.disarm() is True  # asking again changes nothing


def test_a_disarmed_deadline_never_fires():
    dog, fired = Watchdog(), threading.Event()
    alarm = dog.arm(0.05, fired.set)
    assert alarm.disarm() is False
    assert not fired.wait(0.3)


def test_an_earlier_deadline_armed_later_fires_first():
    dog, order = Watchdog(), []
    done = threading.Event()
    dog.arm(0.4, lambda: (order.append("late"), done.set()))
    time.sleep(0.05)  # the keeper now sleeps until the late one
    dog.arm(0.05, lambda: order.append("early"))
    assert done.wait(3)
    assert order == ["early", "late"]


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
