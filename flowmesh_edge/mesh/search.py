"""Distributed search: a query broadcast to every member, answers routed back.

A SEARCH_QUERY goes to everyone; on each member, every handler registered
with ``node.on(MessageType.SEARCH_QUERY, fn)`` is called (sync or async), and
each result that is not None goes back to the asker as a SEARCH_RESULT. The
asker collects the answers that arrive within its timeout.

An application may answer one search type itself (``answer_with``): the
registry answers ``embedding_search`` (registry.py). Its answerer returns a
list of results, each sent as its own SEARCH_RESULT (a long answer in parts
that each fit a datagram); the user handlers are called as well.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from .application import Application, MeshMessage, call_handler
from .wire import MessageType


@dataclass(frozen=True)
class SearchResult:
    node_id: str
    result: object
    hops: int


class Search(Application):
    types = frozenset({MessageType.SEARCH_QUERY, MessageType.SEARCH_RESULT})

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[str, list[SearchResult]] = {}
        self._answerers: dict[str, Callable[[MeshMessage], object]] = {}

    def answer_with(self, search_type: str, answerer: Callable[[MeshMessage], object]) -> None:
        """Answer queries of ``search_type`` with ``answerer(message)`` (sync or async): a
        list of results."""
        self._answerers[search_type] = answerer

    async def query(self, query: dict, search_type: str = "search",
                    timeout: float = 1.0) -> list[SearchResult]:
        query_id = f"{self.host.node_id}:{next(self._ids)}"
        self._pending[query_id] = results = []
        self.host.originate(MessageType.SEARCH_QUERY,
                            {"query_id": query_id, "search_type": search_type, "query": query})
        try:
            await asyncio.sleep(timeout)
        finally:
            del self._pending[query_id]
        return results

    def receive(self, message: MeshMessage) -> bool:
        if message.type == MessageType.SEARCH_RESULT:
            results = self._pending.get(str(message.payload.get("query_id")))
            if results is not None:
                results.append(SearchResult(message.origin, message.payload.get("result"), message.hops))
            return True
        self.host.spawn(self._answer(message))
        return False  # the handlers are called by _answer, for their answers

    async def _answer(self, message: MeshMessage) -> None:
        query_id = message.payload.get("query_id")
        answerer = self._answerers.get(str(message.payload.get("search_type")))
        if answerer is not None:
            for result in await call_handler(answerer, message) or ():
                self.host.send_routed(MessageType.SEARCH_RESULT, message.origin,
                                      {"query_id": query_id, "result": result})
        for handler in self.host.handlers(MessageType.SEARCH_QUERY):
            result = await call_handler(handler, message)
            if result is not None:
                self.host.send_routed(MessageType.SEARCH_RESULT, message.origin,
                                      {"query_id": query_id, "result": result})
