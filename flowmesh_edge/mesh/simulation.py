"""Many-node meshes in one process, in virtual time.

``run_virtual(main())`` runs a coroutine on an event loop whose clock jumps
forward whenever the loop would wait, so a 10-minute scenario on the
in-memory network takes seconds and, with seeded randomness, gives the same
result every run. Only in-memory transports belong there: real sockets would
see no time pass.

Nodes started by ``start_mesh`` read the wall clock from the loop too
(``virtual_wall_clock``), so what hangs on it (a node's start incarnation,
frame timestamps) follows virtual time: a node restarted a virtual minute
later starts a minute's worth of incarnations higher, as a real one would.

``start_mesh`` starts n nodes on a network and joins them through the first.
A node given several networks (``start_node(id, [lan, relay])``) has one
transport on each: several paths, for the connection train (paths.py).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Sequence
from typing import TypeVar

from .address import Address
from .config import MeshConfig
from .node import MeshNode
from .transports.memory import InMemoryNetwork

T = TypeVar("T")

#: Longest real wait at a time while a worker thread runs (its end wakes the loop sooner).
_THREAD_POLL_S = 0.05


class _FastForwardSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):
        if self.loop is not None and self.loop.threads_running:
            # work in a worker thread takes no virtual time: wait for it for real (its
            # completion wakes the loop), with the clock stopped, so that a timeout cannot
            # expire merely because the thread is slower than the loop
            return super().select(_THREAD_POLL_S if timeout is None else min(timeout, _THREAD_POLL_S))
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
        self.threads_running = 0

    def time(self) -> float:
        return self.virtual_now

    def run_in_executor(self, executor, func, *args):  # asyncio.to_thread comes here
        future = super().run_in_executor(executor, func, *args)
        self.threads_running += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future) -> None:
        self.threads_running -= 1


#: Wall-clock time (Unix seconds) at virtual loop time 0.
VIRTUAL_EPOCH = 1_700_000_000.0


def virtual_wall_clock() -> float:
    """Wall-clock seconds on the running loop: the epoch plus its (virtual) time."""
    return VIRTUAL_EPOCH + asyncio.get_running_loop().time()


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
        nodes.append(await start_node(f"{prefix}-{i:03d}", network, mesh_key=mesh_key, config=config,
                                      peers=[nodes[0].address] if nodes else [], seed=seed + i))
    return nodes


async def start_node(node_id: str, network: InMemoryNetwork | Sequence[InMemoryNetwork], *,
                     mesh_key: bytes = b"simulation-mesh-key!",
                     config: MeshConfig | None = None, peers: list[Address] | None = None,
                     seed: int | None = None, wall_clock: Callable[[], float] | None = None) -> MeshNode:
    """Start one node on ``network`` (a new process, as far as the mesh can tell).

    Its wall clock is ``virtual_wall_clock`` on a virtual-time loop, unless given.
    """
    networks = [network] if isinstance(network, InMemoryNetwork) else list(network)
    transports = [net.transport() for net in networks]
    wall = wall_clock
    if wall is None and isinstance(asyncio.get_running_loop(), VirtualTimeLoop):
        wall = virtual_wall_clock
    node = MeshNode(node_id, mesh_key=mesh_key, config=config,
                    transport=transports[0] if len(transports) == 1 else transports, peers=peers or [],
                    seed=seed, wall_clock=wall)
    await node.start()
    return node


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


async def stop_all(nodes: Sequence[MeshNode]) -> None:
    """Stop every node, each saying goodbye."""
    for node in nodes:
        await node.stop()


async def crash(node: MeshNode) -> None:
    """Stop a node without telling anyone, as a power cut would."""
    await node.stop(leave=False)
