"""Mesh tests must clean up after themselves: no leaked threads or tasks."""

from __future__ import annotations

import asyncio
import threading

import pytest


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
