"""Deadlines for blocking calls, kept by one thread per process.

A blocking database call on a path that has gone silent never returns by
itself; something else must cut it when its deadline passes. A thread per
call (``threading.Timer``) does that, but starting and joining a thread costs
more than the call it guards when the call is one heartbeat, and a process
simulating thousands of devices (bench/fleet.py) pays it thousands of times a
second. Here one daemon thread keeps every armed deadline in a heap and runs a
deadline's callback when it passes.

The guarantee callers rely on (the same as ``Timer.cancel`` then ``join``):
once :meth:`Alarm.disarm` has returned, the callback is not running and never
will, so the resource it acts on (a connection's socket) may be closed safely.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("flowmesh_edge.watchdog")

_ARMED, _FIRING, _FIRED, _DISARMED = range(4)


class Alarm:
    """One armed deadline; :meth:`disarm` it when the guarded call ends."""

    __slots__ = ("_callback", "_keeper", "_state", "deadline")

    def __init__(self, keeper: Watchdog, deadline: float, callback: Callable[[], None]):
        self._keeper = keeper
        self._callback = callback
        self._state = _ARMED
        #: time.monotonic() at which the callback runs
        self.deadline = deadline

    def disarm(self) -> bool:
        """Cancel the callback, or wait for it to finish if it is running.

        Returns whether it ran (the deadline passed before the call ended).
        """
        with self._keeper._changed:
            if self._state == _ARMED:
                self._state = _DISARMED  # left in the heap; the keeper skips it
                self._callback = None  # holds nothing (a connection) until then
                return False
            while self._state == _FIRING:
                self._keeper._changed.wait()
            return self._state == _FIRED


class Watchdog:
    """A heap of deadlines and the one thread that fires them (started on first use)."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties keep arming order; alarms never compare
        self._thread: threading.Thread | None = None

    def arm(self, timeout: float, callback: Callable[[], None]) -> Alarm:
        """Run ``callback`` (on the watchdog's thread) in ``timeout`` seconds unless disarmed."""
        alarm = Alarm(self, time.monotonic() + timeout, callback)
        with self._changed:
            if self._thread is None or not self._thread.is_alive():
                # started before anything is queued: a start that fails (no
                # thread to be had) fails this call, not every later deadline
                keeper = threading.Thread(target=self._keep, name="flowmesh-watchdog", daemon=True)
                keeper.start()
                self._thread = keeper
            # wake the keeper only when it sleeps past this deadline (or idly):
            # a device arming one deadline per call wakes it about once per call
            wake = not self._heap or alarm.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (alarm.deadline, next(self._order), alarm))
            if wake:
                self._changed.notify_all()
        return alarm

    def _keep(self) -> None:
        with self._changed:
            while True:
                while self._heap and self._heap[0][2]._state == _DISARMED:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._changed.wait()
                    continue
                deadline, _, alarm = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(min(left, threading.TIMEOUT_MAX))
                    continue
                heapq.heappop(self._heap)
                alarm._state = _FIRING
                self._changed.release()
                try:
                    alarm._callback()
                except Exception:  # a failing callback must not stop the keeper
                    log.exception("a deadline's callback failed")
                finally:
                    self._changed.acquire()
                    alarm._state = _FIRED
                    self._changed.notify_all()

    def _after_fork(self) -> None:
        """In a forked child the keeper thread does not exist: start afresh."""
        self._changed = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None


#: The process's watchdog.
WATCHDOG = Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork)
