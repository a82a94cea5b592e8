"""The supervisor of `flowmesh up` with small real children: what it does when one
exits, when one will not stop, and with what a child started itself."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time

import psutil

from flowmesh.stack import EXIT_CHILD_FAILED, Child, Supervisor
from tests.conftest import wait_for


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


STUBBORN = python("import signal, time\n"
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "print('ignoring SIGTERM', flush=True)\n"
                  "time.sleep(60)")
#: Starts a grandchild (which would be left behind if only the child were signalled).
PARENT = python("import subprocess, sys, time\n"
                "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                "print('grandchild', p.pid, flush=True)\n"
                "time.sleep(60)")
QUITTER = python("import time\n"
                 "print('line one', flush=True)\n"
                 "print('x' * 300000, flush=True)\n"  # far past a line's limit: must not wedge the pipe
                 "print('line two', flush=True)\n"
                 "time.sleep(1.5)\n"
                 "raise SystemExit(3)")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_child_exiting_stops_the_rest_killing_what_ignores_sigterm_and_its_descendants():
    lines: list[str] = []
    children = [Child("stubborn", STUBBORN), Child("parent", PARENT), Child("quitter", QUITTER)]
    began = time.monotonic()
    code = await Supervisor(children, lines.append, stop_timeout_s=1.0).run()
    took = time.monotonic() - began

    assert code == EXIT_CHILD_FAILED
    assert took < 20, lines  # 1.5 s, 1 s of grace, and starting three interpreters on a busy machine
    # each child's lines carry its name, padded to the longest
    assert "quitter  | line one" in lines and "quitter  | line two" in lines
    assert "stubborn | ignoring SIGTERM" in lines
    assert "quitter exited with code 3: stopping the others" in lines
    assert "stubborn did not stop within 1s: killing it" in lines
    assert lines[-3:] == ["stubborn stopped (exit code -9)", "parent stopped (exit code -15)",
                          "quitter stopped (exit code 3)"]
    grandchild = int(next(line for line in lines if line.startswith("parent   | grandchild")).split()[-1])
    pids = [c.process.pid for c in children] + [grandchild]
    # the grandchild was in its parent's process group: signalled with it
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=5)


#: Exits at once, leaving behind a grandchild that holds its stdout open (asyncio's
#: ``Process.wait()`` would not return until that grandchild ends, 30 s later).
FORKER = ["sh", "-c", "sleep 30 & echo grandchild $!; exit 3"]
#: The same, with a grandchild that ignores SIGTERM (inherited by sleep through exec).
STUBBORN_FORKER = ["sh", "-c", "(trap '' TERM; exec sleep 30) & echo grandchild $!; exit 3"]
SLEEPER = python("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")


async def supervise(children: list[Child], stop_timeout_s: float) -> tuple[int, list[tuple[float, str]]]:
    """Run the supervisor, bounded: (exit code, its lines with the time each was printed).
    Whatever the supervisor leaves behind is killed afterwards, not to outlive the test."""
    lines: list[tuple[float, str]] = []
    try:
        code = await asyncio.wait_for(
            Supervisor(children, lambda line: lines.append((time.monotonic(), line)),
                       stop_timeout_s=stop_timeout_s).run(), timeout=10)
    finally:
        for pid in grandchildren(lines):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    return code, lines


def grandchildren(lines: list[tuple[float, str]]) -> list[int]:
    return [int(line.split()[-1]) for _, line in lines if re.match(r"\w+ +\| grandchild \d+$", line)]


def printed(lines: list[tuple[float, str]], text: str) -> float:
    """When ``text`` was printed."""
    return next(at for at, line in lines if line == text)


async def test_a_child_that_exits_is_noticed_though_what_it_started_holds_its_output_open():
    children = [Child("sleeper", SLEEPER), Child("forker", FORKER)]
    code, lines = await supervise(children, stop_timeout_s=5.0)
    text = [line for _, line in lines]

    assert code == EXIT_CHILD_FAILED, text
    # noticed from its pid, soon after its last line, not when its grandchild closes the pipe
    [grandchild] = grandchildren(lines)
    noticed = printed(lines, "forker exited with code 3: stopping the others")
    assert noticed - printed(lines, f"forker  | grandchild {grandchild}") < 2, text
    assert printed(lines, "sleeper stopped (exit code -15)") - noticed < 2, text
    assert "forker stopped (exit code 3)" in text
    # the exited child's process group was signalled too: its grandchild went with it
    wait_for(lambda: all(gone(pid) for pid in [grandchild] + [c.process.pid for c in children]),
             timeout=5)


async def test_what_an_exited_child_started_is_killed_when_it_ignores_sigterm():
    children = [Child("sleeper", SLEEPER), Child("forker", STUBBORN_FORKER)]
    code, lines = await supervise(children, stop_timeout_s=1.0)
    text = [line for _, line in lines]

    assert code == EXIT_CHILD_FAILED, text
    [grandchild] = grandchildren(lines)
    assert "what forker started did not stop within 1s: killing it" in text
    assert "sleeper stopped (exit code -15)" in text
    wait_for(lambda: gone(grandchild), timeout=5)
