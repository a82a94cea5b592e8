"""Pairing's messages, state machines and guard, in memory (no sockets, an injected clock).

Randomness is seeded where a test compares codes, so that no test depends on a
one-in-a-million coincidence going one way.
"""

from __future__ import annotations

import random

import pytest

from flowmesh_edge.mesh.wire import MAX_DATAGRAM, WIRE_VERSION
from flowmesh_edge.pairing.guard import PairingGuard
from flowmesh_edge.pairing.protocol import (
    DISCOVER_SIZE,
    MAGIC,
    OFFER_MAX,
    Credentials,
    Crypto,
    Initiator,
    Kind,
    Offer,
    Reason,
    Refused,
    Responder,
    abort_message,
    decode,
    discover_message,
    encode,
    format_code,
)

KEYS = ["primary key of the mesh 0001", "older key still accepted 02"]
NEW, MEMBER, EVE = ("udp", "10.0.0.9", 40000), ("udp", "10.0.0.5", 9998), ("udp", "10.0.0.66", 1)


def credentials(**changes) -> Credentials:
    values = dict(mesh_id="0123456789abcdef", name="home", keys=list(KEYS), keyring_version=3,
                  encrypt=True, relay_url="wss://relay.example:8765", relay_token="relay-token-secret",
                  endpoints=["udp:0.0.0.0:9999"], node_id="pi-kitchen", capabilities=["udp", "ble"])
    values.update(changes)
    return Credentials(**values)


def seeded(seed: int) -> Crypto:
    return Crypto(random.Random(seed).randbytes)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock | None = None, **kwargs) -> PairingGuard:
    return PairingGuard("pi-kitchen", credentials(), clock=clock or Clock(), **kwargs)


def deliver(initiator: Initiator, replies) -> list[bytes]:
    """Feed the guard's replies to the initiator; what the initiator answers."""
    out = []
    for data, _source in replies:
        outcome = initiator.receive(decode(data), data, 0.0)
        out += outcome.replies
    return out


def to_guard(g: PairingGuard, datagrams, source=NEW):
    replies = []
    for data in datagrams:
        replies += g.receive(data, source)
    return replies


def up_to_the_code(g: PairingGuard, initiator: Initiator) -> None:
    """COMMIT, RESPONSE, REVEAL, READY: both sides show the code."""
    reveal = deliver(initiator, to_guard(g, [initiator.start()]))
    assert deliver(initiator, to_guard(g, reveal)) == []
    assert initiator.phase == "comparing" and g.session.phase == "comparing"


def test_a_full_exchange_gives_both_sides_the_same_code_and_session_key():
    g, new = guard(), Initiator("laptop", mesh_endpoints=["udp:0.0.0.0:9999"])
    up_to_the_code(g, new)
    member = g.session
    assert new.code == member.code and len(new.code) == 6 and new.code.isdigit()
    assert format_code("012345") == "012 345"
    assert new.session_key == member.session_key and len(new.session_key) == 32
    assert new.peer_node == "pi-kitchen" and member.peer_node == "laptop"

    assert to_guard(g, new.user_confirmed()) == []       # the member's user has not said yet
    parts = g.user_confirmed()
    assert [decode(d).kind for d, _ in parts] == [Kind.CREDENTIALS]
    assert parts and all(len(d) <= MAX_DATAGRAM for d, _ in parts)
    assert deliver(new, parts) == [] and new.phase == "received"
    assert new.credentials == credentials()
    assert to_guard(g, new.saved()) == []
    assert new.succeeded and member.succeeded and g.session is None
    assert member.joined == {"node": "laptop", "endpoints": ["udp:0.0.0.0:9999"]}
    assert g.crypto.x25519_operations == 2 and new.crypto.x25519_operations == 2
    assert not g.refused and not new.refused


def test_every_attempt_has_fresh_keys_nonces_and_session():
    first, second = Initiator("laptop"), Initiator("laptop")
    a, b = decode(first.start()), decode(second.start())
    assert a.session != b.session and a.body[:32] != b.body[:32]
    g1, g2 = guard(), guard()
    (r1, _), = g1.receive(first._commit, NEW)
    (r2, _), = g2.receive(first._commit, NEW)  # the same COMMIT to two members: two fresh answers
    assert decode(r1).body[:48] != decode(r2).body[:48]


