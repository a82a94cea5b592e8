"""The connection train: every path to each member, probed, ranked, the best one used.

A member may be reachable several ways: Bluetooth LE, the LAN (UDP), a
WebSocket, a relay. For each member this keeps every endpoint known (the
transport address, where it was learned, when a frame last came from it,
its measured round trip), learned from the member's frames, its gossiped
ALIVE (address and endpoints), mDNS, the relay's peer list and saved meshes.

While a member has one endpoint (a mesh on one LAN) none of this costs a
datagram: frames go to that endpoint and SWIM alone watches the member.
With two or more, each endpoint is probed on its own cadence (PATH_PROBE,
answered by PATH_ACK on the same path):

* the path in use every ``path_probe_active_s``; a confirmed standby every
  ``path_probe_standby_s``; a path that stopped answering every
  ``path_probe_active_s`` until it is down, then with backoff from
  ``path_backoff_min_s`` doubling to ``path_backoff_max_s`` (with jitter),
  at most ``path_probe_standby_s`` apart while another path to the member
  works, so that its return is noticed; a member with no working path is
  still probed, ever more rarely; a frame from the member on a down path has
  it probed at once.
* A path is *confirmed* while its last probe was answered, no later than its
  probe interval (as of that answer) plus ``path_trust_s`` ago; *down* after
  ``path_down_after`` unanswered probes in a row. An answer makes the probes
  sent before it moot (lost in a cut that is over), not unanswered.

Frames go on the best confirmed path, by ``path_priority`` then round trip.
While a better path is unproven (new, or answering again after a cut), or
when the path in use stops answering, frames go on both it and the best
confirmed one, as Tailscale keeps sending through DERP while a direct path
is unproven; duplicates are dropped by the receiver's seen-set. Probes of the
failure detector go on every path that is not down, so that a member is
declared dead only when no path to it answers.

When the path in use changes, the messages sent to the member that no probe
has yet proven delivered (routed messages, gossip carrying application
messages such as critical alerts) are sent again on the new path, and the
switch is logged and reported to ``on_path`` handlers.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..backoff import backoff_delay
from .address import Address
from .wire import MessageType, decode_path_probe, encode_path_probe

if TYPE_CHECKING:
    import asyncio

    from .config import MeshConfig

log = logging.getLogger("flowmesh_edge.mesh")

#: How an endpoint was learned, in order of trust when all else is equal.
SOURCES = ("heard", "config", "saved", "gossip", "relay", "mdns", "ble")
#: Probes in flight remembered per endpoint (answers to older ones are ignored).
_OUTSTANDING_MAX = 8


@dataclass
class Endpoint:
    address: Address
    source: str
    #: Wall-clock time a frame from the member last arrived on this path.
    last_seen: float | None = None
    #: Loop time of the last answered probe.
    confirmed_at: float | None = None
    rtt_s: float | None = None
    #: Probes in a row that went unanswered.
    unanswered: int = 0
    next_probe: float = 0.0
    #: Loop time until which the last answer confirms the path: its probe period
    #: as of that answer, plus ``path_trust_s``.
    trusted_until: float = -math.inf
    outstanding: dict[int, float] = field(default_factory=dict)  #: probe id -> loop time sent
    #: Loop time the path went down (None while it is not).
    down_since: float | None = None

    def to_dict(self, state: str) -> dict:
        return {"address": str(self.address), "source": self.source, "state": state,
                "rtt_ms": round(self.rtt_s * 1000, 3) if self.rtt_s is not None else None,
                "last_seen": self.last_seen}


@dataclass
class _Peer:
    node_id: str
    endpoints: dict[Address, Endpoint] = field(default_factory=dict)
    active: Address | None = None
    #: The second path frames go on while the one in use is unconfirmed.
    fallback: Address | None = None
    #: (loop time sent, type, body) of messages not yet proven delivered.
    replay: deque = field(default_factory=deque)


PathHandler = Callable[[str, Address, "Address | None", "float | None"], object]


class ConnectionTrain:
    """Per-member paths. ``host`` is the node: ``now``, ``wall``, ``call_later``,
    ``handles`` (whether one of our transports can send to an address),
    ``send_frame`` and ``path_changed``."""

    def __init__(self, host, config: MeshConfig, rng: random.Random):
        self.host = host
        self.config = config
        self.rng = rng
        self._peers: dict[str, _Peer] = {}
        self._probe_ids = 0
        self._probes: dict[int, tuple[str, Address]] = {}  #: probe id -> (member, endpoint)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.replayed = 0  #: messages sent again on a new path

    # -- learning endpoints ------------------------------------------------------------
    def learn(self, node_id: str, address: Address, source: str, *, replaced: Address | None = None) -> None:
        """``node_id`` may be reachable at ``address``; we will see. ``replaced``: the
        path in use before, now forgotten (reported as the previous one)."""
        if not address.host or address.is_wildcard or not self.host.handles(address):
            return
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(node_id)
        if address in peer.endpoints:
            return
        if len(peer.endpoints) >= self.config.path_endpoints_max:
            stalest = min(peer.endpoints.values(),
                          key=lambda e: (e.confirmed_at or -math.inf, e.last_seen or -math.inf))
            if stalest.address == peer.active:
                return
            self._delete(peer, stalest)
        peer.endpoints[address] = Endpoint(address, source, next_probe=self.host.now())
        if peer.active is None:  # its first path (or its only one, moved): in use, and reported
            peer.active = address
            self.host.path_changed(node_id, address, replaced, None)
        if len(peer.endpoints) == 2:  # from now on this member's paths are probed
            for endpoint in peer.endpoints.values():
                endpoint.next_probe = self.host.now()
        self._wake(self.host.now())

    def learn_member(self, node_id: str, address: Address, endpoints: tuple[Address, ...]) -> None:
        """What a member's ALIVE says about where it is. Endpoints an earlier ALIVE
        named that this one does not (a restart on another port) are forgotten,
        unless they answer."""
        said = {address, *endpoints}
        peer = self._peers.get(node_id)
        previous = peer.active if peer is not None else None
        if peer is not None:
            now = self.host.now()
            for e in list(peer.endpoints.values()):
                # the path in use too: a member that restarted on another port is gone from it
                if e.source == "gossip" and e.address not in said and not self._confirmed(peer, e, now):
                    self._delete(peer, e)
        replaced = previous if peer is not None and peer.active is None else None
        for a in (address, *endpoints):
            self.learn(node_id, a, "gossip", replaced=replaced)

    def heard(self, node_id: str, address: Address) -> None:
        """A frame from ``node_id`` arrived over ``address``."""
        peer = self._peers.get(node_id)
        endpoint = peer.endpoints.get(address) if peer is not None else None
        if endpoint is None:
            if peer is not None and any(e.address.transport == address.transport
                                        and e.unanswered < self.config.path_down_after
                                        for e in peer.endpoints.values()):
                # a multi-homed or wildcard-bound member's other source address: one live
                # path per transport is enough (and costs no probes)
                return
            self.learn(node_id, address, "heard")
            peer = self._peers.get(node_id)
            endpoint = peer.endpoints.get(address) if peer is not None else None
            if endpoint is None:
                return
        endpoint.last_seen = self.host.wall()
        if endpoint.unanswered >= self.config.path_down_after and len(peer.endpoints) > 1:
            # it talks to us again that way: find out now whether we can talk back
            now = self.host.now()
            if endpoint.next_probe > now:
                endpoint.next_probe = now
                self._wake(now)

    def forget(self, node_id: str) -> None:
        peer = self._peers.pop(node_id, None)
        for e in list(peer.endpoints.values()) if peer is not None else ():
            self._delete(peer, e)

    def _delete(self, peer: _Peer, e: Endpoint) -> None:
        del peer.endpoints[e.address]
        if peer.active == e.address:
            peer.active = None  # the next path learned or chosen takes its place
        if peer.fallback == e.address:
            peer.fallback = None
        for probe_id in e.outstanding:
            self._probes.pop(probe_id, None)

    def start(self) -> None:
        """The node started: probe what was learned before (at once: its times were
        taken before the loop's clock was ours)."""
        now = self.host.now()
        for peer in self._peers.values():
            for e in peer.endpoints.values():
                e.next_probe = now
        if any(len(p.endpoints) > 1 for p in self._peers.values()):
            self._wake(now)

    # -- choosing where to send -----------------------------------------------------------
    def plan(self, node_id: str, fallback: Address) -> list[Address]:
        """Where a frame to ``node_id`` goes: one address, or two while a path is unproven."""
        peer = self._peers.get(node_id)
        if peer is None or len(peer.endpoints) < 2:
            if peer is not None and peer.endpoints:
                return [next(iter(peer.endpoints))]
            return [fallback]
        return self._choose(peer)

    def every_path(self, node_id: str, fallback: Address) -> list[Address]:
        """Every path to ``node_id`` that is not down (all of them when all are)."""
        peer = self._peers.get(node_id)
        if peer is None or len(peer.endpoints) < 2:
            return self.plan(node_id, fallback)
        down = self.config.path_down_after
        live = [e.address for e in peer.endpoints.values() if e.unanswered < down]
        return live or list(peer.endpoints)

    def sent(self, node_id: str, mtype: MessageType, body: bytes) -> None:
        """A message to ``node_id`` that must survive a change of path: keep it until a
        probe sent after it is answered on the path in use."""
        peer = self._peers.get(node_id)
        if peer is None or len(peer.endpoints) < 2 or not self.config.path_replay_max:
            return
        if len(peer.replay) >= self.config.path_replay_max:
            peer.replay.popleft()
        peer.replay.append((self.host.now(), mtype, body))

    def _rank(self, e: Endpoint) -> tuple:
        priority = self.config.path_priority
        t = e.address.transport
        return (priority.index(t) if t in priority else len(priority),
                e.rtt_s if e.rtt_s is not None else math.inf, SOURCES.index(e.source))

    def _interval(self, peer: _Peer, e: Endpoint) -> float:
        cfg = self.config
        if e.unanswered >= cfg.path_down_after:
            backoff = backoff_delay(e.unanswered - cfg.path_down_after, cfg.path_backoff_min_s,
                                    cfg.path_backoff_max_s, self.rng.uniform)
            now = self.host.now()
            if any(self._confirmed(peer, o, now) for o in peer.endpoints.values() if o is not e):
                # the member is reachable another way: notice this path's return soon
                return min(backoff, cfg.path_probe_standby_s)
            return backoff
        if e.address == peer.active or not self._confirmed(peer, e, self.host.now()):
            return cfg.path_probe_active_s  # in use, or its confirmation lapsed: find out soon
        return cfg.path_probe_standby_s

    def _confirmed(self, peer: _Peer, e: Endpoint, now: float) -> bool:
        return (e.confirmed_at is not None and not e.unanswered
                and now <= e.trusted_until)

    def state(self, peer: _Peer, e: Endpoint, now: float) -> str:
        if self._confirmed(peer, e, now):
            return "active" if e.address == peer.active else "standby"
        if e.unanswered >= self.config.path_down_after:
            return "down"
        return "unconfirmed"

    def _choose(self, peer: _Peer) -> list[Address]:
        now = self.host.now()
        ranked = sorted(peer.endpoints.values(), key=self._rank)
        live = [e for e in ranked if e.unanswered < self.config.path_down_after]
        confirmed = [e for e in ranked if self._confirmed(peer, e, now)]
        active = peer.endpoints.get(peer.active) if peer.active is not None else None
        if active is not None and active in live:
            # the path in use stays while it is not down: a lost probe or two is no
            # reason to move; a confirmed path of a preferred transport is
            primary = active
            if confirmed and self._rank(confirmed[0])[0] < self._rank(active)[0]:
                primary = confirmed[0]
        else:
            primary = confirmed[0] if confirmed else (live or ranked)[0]
        chosen = [primary.address]
        if primary in confirmed:
            better = next((e for e in live if e.confirmed_at is None), None)
            if better is not None and self._rank(better) < self._rank(primary):  # new: try it alongside
                chosen.append(better.address)
        else:  # unproven or not answering: the best confirmed other path carries it too
            other = next((e for e in confirmed if e is not primary), None) or \
                next((e for e in (live or ranked) if e is not primary), None)
            if other is not None:
                chosen.append(other.address)
        if chosen[0] != peer.active:
            self._switch(peer, chosen)
        else:
            fallback = chosen[1] if len(chosen) > 1 else None
            if fallback is not None and fallback != peer.fallback:
                self._resend(peer, [fallback])  # what may have been lost goes this way too
            peer.fallback = fallback
        return chosen

    def _switch(self, peer: _Peer, chosen: list[Address]) -> None:
        previous, peer.active = peer.active, chosen[0]
        endpoint = peer.endpoints[chosen[0]]
        now = self.host.now()
        if endpoint.next_probe > now + self.config.path_probe_active_s:
            endpoint.next_probe = now  # in use now: probed at the active cadence from here
            self._wake(now)
        if previous is not None:
            rtt = f"{endpoint.rtt_s * 1000:.1f} ms" if endpoint.rtt_s is not None else "round trip unknown"
            log.info("mesh %s: %s now over %s (%s), was %s", self.host.node_id, peer.node_id, chosen[0],
                     rtt, previous)
        # what went out on the old path since its last proof of life goes again
        peer.fallback = chosen[1] if len(chosen) > 1 else None
        self._resend(peer, chosen)
        self.host.path_changed(peer.node_id, chosen[0], previous, endpoint.rtt_s)

    def _resend(self, peer: _Peer, addresses: list[Address]) -> None:
        """Send again, on ``addresses``, the messages no probe has proven delivered."""
        pending, peer.replay = list(peer.replay), deque()
        for _, mtype, body in pending:
            self.replayed += 1
            for address in addresses:
                self.host.send_frame(mtype, body, address)
            self.sent(peer.node_id, mtype, body)

    # -- probing -------------------------------------------------------------------------
    def _wake(self, at: float) -> None:
        """Have the tick run no later than ``at`` (loop time)."""
        if at >= self._timer_at or not self.host.running:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.host.call_later(max(at - self.host.now(), 0.0), self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.host.now()
        due = math.inf
        for peer in list(self._peers.values()):
            if len(peer.endpoints) < 2:
                continue
            for e in list(peer.endpoints.values()):
                self._expire(peer, e, now)
                if e.down_since is not None and now - e.down_since > self.config.path_forget_s \
                        and e.source != "gossip" and e.address != peer.active:
                    self._delete(peer, e)  # a source address it no longer uses; gossip ones go by ALIVE
                    continue
                if e.next_probe <= now:
                    self._probe(peer, e, now)
                due = min(due, e.next_probe, *(t + self._timeout(e) for t in e.outstanding.values()))
            self._choose(peer)  # notice a lost path even while nothing is sent
        if due < math.inf:
            self._wake(due)

    def _timeout(self, e: Endpoint) -> float:
        return max(self.config.path_probe_timeout_s, 3 * (e.rtt_s or 0.0))

    def _expire(self, peer: _Peer, e: Endpoint, now: float) -> None:
        for probe_id, sent_at in list(e.outstanding.items()):
            if sent_at + self._timeout(e) <= now:  # the very sum the tick was timed by
                del e.outstanding[probe_id]
                self._probes.pop(probe_id, None)
                e.unanswered += 1
                if e.unanswered >= self.config.path_down_after and e.down_since is None:
                    e.down_since = now
                if e.address == peer.active and e.unanswered < self.config.path_down_after:
                    e.next_probe = now  # lost, or cut? ask again at once

    def _probe(self, peer: _Peer, e: Endpoint, now: float) -> None:
        self._probe_ids = (self._probe_ids + 1) & 0xFFFFFFFF
        probe_id = self._probe_ids
        if len(e.outstanding) >= _OUTSTANDING_MAX:
            oldest = min(e.outstanding, key=e.outstanding.__getitem__)
            del e.outstanding[oldest]
            self._probes.pop(oldest, None)
        e.outstanding[probe_id] = now
        self._probes[probe_id] = (peer.node_id, e.address)
        e.next_probe = now + self._interval(peer, e)
        # gossip rides along: a member held dead on both sides learns of the other's
        # refutation this way, once a path answers again
        self.host.send_frame(MessageType.PATH_PROBE, encode_path_probe(probe_id), e.address)

    # -- handlers (the node's dispatch table points here) -----------------------------------
    def frame_handlers(self) -> dict:
        return {MessageType.PATH_PROBE: self.on_probe, MessageType.PATH_ACK: self.on_ack}

    def on_probe(self, frame, addr: Address) -> None:
        probe_id = decode_path_probe(frame.body)
        self.host.send_frame(MessageType.PATH_ACK, encode_path_probe(probe_id), addr)

    def on_ack(self, frame, addr: Address) -> None:
        probe_id = decode_path_probe(frame.body)
        who = self._probes.pop(probe_id, None)
        if who is None or who[0] != frame.sender:
            return  # late, or not ours
        peer = self._peers.get(who[0])
        e = peer.endpoints.get(who[1]) if peer is not None else None
        if e is None:
            return
        now = self.host.now()
        sent_at = e.outstanding.pop(probe_id, now)
        for older in [i for i, t in e.outstanding.items() if t <= sent_at]:
            del e.outstanding[older]  # lost in a cut that is over: the path answers now
            self._probes.pop(older, None)
        _sample_rtt(e, now - sent_at)
        was_down = e.unanswered
        e.unanswered = 0
        e.down_since = None
        e.confirmed_at = now
        cfg = self.config
        interval = cfg.path_probe_active_s if e.address == peer.active else cfg.path_probe_standby_s
        e.trusted_until = now + interval + cfg.path_trust_s
        if e.address in (peer.active, peer.fallback):  # proven delivered on a path it went on
            while peer.replay and peer.replay[0][0] <= sent_at:
                peer.replay.popleft()
        e.next_probe = min(e.next_probe, now + interval)
        if was_down:
            self._choose(peer)  # a better path may be back
        self._wake(e.next_probe)

    def observe_rtt(self, node_id: str, address: Address, rtt_s: float) -> None:
        """A round trip SWIM's PING measured to a member with one path, which sends
        no path probes: so its path in use has a round trip too."""
        peer = self._peers.get(node_id)
        if peer is None or len(peer.endpoints) != 1:
            return
        e = peer.endpoints.get(address)
        if e is not None:
            _sample_rtt(e, rtt_s)

    # -- reporting ------------------------------------------------------------------------
    def active(self, node_id: str) -> tuple[Address | None, float | None]:
        peer = self._peers.get(node_id)
        if peer is None or not peer.endpoints:
            return None, None
        if len(peer.endpoints) < 2:
            e = next(iter(peer.endpoints.values()))
            return e.address, e.rtt_s
        e = peer.endpoints.get(peer.active) if peer.active else None
        return (e.address, e.rtt_s) if e else (None, None)

    def slowest_rtt(self, node_id: str) -> float | None:
        """The longest round trip among the paths to ``node_id`` that are not down."""
        peer = self._peers.get(node_id)
        down = self.config.path_down_after
        rtts = [e.rtt_s for e in peer.endpoints.values() if e.rtt_s is not None and e.unanswered < down] \
            if peer is not None else []
        return max(rtts, default=None)

    def stats(self) -> dict[str, dict]:
        """Per member: the path in use, its round trip, and every endpoint with its state."""
        now = self.host.now()
        out = {}
        for node_id, peer in self._peers.items():
            address, rtt = self.active(node_id)
            out[node_id] = {
                "path": str(address) if address else None,
                "transport": address.transport if address else None,
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
                "endpoints": [e.to_dict(self.state(peer, e, now) if len(peer.endpoints) > 1 else "only")
                              for e in sorted(peer.endpoints.values(), key=self._rank)],
            }
        return out


def _sample_rtt(e: Endpoint, sample: float) -> None:
    """Fold one round trip into an endpoint's smoothed one (as TCP's SRTT, gain 1/5)."""
    e.rtt_s = sample if e.rtt_s is None else 0.8 * e.rtt_s + 0.2 * sample
