"""Reading a child process's output line by line, with bounded waits."""

from __future__ import annotations

import queue
import threading
import time


class Lines:
    """A child's output, line by line, read on a thread so waits stay bounded."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        #: Every line read so far, in order.
        self.all: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        with stream:
            for line in stream:
                self.all.append(line.rstrip("\n"))
                self.lines.put(line.rstrip("\n"))

    def close(self) -> str:
        """Wait for the end of the stream (the child has exited); all of it, as text."""
        self._thread.join(timeout=5)
        return "\n".join(self.all)

    def wait_for(self, predicate, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; saw {seen!r}")
