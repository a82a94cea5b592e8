"""A blocking facade over MeshNode for scripts that do not use asyncio.

The node runs on its own event loop in a background thread; every method
hands the call to that loop and waits for the answer. Handlers run on the
mesh thread: keep them short, or hand work to your own threads.

    with BlockingMeshNode("camera_001", mesh_key=key, bind="127.0.0.1",
                          peers=[("127.0.0.1", 10001)]) as node:
        node.start({"fps": 30})
        node.broadcast_alert({"type": "intrusion"}, priority="critical")
"""

from __future__ import annotations

import asyncio
import threading

from .alerts import AlertReport
from .membership import PeerInfo
from .node import MeshNode
from .registry import HashEntry, Hit, MeshSearch
from .search import SearchResult
from .stats import MeshStats
from .wire import MessageType


class BlockingMeshNode:
    def __init__(self, node_id: str, **kwargs):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mesh-{node_id}",
                                        daemon=True)
        self._thread.start()
        self.node: MeshNode = self._call(self._make(node_id, kwargs))

    @staticmethod
    async def _make(node_id: str, kwargs: dict) -> MeshNode:
        return MeshNode(node_id, **kwargs)

    def _call(self, coro, timeout: float | None = 60):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self, fn, *args):
        async def call():
            return fn(*args)
        return self._call(call())

    def start(self, local_state: dict | None = None) -> None:
        self._call(self.node.start(local_state))

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.node.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def peers(self) -> dict[str, PeerInfo]:
        return self._run(self.node.peers)

    def stats(self) -> MeshStats:
        return self._run(self.node.stats)

    def on(self, message_type: MessageType, handler) -> None:
        self._run(self.node.on, message_type, handler)

    def update_state(self, updates: dict) -> int:
        return self._run(self.node.update_state, updates)

    def broadcast_alert(self, alert: dict, priority: str = "normal") -> AlertReport:
        return self._call(self.node.broadcast_alert(alert, priority))

    def broadcast_search_query(self, query: dict, search_type: str = "search",
                               timeout: float = 1.0) -> list[SearchResult]:
        return self._call(self.node.broadcast_search_query(query, search_type, timeout))

    def send(self, node_id: str, payload: dict) -> None:
        self._call(self.node.send(node_id, payload))

    def add_hash(self, hash_value: str, data_type: str, embedding, metadata: dict | None = None,
                 confidence: float | None = None) -> HashEntry:
        return self._run(self.node.add_hash, hash_value, data_type, embedding, metadata, confidence)

    def search_hashes(self, embedding, k: int = 10, data_type: str | None = None,
                      node: str | None = None) -> list[Hit]:
        return self._run(self.node.search_hashes, embedding, k, data_type, node)

    def fetch_embedding(self, hash_value: str, timeout: float = 1.0):
        return self._call(self.node.fetch_embedding(hash_value, timeout))

    def search_mesh(self, embedding, k: int = 10, timeout: float = 1.0, data_type: str | None = None,
                    node: str | None = None) -> MeshSearch:
        return self._call(self.node.search_mesh(embedding, k, timeout, data_type, node))

    @property
    def address(self):
        return self.node.address

    def __enter__(self) -> BlockingMeshNode:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
