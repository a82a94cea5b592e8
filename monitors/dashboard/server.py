"""uvicorn for the dashboard, stopped cleanly.

Server-Sent Event streams never end by themselves, and uvicorn's graceful
shutdown waits for every response to finish: on SIGINT/SIGTERM (or
:meth:`stop`) the streams are ended first, so the server stops at once.
"""

from __future__ import annotations

import asyncio
import signal

import uvicorn
from starlette.applications import Starlette

#: Seconds uvicorn waits for open requests at shutdown before cancelling them.
GRACEFUL_SHUTDOWN_S = 3


class DashboardServer(uvicorn.Server):
    def __init__(self, app: Starlette, host: str, port: int, *, log_level: str = "warning"):
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                        lifespan="on", proxy_headers=False, server_header=False,
                                        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    @property
    def port(self) -> int:
        """The port listened on (the kernel's pick when asked for 0)."""
        return self.servers[0].sockets[0].getsockname()[1]

    def _end_streams(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.app.state.dashboard.live.close_streams)

    def handle_exit(self, sig, frame) -> None:
        """SIGINT/SIGTERM: stop (a second Ctrl-C forces it). Unlike uvicorn's own, the
        signal is not raised again afterwards: a requested stop exits 0."""
        self._end_streams()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    def stop(self) -> None:
        """Stop serving; callable from any thread."""
        self._end_streams()
        self.should_exit = True