def test_messages_can_never_be_taken_for_mesh_frames():
    assert MAGIC[0] not in (WIRE_VERSION, WIRE_VERSION + 1)
    initiator = Initiator("laptop")
    assert initiator.start()[0] == MAGIC[0]
    assert guard().receive(bytes((WIRE_VERSION,)) + b"\x01" * 40, NEW) == []


def test_a_man_in_the_middle_gets_different_codes_and_cannot_change_keys_after_seeing_the_others():
    """Eve relays between the new device and the member with keys of her own: each side's
    code binds the keys it saw, so the two codes differ (seeded: deterministic)."""
    g, new = guard(crypto=seeded(1)), Initiator("laptop", crypto=seeded(2))
    eve_as_member = Responder("pi-kitchen", credentials(keys=["eve's own key 0000000"]), crypto=seeded(3))
    eve_as_new = Initiator("laptop", crypto=seeded(4))

    commit = new.start()
    (to_new,) = eve_as_member.start(decode(commit), commit)
    (reveal,) = new.receive(decode(to_new), to_new, 0).replies
    (ready,) = eve_as_member.receive(decode(reveal), reveal, 0).replies
    new.receive(decode(ready), ready, 0)
    (to_member, _), = g.receive(eve_as_new.start(), EVE)
    (eve_reveal,) = eve_as_new.receive(decode(to_member), to_member, 0).replies
    (eve_ready, _), = g.receive(eve_reveal, EVE)
    assert new.code != g.session.code  # the users see different codes and say no

    # Eve would like the member's code to equal the new device's. She had to commit to
    # her key and nonce before she saw the member's; revealing others now is refused.
    g.user_rejected()  # the member's user saw the codes differ
    assert g.failures_in_row == 1
    eve = Initiator("laptop", crypto=seeded(5))
    (response, _), = g.receive(eve.start(), EVE)
    eve.receive(decode(response), response, 0)
    other_key = Initiator("laptop", crypto=seeded(6))
    other_key.start()
    forged_reveal = encode(Kind.REVEAL, eve.session, other_key._public + other_key._nonce)
    replies = g.receive(forged_reveal, EVE)
    assert [decode(d).kind for d, _ in replies] == [Kind.ABORT]
    assert g.refused[Reason.COMMITMENT_MISMATCH] == 1
    assert g.ended[-1].code is None and g.ended[-1].failure == Reason.COMMITMENT_MISMATCH
    assert g.failures_in_row == 2  # counts towards the lockout


def test_a_reveal_that_does_not_match_its_commitment_is_refused_and_ends_the_attempt():
    g, new = guard(), Initiator("laptop")
    (response, _), = g.receive(new.start(), NEW)
    new.receive(decode(response), response, 0)
    (reveal,) = new.retransmit
    tampered = reveal[:-1] + bytes((reveal[-1] ^ 1,))  # one bit of the nonce
    (abort, _), = g.receive(tampered, NEW)
    assert decode(abort).kind is Kind.ABORT and g.refused[Reason.COMMITMENT_MISMATCH] == 1
    new.receive(decode(abort), abort, 0)
    assert new.phase == "aborted" and new.peer_reason == Reason.COMMITMENT_MISMATCH
    assert g.session is None and g.ended[-1].session_key is None  # no key was derived


def test_a_wrong_code_on_either_side_ends_both_and_nothing_is_sent():
    for who in ("member", "new device"):
        g, new = guard(), Initiator("laptop")
        up_to_the_code(g, new)
        if who == "member":
            replies = g.user_rejected()
            assert [decode(d).kind for d, _ in replies] == [Kind.ABORT]
            deliver(new, replies)
            assert new.failure == Reason.PEER_ABORTED and new.peer_reason == Reason.REJECTED
            assert new.user_confirmed() == []  # too late to confirm
        else:
            (abort,) = new.user_rejected()
            assert to_guard(g, [abort]) == []
            assert g.ended[-1].failure == Reason.PEER_ABORTED
            assert g.user_confirmed() == []  # nothing left to confirm
        assert new.credentials is None and not g.ended[-1].succeeded
        assert g.ended[-1]._sent_parts == []  # no credentials ever sealed


