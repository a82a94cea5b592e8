"""The supervisor of `flowmesh up` with small real children: what it does when one
exits, when one will not stop, and with what a child started itself."""

from __future__ import annotations

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
