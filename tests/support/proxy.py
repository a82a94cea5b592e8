"""A loopback TCP proxy to the test server's Unix socket that can be cut.

It listens on 127.0.0.1 only. ``down()`` drops every open connection and
refuses new ones (they are accepted and closed at once, like a crashed
server); ``up()`` lets traffic through again. That gives tests a real
database outage without stopping the shared test server.

``silent()`` is the other way a path dies: the connections open at that
moment stay open but nothing goes through them any more, in either
direction (bytes are read and dropped, no reset is sent, like a NAT entry
that expired), while new connections work normally. Only a deadline on the
client's side notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path


class PgProxy:
    def __init__(self, socket_path: Path):
        self.socket_path = str(socket_path)
        self.port: int | None = None
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        #: One flag per open connection; set, its bytes are dropped.
        self._muted: set[asyncio.Event] = set()
        #: Bytes dropped by silenced connections (a test can see the client tried).
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> PgProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        self._writers |= {writer, up_writer}
        muted = asyncio.Event()
        self._muted.add(muted)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if muted.is_set():
                        self.dropped += len(data)
                        continue
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            self._muted.discard(muted)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def _set(self, up: bool) -> None:
        def apply() -> None:
            self._up = up
            if not up:
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()

        self._loop.call_soon_threadsafe(apply)

    def down(self) -> None:
        self._set(False)

    def silent(self) -> int:
        """Stop forwarding on every open connection, without closing any;
        new connections still work. Returns how many were silenced."""

        async def apply() -> int:
            for muted in self._muted:
                muted.set()
            return len(self._muted)

        # waited for, so that when this returns the connections are silent
        return asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout=5)

    def up(self) -> None:
        self._set(True)

    def close(self) -> None:
        async def shutdown() -> None:
            for w in list(self._writers):
                w.transport.abort()
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