def test_a_lost_confirm_is_sent_again_when_the_members_user_says_yes():
    g, new = guard(), Initiator("laptop")
    up_to_the_code(g, new)
    new.user_confirmed()  # its CONFIRM is lost on the way
    poke = g.user_confirmed()
    (confirm,) = deliver(new, poke)
    assert decode(confirm).kind is Kind.CONFIRM
    parts = g.receive(confirm, NEW)
    assert [decode(d).kind for d, _ in parts] == [Kind.CREDENTIALS]
    deliver(new, parts)
    assert new.credentials == credentials()


def test_a_confirmation_from_one_side_only_sends_no_credentials():
    clock = Clock()
    g, new = guard(clock), Initiator("laptop")
    up_to_the_code(g, new)
    # the new device's user has not confirmed: the member only says READY again
    poke = g.user_confirmed()
    assert [decode(d).kind for d, _ in poke] == [Kind.READY] and g.session._sent_parts == []
    assert deliver(new, poke) == [] and new.phase == "comparing"
    # a CREDENTIALS-looking message before our CONFIRM is refused by the new device
    member = g.session
    member.peer_ok = True
    (part,) = member._send_credentials()
    assert new.receive(decode(part), part, 0).refused == Reason.OUT_OF_ORDER and new.credentials is None

    g2, new2 = guard(clock), Initiator("laptop")
    up_to_the_code(g2, new2)
    assert to_guard(g2, new2.user_confirmed()) == []  # the member's user has not confirmed
    assert g2.session._sent_parts == []
    clock.now += 121  # nobody at the member says yes: the attempt times out
    (abort, _), = g2.tick()
    assert decode(abort).kind is Kind.ABORT and g2.ended[-1].failure == Reason.TIMEOUT
    assert g2.ended[-1]._sent_parts == [] and g2.user_confirmed() == []


def test_replayed_messages_of_this_and_a_previous_session_are_refused():
    g, new = guard(), Initiator("laptop")
    commit = new.start()
    reveal = deliver(new, to_guard(g, [commit]))
    deliver(new, to_guard(g, reveal))
    # this session: the COMMIT again, after the REVEAL, changes nothing
    assert g.receive(commit, NEW) == [] and g.refused[Reason.REPLAYED] == 1
    # the last message again is a retransmission: answered again, counted
    assert [decode(d).kind for d, _ in g.receive(reveal[0], NEW)] == [Kind.READY]
    assert g.refused[Reason.DUPLICATE] == 1
    assert g.session.phase == "comparing"
    to_guard(g, new.user_rejected())
    assert g.session is None

    # a previous session's messages, to the member and to a new attempt
    second = Initiator("laptop")
    replies = g.receive(second.start(), NEW)
    assert g.receive(commit, EVE) == [] and g.refused[Reason.REPLAYED] == 2
    assert g.receive(reveal[0], EVE) == [] and g.refused[Reason.REPLAYED] == 3
    old_response = encode(Kind.RESPONSE, new.session, bytes(48) + b"\x01x")
    assert second.receive(decode(old_response), old_response, 0).refused == Reason.OTHER_SESSION
    assert deliver(second, replies) and second.phase == "revealed"


def test_messages_of_the_right_session_from_another_address_are_refused():
    g, new = guard(), Initiator("laptop")
    reveal = deliver(new, to_guard(g, [new.start()]))
    assert g.receive(reveal[0], EVE) == [] and g.refused[Reason.OTHER_SOURCE] == 1
    assert g.session.phase == "awaiting_reveal"


def test_a_second_attempt_during_one_in_progress_is_refused_as_busy():
    g, first, second = guard(), Initiator("laptop"), Initiator("phone")
    to_guard(g, [first.start()])
    (abort, source), = g.receive(second.start(), EVE)
    assert source == EVE and g.refused[Reason.BUSY] == 1
    second.receive(decode(abort), abort, 0)
    assert second.phase == "aborted" and second.peer_reason == Reason.BUSY
    assert g.source == NEW and g.started == 1


