"""Integration tests drive real event loops: fail a test whose loop was
blocked (a synchronous database call or file I/O inside a coroutine) for
longer than SLOW_CALLBACK_S, as asyncio's debug mode reports it."""

from __future__ import annotations

import asyncio
import logging

import pytest

SLOW_CALLBACK_S = 0.25


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.reports.append(message)


@pytest.fixture(autouse=True)
async def no_blocking_in_the_event_loop():
    loop = asyncio.get_running_loop()
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    try:
        yield
    finally:
        loop.set_debug(False)
        logger.removeHandler(handler)
    assert not handler.reports, f"the event loop was blocked: {handler.reports}"
