"""Typed stats that still read as the dict callers were written against."""

from __future__ import annotations

import json

from flowmesh_edge.mesh.stats import AlertStats, DetectorStats, MemberCounts, MeshStats

#: The keys stats() has always had (bench/, the agent, the CLI log line read them).
KEYS = {
    "node_id", "incarnation", "sent", "received", "dropped", "dropped_total", "gossip", "probes",
    "probe_failures", "indirect_probes", "suspicions", "refutations", "deaths", "members", "alerts_sent",
    "alerts_received", "critical_alerts_complete", "critical_alerts_incomplete", "routed", "forwarded",
    "transport_errors",
}


def sample() -> MeshStats:
    return MeshStats("n", 7, sent=10, received=9, dropped={"forged": 2, "loop": 1},
                     detector=DetectorStats(probes=5, suspicions=1), members=MemberCounts(alive=3, dead=1),
                     alerts=AlertStats(sent=2, critical_complete=1))


def test_mapping_access_gives_the_keys_callers_use():
    s = sample()
    assert set(s) >= KEYS
    assert s["sent"] == 10 and s["suspicions"] == 1 and s["dropped"]["forged"] == 2
    assert s["members"] == {"alive": 3, "suspect": 0, "dead": 1}
    assert s["gossip"]["duplicates"] == 0 and s["alerts_sent"] == 2 and s["dropped_total"] == 3
    assert {**s["members"], "incarnation": 7}["alive"] == 3  # as the agent spreads it
    assert s.get("nope") is None and "sent" in s


def test_typed_access_and_a_json_ready_dict():
    s = sample()
    assert s.detector.probes == 5 and s.members.alive == 3 and s.dropped_total == 3
    assert json.loads(json.dumps(s.as_dict())) == s.as_dict()
    assert dict(s) == s.as_dict()
