"""A node's counters, typed.

Each concern keeps its own counters (the detector its probes, the alerts
their acks...); ``MeshNode.stats()`` gathers them into one MeshStats. It reads
as a mapping too, with the flat keys it always had, so ``stats()["sent"]``,
``stats()["dropped"]["forged"]`` and ``stats()["members"]["alive"]`` keep
working; ``as_dict()`` gives the whole of it as plain JSON-ready data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field


@dataclass
class DetectorStats:
    probes: int = 0  #: direct probes sent
    probe_failures: int = 0  #: direct probes unanswered in probe_timeout_s
    indirect_probes: int = 0  #: ping-reqs sent to helpers
    confirm_probes: int = 0  #: probes out of turn, of members others suspected
    verify_probes: int = 0  #: probes of a suspect whose suspicion ran out before we tried it ourselves
    suspicions: int = 0  #: members this node suspected itself
    refutations: int = 0  #: accusations about this node it refuted
    deaths: int = 0  #: suspicions that ran out here


@dataclass
class AlertStats:
    sent: int = 0
    received: int = 0
    retransmits: int = 0  #: critical alerts resent to members that had not acked
    critical_complete: int = 0
    critical_incomplete: int = 0


@dataclass
class GossipStats:
    seen: int = 0
    duplicates: int = 0
    propagated: int = 0
    queued_updates: int = 0  #: membership updates waiting to be gossiped
    queued_messages: int = 0  #: envelopes waiting to be gossiped


@dataclass
class MemberCounts:
    alive: int = 0
    suspect: int = 0
    dead: int = 0


@dataclass
class MeshStats(Mapping):
    node_id: str
    incarnation: int
    sent: int = 0  #: datagrams sent
    received: int = 0  #: datagrams received, dropped ones included
    #: Dropped datagrams and messages by reason (forged, replayed, loop, hop_limit...).
    dropped: dict[str, int] = field(default_factory=dict)
    #: Datagrams by message type name, both ways (where the traffic goes).
    sent_by_type: dict[str, int] = field(default_factory=dict)
    received_by_type: dict[str, int] = field(default_factory=dict)
    gossip: GossipStats = field(default_factory=GossipStats)
    detector: DetectorStats = field(default_factory=DetectorStats)
    members: MemberCounts = field(default_factory=MemberCounts)
    alerts: AlertStats = field(default_factory=AlertStats)
    routed: int = 0  #: messages of ours sent through a next hop
    forwarded: int = 0  #: messages of others passed on toward their destination
    transport_errors: int = 0
    #: Per member: the path in use, its round trip, every endpoint and its state (paths.py).
    paths: dict[str, dict] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict:
        """Everything, under the keys stats() has always had."""
        d = self.detector
        a = self.alerts
        return {
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "sent": self.sent,
            "received": self.received,
            "dropped": dict(self.dropped),
            "dropped_total": self.dropped_total,
            "sent_by_type": dict(self.sent_by_type),
            "received_by_type": dict(self.received_by_type),
            "gossip": asdict(self.gossip),
            "probes": d.probes,
            "probe_failures": d.probe_failures,
            "indirect_probes": d.indirect_probes,
            "confirm_probes": d.confirm_probes,
            "verify_probes": d.verify_probes,
            "suspicions": d.suspicions,
            "refutations": d.refutations,
            "deaths": d.deaths,
            "members": asdict(self.members),
            "alerts_sent": a.sent,
            "alerts_received": a.received,
            "alert_retransmits": a.retransmits,
            "critical_alerts_complete": a.critical_complete,
            "critical_alerts_incomplete": a.critical_incomplete,
            "routed": self.routed,
            "forwarded": self.forwarded,
            "transport_errors": self.transport_errors,
            "paths": self.paths,
        }

    # mapping access, for callers written against the dict stats() used to be
    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())