def test_a_flood_of_requests_is_refused_by_the_rate_limit_and_costs_no_key_work():
    clock = Clock()
    g = guard(clock)
    # 1,000 requests, each abandoned by its sender at once so that the door is free again
    for n in range(1000):
        attacker = Initiator("flood", crypto=seeded(n))
        commit = attacker.start()
        replies = g.receive(commit, ("udp", "10.0.0.66", n))
        if replies and decode(replies[0][0]).kind is Kind.RESPONSE:
            g.receive(abort_message(attacker.session, 1, "rejected"), ("udp", "10.0.0.66", n))
    assert g.started == 5 and g.refused[Reason.RATE_LIMITED] == 995
    assert g.crypto.x25519_operations == 5  # one key pair per attempt started, none for the rest
    assert g.failures_in_row == 0  # abandoned before any code: no lockout for the real user

    # 1,000 more while one attempt is in progress: all busy, no key work
    clock.now += 61
    to_guard(g, [Initiator("laptop").start()])
    for n in range(1000):
        g.receive(Initiator("flood", crypto=seeded(10_000 + n)).start(), ("udp", "10.0.0.66", n))
    assert g.refused[Reason.BUSY] == 1000 and g.crypto.x25519_operations == 6

    # and garbage: counted, never raised
    rng = random.Random(7)
    valid = Initiator("x").start()
    for n in range(1000):
        junk = rng.randbytes(rng.randrange(0, 80)) if n % 2 else MAGIC + rng.randbytes(rng.randrange(0, 60))
        if n % 3 == 0:
            junk = valid[:rng.randrange(len(valid))]
        g.receive(junk, ("udp", "10.0.0.66", n))
    assert g.refused[Reason.NOT_PAIRING] + g.refused[Reason.MALFORMED] + g.refused[Reason.UNKNOWN_SESSION] \
        + g.refused[Reason.BUSY] >= 1000 + 1000
    assert g.crypto.x25519_operations == 6


def test_three_failed_codes_in_a_row_lock_the_member_out_for_a_while():
    clock = Clock()
    g = guard(clock)
    for _ in range(3):
        new = Initiator("laptop")
        up_to_the_code(g, new)
        g.user_rejected()
    (abort, _), = g.receive(Initiator("laptop").start(), NEW)
    assert decode(abort).kind is Kind.ABORT and g.refused[Reason.LOCKED_OUT] == 1 and g.locked
    clock.now += 301
    new = Initiator("laptop")
    up_to_the_code(g, new)  # the lockout is over


def test_a_corrupted_sealed_message_is_refused_and_the_genuine_one_still_works():
    g, new = guard(), Initiator("laptop")
    reveal = deliver(new, to_guard(g, [new.start()]))
    (ready, _), = g.receive(reveal[0], NEW)
    broken = ready[:-1] + bytes((ready[-1] ^ 0x80,))
    assert new.receive(decode(broken), broken, 0).refused == Reason.BAD_SEAL and new.phase == "revealed"
    new.receive(decode(ready), ready, 0)
    (confirm,) = new.user_confirmed()
    broken = confirm[:30] + bytes((confirm[30] ^ 1,)) + confirm[31:]
    assert g.receive(broken, NEW) == [] and g.refused[Reason.BAD_SEAL] == 1 and not g.session.peer_ok
    g.receive(confirm, NEW)
    parts = g.user_confirmed()
    data = parts[0][0]
    broken = data[:-3] + bytes((data[-3] ^ 4,)) + data[-2:]
    assert new.receive(decode(broken), broken, 0).refused == Reason.BAD_SEAL and new.credentials is None
    # a sealed message moved to another place (READY presented as CONFIRM) does not open either
    moved = encode(Kind.CONFIRM, new.session, decode(ready).body)
    assert g.receive(moved, NEW) == [] and g.refused[Reason.OUT_OF_ORDER] == 1
    deliver(new, parts)
    assert new.credentials == credentials()


def test_large_credentials_go_in_several_parts_each_within_a_datagram():
    big = credentials(keys=[f"{n:02d}" + "k" * 126 for n in range(4)],
                      device_credential="postgresql://" + "u" * 1500)
    g = PairingGuard("pi-kitchen", big, clock=Clock())
    new = Initiator("laptop")
    up_to_the_code(g, new)
    to_guard(g, new.user_confirmed())
    parts = g.user_confirmed()
    assert len(parts) >= 2 and all(len(d) <= MAX_DATAGRAM for d, _ in parts)
    deliver(new, reversed(parts))  # in any order
    assert new.credentials == big
    # parts seen again after DONE are answered with DONE again (it may have been lost)
    (done,) = new.saved()
    assert new.receive(decode(parts[0][0]), parts[0][0], 0).replies == [done]


