"""Mesh tests must clean up after themselves: no leaked threads or tasks.

Hypothesis runs under the ``mesh`` profile: no per-example deadline (a busy
two-core machine shared with other work makes timing flaky, and speed is the
benchmarks' business), and a fixed number of examples so that a run costs
the same every time. Tests that need more or fewer say so with ``@settings``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import settings

settings.register_profile("mesh", deadline=None, max_examples=100, print_blob=True)
settings.load_profile("mesh")


@pytest.fixture(autouse=True)
def no_leaked_mesh_threads():
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t.name for t in threading.enumerate()
              if t.ident not in before and t.name.startswith(("mesh-", "pg-proxy")) and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks():
    yield
    current = asyncio.current_task()
    await asyncio.sleep(0)
    leaked = [t.get_name() for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leaked, f"tasks left running: {leaked}"
