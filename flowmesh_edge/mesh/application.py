"""Application protocols: what the mesh carries, plugged into the engine.

The engine (``MeshNode``) moves envelopes: it originates broadcasts and routed
messages, drops duplicates and loops, and hands each new envelope to the
application that owns its message type, then to the handlers users registered
with ``node.on(type, handler)``. Alerts, search and state sync are
applications; a new one subclasses :class:`Application`, names its types and
is added with ``node.register(app)``: the engine does not change.

What an application may ask of the engine is :class:`Host`; nothing else.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .wire import Envelope, MessageType

if TYPE_CHECKING:
    from .config import MeshConfig
    from .membership import MemberEvent, MemberList

log = logging.getLogger("flowmesh_edge.mesh")


@dataclass(frozen=True)
class MeshMessage:
    """What a handler receives."""

    type: MessageType
    origin: str
    payload: dict
    message_id: int
    path: tuple[str, ...] = ()
    sender: str = ""  #: the member that handed it to us (last hop)
    received_at: float = 0.0  #: wall-clock time

    @property
    def source_node_id(self) -> str:
        """The origin, under the name the first mesh API gave it."""
        return self.origin

    @property
    def hops(self) -> int:
        return len(self.path) + 1


Handler = Callable[[MeshMessage], object]


class Host(Protocol):
    """The engine, as an application sees it."""

    node_id: str
    config: MeshConfig
    members: MemberList
    incarnation: int

    def now(self) -> float:
        """Loop time, seconds (monotonic)."""

    def originate(self, mtype: MessageType, payload: dict) -> Envelope:
        """Broadcast a new message of ours to every member."""

    def send_routed(self, mtype: MessageType, destination: str, payload: dict) -> Envelope:
        """Send a new message of ours to one member, through others if need be."""

    def send_envelope(self, mtype: MessageType, env: Envelope) -> None:
        """(Re)send an envelope toward ``env.destination``."""

    def handlers(self, mtype: MessageType) -> list[Handler]:
        """The user handlers registered for ``mtype``."""

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run ``coro`` as a task the node cancels when it stops."""

    def drop(self, reason: str) -> None:
        """Count a dropped message under ``reason``."""


class Application:
    """An application protocol: owns the envelopes of ``types``."""

    #: Message types this application handles; one owner per type.
    types: ClassVar[frozenset[MessageType]] = frozenset()

    def attach(self, host: Host) -> None:
        """Called once, when registered on a node."""
        self.host = host

    def receive(self, message: MeshMessage) -> bool:
        """A new message of one of ``types`` arrived.

        Return True to hand it on to the user handlers (``node.on``), False
        when the application consumed it.
        """
        return True

    def duplicate(self, message: MeshMessage) -> None:
        """A copy of a message already received arrived again (e.g. resent)."""

    def member_event(self, event: MemberEvent) -> None:
        """A member joined, was suspected, died, left, recovered or was removed."""

    def close(self) -> None:
        """The node stops."""


def run_handler(spawn: Callable[[Coroutine[Any, Any, object]], None], handler: Callable, *args) -> None:
    """Call a user handler on the receive path: a sync one at once, an async one as a
    task (``spawn``); an error is logged, never raised into the engine."""
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            spawn(call_handler(lambda: result))
    except Exception:
        log.exception("mesh: handler %r failed", handler)


async def call_handler(handler: Callable, *args) -> object:
    """Call a sync or async handler; its error is logged and gives None."""
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except Exception:
        log.exception("mesh: handler %r failed", handler)
        return None