def test_secrets_never_show_in_repr_and_bad_credentials_are_refused():
    shown = repr(credentials(device_credential="postgresql://dev:pw@db/x"))
    for secret in (*KEYS, "relay-token-secret", "relay.example", "pw@db"):
        assert secret not in shown
    for bad in (dict(keys=[]), dict(keys=["short"]), dict(keys=[KEYS[0]] * 2),
                dict(keys=[KEYS[0] + str(n) for n in range(5)]), dict(mesh_id="xyz"),
                dict(keyring_version=-1), dict(encrypt="yes"), dict(endpoints="udp:1"), dict(node_id="")):
        with pytest.raises(Refused) as refused:
            Credentials.decode(_raw(credentials(**bad)))
        assert refused.value.reason == Reason.BAD_CREDENTIALS
        assert all(k not in str(refused.value) for k in KEYS)


def _raw(c: Credentials) -> bytes:
    import json

    return json.dumps({"mesh_id": c.mesh_id, "name": c.name, "keys": c.keys,
                       "keyring_version": c.keyring_version, "encrypt": c.encrypt, "relay_url": c.relay_url,
                       "relay_token": c.relay_token, "endpoints": c.endpoints, "node_id": c.node_id,
                       "capabilities": c.capabilities, "device_credential": c.device_credential}).encode()


def test_discovery_is_answered_with_a_bounded_offer_at_a_bounded_rate():
    clock = Clock()
    g = PairingGuard("pi-kitchen", credentials(), Offer("pi-kitchen", "home", ("udp:0.0.0.0:9998",) * 40),
                     clock=clock)
    query = bytes(range(16))
    question = discover_message(query)
    assert len(question) == DISCOVER_SIZE
    (answer, _), = g.receive(question, NEW)
    offer = Offer.decode(decode(answer))
    assert len(answer) <= OFFER_MAX and decode(answer).session == query
    assert offer.node_id == "pi-kitchen" and offer.mesh_name == "home" and 0 < len(offer.endpoints) < 40
    for _ in range(20):
        g.receive(question, NEW)
    assert g.offers == 10 and g.refused["offer_limited"] == 11
    clock.now += 1
    assert g.receive(question, NEW)


def test_a_silent_peer_times_the_step_out():
    clock = Clock()
    g, new = guard(clock), Initiator("laptop", now=0.0)
    to_guard(g, [new.start()])
    clock.now += 9
    assert g.tick() == []
    clock.now += 2
    (abort, _), = g.tick()
    assert decode(abort).kind is Kind.ABORT and g.ended[-1].failure == Reason.TIMEOUT and g.session is None
    assert new.tick(11.0) and new.failure == Reason.TIMEOUT


def test_the_agents_cli_loads_pairing_only_when_it_pairs():
    """`flowmesh-edge run` does not pay for pairing: its command line imports neither the
    pairing protocol nor the transports' libraries."""
    import json
    import subprocess
    import sys

    code = ("import sys, json, flowmesh_edge.cli\n"
            "print(json.dumps([m for m in ('flowmesh_edge.pairing.protocol', 'flowmesh_edge.pairing.channel',"
            " 'zeroconf', 'bleak', 'websockets') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_member_to_pair_with_is_named_as_the_user_would():
    import click

    from flowmesh_edge.mesh.address import Address
    from flowmesh_edge.pairing_cli import parse_target

    assert parse_target("127.0.0.1:4000") == Address("udp", "127.0.0.1", 4000)
    assert parse_target("udp:127.0.0.1:4000") == Address("udp", "127.0.0.1", 4000)
    assert parse_target("localhost") == Address("udp", "127.0.0.1", 9998)  # resolved: answers come from it
    assert parse_target("ws://192.0.2.7:8765/") == Address("ws", "192.0.2.7", 8765)
    assert parse_target("ble:aa:bb:cc:dd:ee:ff") == Address("ble", "AA:BB:CC:DD:EE:FF", 0)
    assert parse_target("ble:[AA:BB:CC:DD:EE:FF]:0") == Address("ble", "AA:BB:CC:DD:EE:FF", 0)
    for bad in ("ble:nonsense", "ws://host", "127.0.0.1:70000", "127.0.0.1:x"):
        with pytest.raises(click.BadParameter):
            parse_target(bad)
