"""Application messages in and out: the engine's side of the envelopes.

Out: a broadcast is queued for the gossip rounds; a message for one member
goes straight to it, through the next hop the route table names, or (no way
known) by flooding, and the path it travels teaches the way back.

In: ``envelopes.py`` decides (duplicate, loop, hop limit, forward, deliver);
this carries the decision out. A delivered message goes to the application
that owns its type (``application.py``), then, unless the application
consumed it, to the handlers users registered with ``node.on``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .application import Application, Handler, MeshMessage
from .envelopes import Action, Envelopes
from .membership import DEAD
from .wire import ENVELOPE_TYPES, Envelope, Frame, MessageType, decode_envelope, encode_envelope

if TYPE_CHECKING:
    from .address import Address
    from .node import MeshNode

log = logging.getLogger("flowmesh_edge.mesh")


class Messaging:
    def __init__(self, node: MeshNode, envelopes: Envelopes, call: Callable[..., None]):
        self.node = node
        self.envelopes = envelopes
        self._call = call  #: how user handlers are called (sync, or as a task when async)
        self.apps: dict[MessageType, Application] = {}
        self.handlers: dict[MessageType, list[Handler]] = {}
        self.routed = 0  #: messages of ours sent through a next hop

    def register(self, app: Application) -> None:
        taken = [t.name for t in app.types if t in self.apps or t not in ENVELOPE_TYPES]
        if taken:
            raise ValueError(f"message types already handled or not envelopes: {', '.join(taken)}")
        self.apps.update(dict.fromkeys(app.types, app))

    def applications(self) -> list[Application]:
        return list(dict.fromkeys(self.apps.values()))

    # -- out -----------------------------------------------------------------------------
    def originate(self, mtype: MessageType, payload: dict) -> Envelope:
        env = self.envelopes.new(payload)
        entry = self.node.dissemination.entry(mtype, env)
        if entry is None:
            raise ValueError(f"{mtype.name} payload too large for one datagram")
        self.node.dissemination.queue_message(env, entry)
        return env

    def send_routed(self, mtype: MessageType, destination: str, payload: dict) -> Envelope:
        env = self.envelopes.new(payload, destination)
        self.send_envelope(mtype, env)
        return env

    def send_envelope(self, mtype: MessageType, env: Envelope) -> None:
        node = self.node
        hop = node.route_table.next_hop(env.destination, self._reachable)
        if hop is None:
            self._flood(mtype, env)
            return
        if hop != env.destination:
            self.routed += 1
        node.send_to(mtype, encode_envelope(env), hop, replay=True)

    def _reachable(self, node_id: str) -> bool:
        m = self.node.members.get(node_id)
        return m is not None and m.status != DEAD

    def _flood(self, mtype: MessageType, env: Envelope) -> None:
        entry = self.node.dissemination.entry(mtype, env)
        if entry is None:  # its path grew past what a gossip datagram holds
            self.node.drop("too_large")
            return
        self.node.dissemination.queue_message(env, entry)

    # -- in ------------------------------------------------------------------------------
    def on_frame(self, frame: Frame, addr: Address) -> None:
        """The dispatch table's entry for every envelope type sent in its own frame."""
        self.on_envelope(frame.type, decode_envelope(frame.body), frame.sender)

    def on_envelope(self, mtype: MessageType, env: Envelope, sender: str) -> None:
        """An envelope handed to us by ``sender`` (in its own frame or in gossip)."""
        decision = self.envelopes.receive(env, sender)
        if decision.route is not None:
            self.node.route_table.learn(*decision.route)
        action = decision.action
        if action in (Action.LOOP, Action.HOP_LIMIT):
            self.node.drop(action.value)
        elif action == Action.DUPLICATE:
            app = self.apps.get(mtype)
            if app is not None:
                app.duplicate(self._message(mtype, env, sender))
        elif action == Action.FORWARD:
            assert decision.onward is not None
            self.send_envelope(mtype, decision.onward)
        elif action == Action.DELIVER:
            if decision.onward is not None:
                self._flood(mtype, decision.onward)
            message = self._message(mtype, env, sender)
            app = self.apps.get(mtype)
            if app is None or app.receive(message):
                for handler in self.handlers.get(mtype, ()):
                    self._call(handler, message)

    def _message(self, mtype: MessageType, env: Envelope, sender: str) -> MeshMessage:
        return MeshMessage(mtype, env.origin, env.payload, env.message_id, env.path, sender,
                           self.node.wall())
