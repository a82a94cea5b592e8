"""Mesh configuration: every default in one place, with its unit and trade-off.

The defaults are tuned for a LAN (Wi-Fi or Ethernet, round trips well under
100 ms) and for FlowMesh's failover budget: a crashed member is declared dead
by every other within 2 s (p99), while an idle member sends about 4
datagrams a second. ``MeshConfig.low_power()`` trades detection speed for
radio time on battery devices; ``MeshConfig.wan()`` tolerates slower links.
Both are derived from the LAN defaults, never restated.

Formulas (n = members known, including this node; T = ``probe_interval_s``):

* probe deadline (an unanswered probe becomes a suspicion):
  ``D = probe_deadline_s() = 3 * probe_timeout_s`` (the direct round trip,
  then two through a helper)
* suspicion timeout, min: ``suspicion_mult * max(1, log10(max(n, 1))) * T``
* suspicion timeout, max: ``suspicion_max_timeout_mult * min``; a suspicion starts at
  the max and shrinks toward the min as independent confirmations arrive
  (Lifeguard; ``k = min(suspicion_confirmations, n - 2)`` of them reach the
  min; with k = 0, two members, a suspicion runs the max), so a member
  suspected by many is declared dead fast while a lone, possibly mistaken
  suspicion leaves time for refutation
* a suspicion that runs out kills only if this node's own probe failed
  within the last ``min + D``; otherwise the node probes first
* out-of-turn confirmation probes: each member that learns of a suspicion
  probes the suspect with probability ``min(1, confirm_probes / (n - 2))``
* detection of a crash, every member: the first probe of the crashed member
  comes within one round (each member is probed once per round), then
  ``D`` to suspect it, confirmations within about another ``D``, the min
  timeout counted from the suspicion, and the DEAD gossip:
  ``<= T + D + max(min, D) + gossip``; at the defaults and n = 20:
  0.5 + 0.3 + 0.52 + ~0.05 = 1.4 s.
* datagrams sent by an idle member: ``2 / T`` (its PING, and the PROBE_ACK to
  the member probing it) plus push-pull, ``~2 * frames(n) / push_pull_s(n)``;
  at the defaults and n = 20: 4 + 0.2 per second.
* retransmit limit of a gossiped update: ``retransmit_mult * ceil(log10(n + 1))``
* push-pull period: ``push_pull_interval_s * (ceil(log2(n / 32)) + 1)`` above 32
  members, ``push_pull_interval_s`` up to 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

DEFAULT_PORT = 9999


@dataclass(frozen=True)
class MeshConfig:
    #: UDP port the mesh listens on, and discovery broadcasts go to.
    port: int = DEFAULT_PORT
    #: Address to bind. "0.0.0.0" listens on every interface and enables LAN
    #: broadcast discovery; a specific address (e.g. 127.0.0.1) does not.
    bind: str = "0.0.0.0"
    #: Where discovery broadcasts go; None disables broadcast discovery.
    #: Default: the limited broadcast address when bound to every interface.
    broadcast_address: str | None = None

    # -- failure detection (SWIM) --
    #: Seconds per probe round: each node sends one probe per round, and each member
    #: is probed about once per round (detector.py's schedule). Each node sends ~2
    #: datagrams per round (its PING, and the PROBE_ACK to the one probing it).
    #: Lower detects faster: a crash waits up to one round for its first probe.
    probe_interval_s: float = 0.5
    #: Seconds to wait for a direct ack before asking others (indirect probe).
    #: Must exceed the link's round trip; Wi-Fi power save can add 100 ms+.
    #: A probe fails (suspect) at ``probe_deadline_s()``, 3x this.
    probe_timeout_s: float = 0.1
    #: Members asked to probe on our behalf when a direct probe fails.
    indirect_checks: int = 3
    #: Scales the suspicion timeout (see module doc): 0.52 s at 20 members once confirmed,
    #: 3.1 s alone. Higher: more time to refute, slower detection. A live member is not
    #: killed by one mistaken probe however short this is: that takes suspicion_confirmations
    #: independent failures, or the node's own failed probe when the time runs out.
    suspicion_mult: float = 0.8
    #: The lone-suspicion timeout as a multiple of the minimum.
    suspicion_max_timeout_mult: int = 6
    #: Independent confirmations (Lifeguard's K) that bring a suspicion's timeout
    #: down to its minimum. Higher: a crash needs more witnesses, one bad link
    #: alone cannot kill a member quickly.
    suspicion_confirmations: int = 2
    #: Members that, on average, probe a newly suspected member out of turn: each
    #: member that learns of a suspicion does with probability
    #: ``min(1, confirm_probes / (n - 2))``. Brings the confirmations of a crash
    #: within one probe deadline, and tells a live suspect at once so that it
    #: refutes. Costs ~2 datagrams each for a live suspect, ~6 for a dead one.
    confirm_probes: float = 4.0
    #: Seconds a dead member is still listed (and gossiped to) before it is removed.
    dead_reap_s: float = 30.0
    #: Seconds a removed member's last incarnation is remembered, so stale
    #: gossip cannot resurrect it; a real restart comes with a higher one.
    tombstone_s: float = 600.0

    # -- dissemination --
    #: Seconds between gossip rounds, which run only while something is queued. It
    #: sets how fast news spreads, not how much is sent: each item goes out
    #: ``retransmit_limit(n)`` times whatever the interval, and an idle node sends none.
    gossip_interval_s: float = 0.05
    #: Members each gossip round and each explicit broadcast go to.
    fanout: int = 3
    #: Scales how often each update is retransmitted (see module doc).
    retransmit_mult: int = 4
    #: Hops an explicit broadcast may travel (decremented at each forward).
    ttl: int = 10
    #: Hops a routed (unicast) message may travel.
    hop_limit: int = 5
    #: Message ids remembered to drop duplicates and loops.
    seen_set_size: int = 16384
    #: Seconds a message id is remembered.
    seen_ttl_s: float = 300.0
    #: Seconds between membership anti-entropy exchanges with one random member, in
    #: meshes up to 32 members; stretched beyond (see ``push_pull_s``).
    push_pull_interval_s: float = 10.0
    #: Seconds between discovery broadcasts while no member is known (x6 afterwards).
    discovery_interval_s: float = 5.0

    # -- keys (keyring.py, rotation.py) --
    #: Seal (encrypt) what this member sends, not only authenticate it. Every member
    #: accepts both, so this is turned on or off member by member. Costs 15 bytes a
    #: datagram (a probe between 16-character ids: 103 bytes instead of 88).
    encrypt: bool = True
    #: Seconds between retransmissions of a keyring step to members that have not
    #: acknowledged it.
    keyring_retry_s: float = 0.5
    #: Seconds a keyring step waits for every alive member's acknowledgement before
    #: the next step goes ahead anyway (the laggards catch up when they next talk).
    keyring_deadline_s: float = 15.0

    # -- priority alerts --
    #: Seconds a critical alert is retransmitted while members have not acked it.
    critical_deadline_s: float = 5.0
    #: Seconds between retransmissions of an unacknowledged critical alert.
    critical_retry_s: float = 0.5

    # -- paths: the connection train (paths.py), for members reachable several ways --
    #: Transports in order of preference: a confirmed path of an earlier one is used
    #: before any later one, whatever their round trips (the design's BLE, LAN, LAN
    #: found by mDNS, relay; ``mem`` is the in-memory network of the tests). Among
    #: paths of one transport, the shorter round trip wins. Unlisted ones come last.
    path_priority: tuple[str, ...] = ("ble", "udp", "mem", "ws", "wss", "relay")
    #: Seconds between probes of the path in use to a member (and of any path that is
    #: not answering while another one is). Failover takes about twice this plus the
    #: probe timeout: lower fails over sooner, for one 24-byte probe per second each.
    path_probe_active_s: float = 1.0
    #: Seconds between probes of a confirmed path that is not the one in use: how
    #: stale the knowledge of the fallback may be when it is needed.
    path_probe_standby_s: float = 5.0
    #: Seconds a path probe waits for its answer (at least 3 round trips of the path).
    #: An unanswered probe of the path in use is repeated at once; a second one in a row
    #: (``path_down_after``) moves the traffic: failover takes at most about
    #: ``path_probe_active_s + 2 * path_probe_timeout_s`` (2 s at the defaults).
    path_probe_timeout_s: float = 0.5
    #: Seconds a path stays confirmed after its last answer, beyond its probe interval;
    #: a path with an unanswered probe is not confirmed (Tailscale trusts a direct
    #: path 6.5 s after its last reply: this is faster and costs more probes).
    path_trust_s: float = 1.5
    #: Unanswered probes in a row after which a path is down: no longer sent on
    #: (while another works), and probed with backoff from ``path_backoff_min_s``
    #: doubling to ``path_backoff_max_s``, with jitter.
    path_down_after: int = 2
    path_backoff_min_s: float = 1.0
    path_backoff_max_s: float = 60.0
    #: Seconds after which an endpoint down all along is forgotten, unless the member
    #: itself advertises it (a source address it no longer uses, an mDNS or saved one).
    path_forget_s: float = 600.0
    #: Messages to one member kept for replay on the next path until the path they
    #: went on proves it still works (a probe sent after them answered).
    path_replay_max: int = 256
    #: Endpoints remembered per member (the least recently heard dropped first).
    path_endpoints_max: int = 8

    # -- hash registry (registry.py) --
    #: Entries a member keeps in its hash registry, its own and those learned from
    #: members; past it the least recently updated is dropped. An entry with its
    #: embedding (512 float32) takes about 2.8 KB, one without (learned, not fetched)
    #: its hash, type and metadata: at the default, at most about 5.5 MB.
    registry_max_entries: int = 2000

    # -- routing --
    #: Seconds a learned route (destination -> next hop) is trusted.
    route_ttl_s: float = 60.0

    # -- security --
    #: Largest accepted difference between a sender's clock and ours, seconds (0: no check).
    max_skew_s: float = 60.0
    #: Sequence numbers per sender remembered to refuse replays.
    replay_window: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0..65535")
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("need 0 < probe_timeout_s < probe_interval_s")
        for name in ("indirect_checks", "fanout", "retransmit_mult", "ttl", "hop_limit",
                     "suspicion_max_timeout_mult", "suspicion_confirmations", "registry_max_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.suspicion_mult <= 0 or self.confirm_probes < 0:
            raise ValueError("suspicion_mult must be above 0, confirm_probes at least 0")
        if self.ttl > 255 or self.hop_limit > 255:
            raise ValueError("ttl and hop_limit must be at most 255")
        if not 0 < self.path_probe_active_s <= self.path_probe_standby_s:
            raise ValueError("need 0 < path_probe_active_s <= path_probe_standby_s")
        if not (self.path_probe_timeout_s > 0 and self.path_trust_s >= 0 and self.path_forget_s > 0):
            raise ValueError("need path_probe_timeout_s > 0, path_trust_s >= 0, path_forget_s > 0")
        if not 0 < self.path_backoff_min_s <= self.path_backoff_max_s:
            raise ValueError("need 0 < path_backoff_min_s <= path_backoff_max_s")
        if not 0 < self.keyring_retry_s <= self.keyring_deadline_s:
            raise ValueError("need 0 < keyring_retry_s <= keyring_deadline_s")
        if self.path_down_after < 1 or self.path_replay_max < 0 or self.path_endpoints_max < 1:
            raise ValueError("path_down_after and path_endpoints_max must be at least 1, "
                             "path_replay_max at least 0")

    # derived values ---------------------------------------------------------
    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * math.ceil(math.log10(max(n, 1) + 1))

    def probe_deadline_s(self) -> float:
        """Seconds after which an unanswered probe fails: the direct ack's timeout, then
        two more for the indirect path, two round trips through a helper."""
        return 3 * self.probe_timeout_s

    def suspicion_min_s(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval_s

    def suspicion_max_s(self, n: int) -> float:
        return self.suspicion_max_timeout_mult * self.suspicion_min_s(n)

    def push_pull_s(self, n: int) -> float:
        """Push-pull period with n members: the snapshot exchanged grows with n, so
        beyond 32 members the period grows by one interval per doubling (memberlist's
        pushPullScale): ``push_pull_interval_s * (ceil(log2(n / 32)) + 1)``."""
        if n <= 32:
            return self.push_pull_interval_s
        return self.push_pull_interval_s * (math.ceil(math.log2(n / 32)) + 1)

    def effective_broadcast_address(self) -> str | None:
        if self.broadcast_address is not None:
            return self.broadcast_address or None
        return "255.255.255.255" if self.bind in ("0.0.0.0", "") else None

    # presets ----------------------------------------------------------------
    @classmethod
    def lan(cls, **overrides) -> MeshConfig:
        return cls(**overrides)

    @classmethod
    def low_power(cls, **overrides) -> MeshConfig:
        """Probe 5x less often: a fifth of the radio time; detection by the formula
        above about 6.5 s at 20 members (2.5 + 0.9 + 2.6 + gossip)."""
        base = cls()
        return replace(base, probe_interval_s=base.probe_interval_s * 5,
                       probe_timeout_s=base.probe_timeout_s * 3,
                       gossip_interval_s=base.gossip_interval_s * 5, **overrides)

    @classmethod
    def wan(cls, **overrides) -> MeshConfig:
        """Round trips up to ~400 ms: longer timeouts, twice the suspicion patience;
        detection about 9.5 s at 20 members (2.5 + 1.5 + 5.2 + gossip)."""
        base = cls()
        return replace(base, probe_interval_s=base.probe_interval_s * 5,
                       probe_timeout_s=base.probe_timeout_s * 5,
                       suspicion_mult=base.suspicion_mult * 2,
                       gossip_interval_s=base.gossip_interval_s * 3, **overrides)
