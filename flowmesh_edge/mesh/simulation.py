"""Many-node meshes in one process, in virtual time.

``run_virtual(main())`` runs a coroutine on an event loop whose clock jumps
forward whenever the loop would wait, so a 10-minute scenario on the
in-memory network takes seconds and, with seeded randomness, gives the same
result every run. Only in-memory transports belong there: real sockets would
see no time pass.

``start_mesh`` starts n nodes on a network and joins them through the first.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import TypeVar

from .config import MeshConfig
from .node import MeshNode
from .transport import InMemoryNetwork

T = TypeVar("T")


class _FastForwardSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):
        events = super().select(0)
        if not events and timeout and self.loop is not None:
            self.loop.virtual_now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time advances only by what it waits for."""

    def __init__(self) -> None:
        selector = _FastForwardSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now


def run_virtual(coro: Coroutine[object, object, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        # a failed scenario leaves nodes running: cancel them quietly
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def start_mesh(n: int, network: InMemoryNetwork, *, mesh_key: bytes = b"simulation-mesh-key!",
                     config: MeshConfig | None = None, prefix: str = "node", seed: int = 0
                     ) -> list[MeshNode]:
    """Start ``n`` nodes on ``network``, each joining through the first."""
    nodes: list[MeshNode] = []
    for i in range(n):
        transport = network.transport()
        node = MeshNode(f"{prefix}-{i:03d}", port=transport.address[1], mesh_key=mesh_key,
                        bind=transport.address[0], config=config, transport=transport,
                        peers=[nodes[0].address] if nodes else [], seed=seed + i)
        await node.start()
        nodes.append(node)
    return nodes


async def converge(nodes: list[MeshNode], timeout: float = 10.0) -> float:
    """Wait until every node sees every other alive; return the time it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    want = len(nodes) - 1
    while loop.time() - start < timeout:
        if all(sum(p.status == "alive" for p in n.peers().values()) == want for n in nodes):
            return loop.time() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"mesh of {len(nodes)} did not converge within {timeout}s")


async def crash(node: MeshNode) -> None:
    """Stop a node without telling anyone, as a power cut would."""
    await node.stop(leave=False)
