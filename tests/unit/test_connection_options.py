"""What every connection is opened with, and what the agent's log shows of a URL."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flowmesh import database, settings
from flowmesh.errors import redact_secrets
from flowmesh_edge.agent import ShipperThread


def test_a_dead_path_fails_instead_of_hanging():
    options = database.connection_options("flowmesh-edge", call_timeout_s=2.5)
    assert options["keepalives"] == 1
    assert (options["keepalives_idle"], options["keepalives_interval"], options["keepalives_count"]) == (
        settings.KEEPALIVES_IDLE_S, settings.KEEPALIVES_INTERVAL_S, settings.KEEPALIVES_COUNT)
    assert options["tcp_user_timeout"] == 2500  # milliseconds
    assert options["connect_timeout"] == 3  # whole seconds, never above the call timeout
    assert options["prepare_threshold"] is None  # transaction poolers cannot keep them


def test_the_connect_timeout_is_the_shared_one_and_at_least_libpqs_minimum():
    assert database.connection_options("x")["connect_timeout"] == settings.CONNECT_TIMEOUT_S
    assert database.connection_options("x", call_timeout_s=0.2)["connect_timeout"] == 2


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://edge:s3cret@db:5432/flowmesh", "postgresql://edge:***@db:5432/flowmesh"),
    ("postgresql://db/flowmesh?password=s3cret&sslmode=require",
     "postgresql://db/flowmesh?password=***&sslmode=require"),
    ("host=db password='s 3cret' user=edge", "host=db password=*** user=edge"),
])
def test_the_log_never_shows_a_password(url, shown):
    assert redact_secrets(url) == shown


async def test_the_shipper_thread_runs_calls_in_order_and_never_holds_exit():
    thread = ShipperThread()
    order: list[int] = []
    first = thread.run(lambda: order.append(1) or threading.current_thread())
    second = thread.run(lambda: order.append(2))
    failing = thread.run(lambda: 1 / 0)
    worker = await first
    await second
    with pytest.raises(ZeroDivisionError):
        await failing
    thread.close()
    assert order == [1, 2] and worker.daemon and worker is not threading.current_thread()
    await asyncio.to_thread(worker.join, 5)
    assert not worker.is_alive()

