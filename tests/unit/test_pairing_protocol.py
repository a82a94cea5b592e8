"""Pairing's messages, state machines and guard, in memory (no sockets, an injected clock).

Randomness is seeded where a test compares codes, so that no test depends on a
one-in-a-million coincidence going one way.
"""

from __future__ import annotations

import random

import pytest

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.wire import MAX_DATAGRAM, WIRE_VERSION
from flowmesh_edge.pairing.guard import PairingGuard
from flowmesh_edge.pairing.protocol import (
    DISCOVER_SIZE,
    DONE_WAIT_S,
    KEY_BYTES,
    MAGIC,
    NONCE_BYTES,
    OFFER_MAX,
    REVEAL_TIMEOUT_S,
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
NEW, MEMBER, EVE = Address.udp("10.0.0.9", 40000), Address.udp("10.0.0.5", 9998), Address.udp("10.0.0.66", 1)


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


def begin(g: PairingGuard, initiator: Initiator, source=NEW):
    """COMMIT, RETRY (the cookie), COMMIT echoing it: the guard's answer to the latter."""
    commit = initiator._commit if initiator.phase == "committed" else initiator.start()
    (retry, _), = g.receive(commit, source)
    assert decode(retry).kind is Kind.RETRY
    return to_guard(g, deliver(initiator, [(retry, source)]), source)


def up_to_the_code(g: PairingGuard, initiator: Initiator) -> None:
    """COMMIT, RETRY, COMMIT, RESPONSE, REVEAL, READY: both sides show the code."""
    reveal = deliver(initiator, begin(g, initiator))
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
    (r1, _), = begin(g1, first)
    (r2, _), = begin(g2, first)  # the same COMMIT to two members: two fresh answers
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
    (to_member, _), = begin(g, eve_as_new, EVE)
    (eve_reveal,) = eve_as_new.receive(decode(to_member), to_member, 0).replies
    (eve_ready, _), = g.receive(eve_reveal, EVE)
    assert new.code != g.session.code  # the users see different codes and say no

    # Eve would like the member's code to equal the new device's. She had to commit to
    # her key and nonce before she saw the member's; revealing others now is refused.
    g.user_rejected()  # the member's user saw the codes differ
    assert g.failures_in_row == 1
    eve = Initiator("laptop", crypto=seeded(5))
    (response, _), = begin(g, eve, EVE)
    eve.receive(decode(response), response, 0)
    other_key = Initiator("laptop", crypto=seeded(6))
    other_key.start()
    forged_reveal = encode(Kind.REVEAL, eve.session, other_key._public + other_key._nonce)
    replies = g.receive(forged_reveal, EVE)
    assert [decode(d).kind for d, _ in replies] == [Kind.ABORT]
    assert g.refused[Reason.COMMITMENT_MISMATCH] == 1
    assert g.ended[-1].code is None and g.ended[-1].failure == Reason.COMMITMENT_MISMATCH
    assert g.failures_in_row == 1  # no code was shown: not towards the lockout (anyone can send it)


def test_a_reveal_that_does_not_match_its_commitment_is_refused_and_ends_the_attempt():
    g, new = guard(), Initiator("laptop")
    (response, _), = begin(g, new)
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
    (part,) = member._send_credentials(0.0)
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
    reveal = deliver(new, begin(g, new))
    commit = new._commit  # the one echoing the cookie
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
    replies = begin(g, second)
    assert g.receive(commit, EVE) == [] and g.refused[Reason.REPLAYED] == 2
    assert g.receive(reveal[0], EVE) == [] and g.refused[Reason.REPLAYED] == 3
    old_response = encode(Kind.RESPONSE, new.session, bytes(48) + b"\x01x")
    assert second.receive(decode(old_response), old_response, 0).refused == Reason.OTHER_SESSION
    assert deliver(second, replies) and second.phase == "revealed"


def test_messages_of_the_right_session_from_another_address_are_refused():
    g, new = guard(), Initiator("laptop")
    reveal = deliver(new, begin(g, new))
    assert g.receive(reveal[0], EVE) == [] and g.refused[Reason.OTHER_SOURCE] == 1
    assert g.session.phase == "awaiting_reveal"


def test_a_second_attempt_during_one_in_progress_is_refused_as_busy():
    g, first, second = guard(), Initiator("laptop"), Initiator("phone")
    begin(g, first)
    (abort, source), = begin(g, second, EVE)
    assert source == EVE and g.refused[Reason.BUSY] == 1
    second.receive(decode(abort), abort, 0)
    assert second.phase == "aborted" and second.peer_reason == Reason.BUSY
    assert g.source == NEW and g.started == 1


def test_a_flood_of_requests_is_refused_by_the_rate_limit_and_costs_no_key_work():
    clock = Clock()
    g = guard(clock)
    # 1,000 requests from hosts that hear the member (they echo its cookie), each abandoned
    # by its sender at once so that the door is free again
    for n in range(1000):
        attacker = Initiator("flood", crypto=seeded(n))
        source = Address.udp(f"10.0.{n // 200}.{n % 200}", n + 1)
        replies = begin(g, attacker, source)
        if replies and decode(replies[0][0]).kind is Kind.RESPONSE:
            g.receive(abort_message(attacker.session, 1, "rejected"), source)
    assert g.started == 5 and g.refused[Reason.RATE_LIMITED] == 995
    assert g.crypto.x25519_operations == 5  # one key pair per attempt started, none for the rest
    assert g.failures_in_row == 0  # abandoned before any code: no lockout for the real user

    # 1,000 more while one attempt is in progress: all busy, no key work
    clock.now += 61
    begin(g, Initiator("laptop"))
    for n in range(1000):
        begin(g, Initiator("flood", crypto=seeded(10_000 + n)), Address.udp("10.0.0.66", n + 1))
    assert g.refused[Reason.BUSY] == 1000 and g.crypto.x25519_operations == 6

    # and garbage: counted, never raised
    rng = random.Random(7)
    valid = Initiator("x").start()
    for n in range(1000):
        junk = rng.randbytes(rng.randrange(0, 80)) if n % 2 else MAGIC + rng.randbytes(rng.randrange(0, 60))
        if n % 3 == 0:
            junk = valid[:rng.randrange(len(valid))]
        g.receive(junk, Address.udp("10.0.0.66", n + 1))
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
    (abort, _), = begin(g, Initiator("laptop"))
    assert decode(abort).kind is Kind.ABORT and g.refused[Reason.LOCKED_OUT] == 1 and g.locked
    clock.now += 301
    new = Initiator("laptop")
    up_to_the_code(g, new)  # the lockout is over


def test_a_corrupted_sealed_message_is_refused_and_the_genuine_one_still_works():
    g, new = guard(), Initiator("laptop")
    reveal = deliver(new, begin(g, new))
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
    begin(g, new)
    clock.now += 2.5  # the member waits REVEAL_TIMEOUT_S (3 s) for the reveal: its door is busy
    assert g.tick() == []
    clock.now += 1
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
    assert parse_target("ws://[::1]:8765") == Address("ws", "::1", 8765)
    for bad in ("ble:nonsense", "ws://host", "127.0.0.1:70000", "127.0.0.1:x", "ws://[::1", "ws://[::1]",
                "ws://host:0", "ws://a:b:1", "ws://host:80/x"):
        with pytest.raises(click.BadParameter):
            parse_target(bad)
    for ipv6 in ("[::1]:9998", "[::1]", "udp:[::1]:9998"):  # the pairing socket is IPv4
        with pytest.raises(click.BadParameter, match="IPv4 only"):
            parse_target(ipv6)


def test_a_secret_file_that_cannot_be_written_leaves_no_temporary_file_behind(tmp_path):
    import os

    from flowmesh_edge.pairing_cli import write_secret_file

    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a directory
    (target / "x").write_text("")
    with pytest.raises(OSError):
        write_secret_file(target, "postgresql://dev:pw@db/x")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    write_secret_file(tmp_path / "ok.url", "secret")
    assert sorted(os.listdir(tmp_path)) == ["ok.url", "taken"]
    assert (tmp_path / "ok.url").stat().st_mode & 0o777 == 0o600


# -- the front door against blind senders (cookies, lockout, quotas) -----------------------------


def test_a_broken_commitment_never_counts_towards_the_lockout():
    """A REVEAL that does not match its COMMIT shows no code and guesses nothing: however
    many, they end their attempts (counted) but never lock the member out."""
    clock = Clock()
    g = guard(clock)
    for n in range(6):
        eve = Initiator("laptop", crypto=seeded(100 + n))
        (response, _), = begin(g, eve, Address.udp(f"10.0.0.{66 + n}", 1))
        eve.receive(decode(response), response, 0)
        forged = encode(Kind.REVEAL, eve.session, bytes(KEY_BYTES + NONCE_BYTES))
        g.receive(forged, Address.udp(f"10.0.0.{66 + n}", 1))
        clock.now += 20  # within the rate limit: 5 starts a minute
    assert g.refused[Reason.COMMITMENT_MISMATCH] == 6 and g.refused[Reason.LOCKED_OUT] == 0
    assert g.failures_in_row == 0 and not g.locked
    up_to_the_code(g, Initiator("laptop"))  # the honest device gets its code


def test_a_commit_without_a_valid_cookie_gets_a_small_retry_and_opens_nothing():
    clock = Clock()
    g, new = guard(clock), Initiator("laptop")
    commit = new.start()
    (retry, to), = g.receive(commit, NEW)
    assert to == NEW and decode(retry).kind is Kind.RETRY and len(retry) < len(commit)
    assert g.session is None and g.started == 0 and g.crypto.x25519_operations == 0 and g.retries == 1
    (echo,) = new.receive(decode(retry), retry, 0).replies
    assert echo == commit + decode(retry).body

    # the cookie is bound to its source and session: a forged source cannot use one it did not hear
    (again, _), = g.receive(echo, EVE)
    assert decode(again).kind is Kind.RETRY and g.refused[Reason.BAD_COOKIE] == 1 and g.session is None
    other = Initiator("laptop")
    other.start()
    foreign = other._commit_bare + decode(retry).body  # NEW's cookie on another session
    assert decode(g.receive(foreign, NEW)[0][0]).kind is Kind.RETRY and g.refused[Reason.BAD_COOKIE] == 2
    # and to its time: valid for 30 to 60 s, then a fresh RETRY
    clock.now += 61
    (fresh, _), = g.receive(echo, NEW)
    assert decode(fresh).kind is Kind.RETRY and fresh != retry and g.refused[Reason.BAD_COOKIE] == 3
    assert g.started == 0 and g.crypto.x25519_operations == 0
    (echo,) = new.receive(decode(fresh), fresh, 0).replies
    (response, _), = g.receive(echo, NEW)
    assert decode(response).kind is Kind.RESPONSE and g.started == 1
    # the COMMIT without its cookie again (a retransmission that crossed the RETRY): a duplicate
    assert [d for d, _ in g.receive(commit, NEW)] == [response]
    assert g.refused[Reason.DUPLICATE] == 1 and g.refused[Reason.OUT_OF_ORDER] == 0


def test_blind_commits_every_12_s_no_longer_keep_the_door_shut():
    """What repro_door did: a COMMIT every 12 s from forged sources (no answer read) held
    the door and used up the starts; now each gets a RETRY and every honest attempt starts."""
    clock = Clock()
    g = guard(clock)
    rng = random.Random(1)
    honest = [30.0 * k + 5 for k in range(20)]  # twice a minute: within the host's quota
    started, attacks, next_attack = 0, 0, 0.0
    for at in honest:
        while next_attack <= at:
            clock.now = 1000 + next_attack
            forged = Address.udp(f"203.0.113.{rng.randrange(1, 255)}", rng.randrange(1024, 65535))
            assert [decode(d).kind for d, _ in g.receive(Initiator("x").start(), forged)] == [Kind.RETRY]
            next_attack, attacks = next_attack + 12.0, attacks + 1
        clock.now = 1000 + at
        new = Initiator("laptop")
        (answer, _), = begin(g, new)
        if decode(answer).kind is Kind.RESPONSE:
            started += 1
            g.session.abort("rejected")
            g._settle()
    assert attacks == 48 and g.retries == attacks + 20  # each honest attempt got one RETRY too
    assert g.started == started == 20  # (before cookies: almost all busy or rate limited)
    assert g.refused[Reason.BUSY] == g.refused[Reason.RATE_LIMITED] == 0


def test_one_host_gets_at_most_its_quota_of_starts_whatever_its_ports():
    clock = Clock()
    g = guard(clock)
    for port in range(1, 5):
        (answer, _), = begin(g, Initiator("eve"), Address.udp("10.0.0.66", port))
        if decode(answer).kind is Kind.RESPONSE:
            g.session.abort("rejected")
            g._settle()
    assert g.started == 3 and g.refused[Reason.RATE_LIMITED] == 1
    (answer, _), = begin(g, Initiator("laptop"))  # another host still starts
    assert decode(answer).kind is Kind.RESPONSE and g.started == 4


def test_the_member_waits_for_a_reveal_3_s_only():
    clock = Clock()
    g = guard(clock)
    begin(g, Initiator("laptop"))
    clock.now += REVEAL_TIMEOUT_S - 0.1
    assert g.tick() == [] and g.session is not None
    clock.now += 0.2
    (abort, _), = g.tick()
    assert decode(abort).kind is Kind.ABORT and g.session is None and g.ended[-1].failure == Reason.TIMEOUT
    assert g.failures_in_row == 0


# -- what the other side says is checked ---------------------------------------------------------


def test_a_done_that_is_not_a_node_and_a_few_endpoint_strings_is_refused():
    for bad in ([123], ["udp:1.2.3.4:9"] * 17, ["u" * 301], [None], ["udp:\x1b[2K:9"], ["udp:1.2.3.4:9", 5]):
        g, new = guard(), Initiator("laptop", mesh_endpoints=bad)
        up_to_the_code(g, new)
        to_guard(g, new.user_confirmed())
        deliver(new, g.user_confirmed())
        assert to_guard(g, new.saved()) == [] and g.refused[Reason.MALFORMED] == 1, bad
        assert g.session is not None and g.session.phase == "sending" and g.session.joined is None


def test_untrusted_json_nested_deeply_is_refused_not_raised():
    deep = b"[" * 5000
    with pytest.raises(Refused) as refused:
        Offer.decode(decode(encode(Kind.OFFER, bytes(16), deep)))
    assert refused.value.reason == Reason.MALFORMED
    with pytest.raises(Refused) as refused:
        Credentials.decode(deep)
    assert refused.value.reason == Reason.BAD_CREDENTIALS
    # and in a DONE, sealed by a paired peer: refused, the member waits on
    g, new = guard(), Initiator("laptop")
    up_to_the_code(g, new)
    to_guard(g, new.user_confirmed())
    deliver(new, g.user_confirmed())
    new.phase = "received"
    sealed = new._seal(1, b"{\"node\":" + deep, encode(Kind.DONE, new.session))
    assert g.receive(encode(Kind.DONE, new.session, sealed), NEW) == [] and g.refused[Reason.MALFORMED] == 1


def test_names_with_terminal_control_characters_are_refused():
    import json

    evil = "home\x1b[2K\r  1. pi-kitchen (mesh home)\x1b]0;owned\x07"
    for fields in ({"node": "pi-kitchen", "mesh": evil, "endpoints": []},
                   {"node": "pi\x1b[2K", "mesh": "home", "endpoints": []},
                   {"node": "pi-kitchen", "mesh": "home", "endpoints": ["udp:\x1b:1"]},
                   {"node": "pi-kitchen", "mesh": "home", "endpoints": ["udp:1.2.3.4:1"] * 17}):
        with pytest.raises(Refused):
            Offer.decode(decode(encode(Kind.OFFER, bytes(16), json.dumps(fields).encode())))
    with pytest.raises(Refused) as refused:
        Credentials.decode(_raw(credentials(name=evil)))
    assert refused.value.reason == Reason.BAD_CREDENTIALS


def test_the_listing_keeps_at_most_32_members():
    from flowmesh_edge.pairing.discovery import MAX_MEMBERS, Finder

    finder = Finder()
    handle = finder.on_datagram("udp")
    for n in range(100):
        handle(Offer(f"member-{n}", "home").encode(finder.query), Address.udp("10.0.0.5", 1000 + n))
    assert len(finder.found()) == MAX_MEMBERS == 32 and finder.dropped["too_many"] == 68


def test_a_short_discover_is_refused_and_an_offer_is_never_larger_than_its_discover():
    g = PairingGuard("p" * 128, credentials(name="n" * 255),
                     Offer("p" * 128, "n" * 255, ("udp:255.255.255.255:65535",) * 16), clock=Clock())
    query = bytes(range(16))
    assert g.receive(encode(Kind.DISCOVER, query), NEW) == [] and g.refused[Reason.SHORT_DISCOVER] == 1
    assert g.receive(discover_message(query)[:-1], NEW) == [] and g.refused[Reason.SHORT_DISCOVER] == 2
    question = discover_message(query)
    (answer, _), = g.receive(question, NEW)
    assert len(answer) <= len(question) == DISCOVER_SIZE and Offer.decode(decode(answer)).node_id == "p" * 128


# -- a DONE that never comes -----------------------------------------------------------------------


def test_credentials_sent_without_a_done_end_as_unconfirmed_10_s_after_they_were_sent():
    clock = Clock()
    g, new = guard(clock), Initiator("laptop")
    up_to_the_code(g, new)
    to_guard(g, new.user_confirmed())
    clock.now += 100  # the member's user reads the code for a while
    assert g.user_confirmed() and g.session.phase == "sending"
    clock.now += DONE_WAIT_S - 1
    assert g.tick() == [] and g.session is not None  # still sending the credentials again
    clock.now += 2  # no DONE: they were sent, the new device did not say it saved them
    assert g.tick() == []  # no ABORT: it most likely saved them
    ended = g.ended[-1]
    assert g.session is None and ended.succeeded and ended.phase == "unconfirmed" and ended.joined is None
    assert g.failures_in_row == 0 and g.refused[Reason.TIMEOUT] == 0


# -- the code and the key bind every field ---------------------------------------------------------


def _fields():
    return [bytes(range(16)), "laptop", bytes(32), bytes([1]) * 32, bytes([2]) * 16, "pi-kitchen",
            bytes([3]) * 32, bytes([4]) * 16]


def test_changing_any_transcript_field_or_swapping_the_roles_changes_the_code():
    from flowmesh_edge.pairing.protocol import code_of, transcript

    base = code_of(transcript(*_fields()))
    for index in range(8):
        changed = _fields()
        value = changed[index]
        changed[index] = value + "x" if isinstance(value, str) else bytes([value[0] ^ 1]) + value[1:]
        # a one-in-a-million coincidence would fail this test; the values are fixed, so it never does
        assert code_of(transcript(*changed)) != base, index
    s, i, c, ik, inonce, r, rk, rnonce = _fields()
    assert code_of(transcript(s, r, c, rk, rnonce, i, ik, inonce)) != base  # roles swapped


def test_the_session_key_is_hkdf_of_the_x25519_secret_and_the_transcript_not_a_function_of_the_code():
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from flowmesh_edge.pairing.protocol import code_of, session_key_of, transcript

    g, new = guard(crypto=seeded(11)), Initiator("laptop", crypto=seeded(12))
    up_to_the_code(g, new)
    member = g.session
    shared = new._private.exchange(X25519PublicKey.from_public_bytes(member._public))
    assert shared == member._private.exchange(X25519PublicKey.from_public_bytes(new._public))
    tr = transcript(new.session, "laptop", new._commitment, new._public, new._nonce, "pi-kitchen",
                    member._public, member._nonce)
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(tr).digest(),
                    info=b"flowmesh pairing v1 session key").derive(shared)
    assert new.session_key == member.session_key == expected and new.code == code_of(tr)
    # the same transcript (the same code) with another shared secret gives another key
    assert session_key_of(bytes(32), tr) != expected
    assert expected not in (hashlib.sha256(new.code.encode()).digest(), hashlib.sha256(tr).digest())


def test_every_start_of_the_new_device_makes_a_fresh_key_pair_and_nonce_bound_by_its_commitment():
    from flowmesh_edge.pairing.protocol import commitment

    new = Initiator("laptop")
    new.start()
    first = (new.session, new._public, new._nonce, new._commitment)
    new.start()
    assert new._public != first[1] and new._nonce != first[2] and new.session != first[0]
    assert new._commitment == commitment(new.session, new._public, new._nonce)
    # the commitment covers the nonce and the session, not the key alone
    assert commitment(new.session, new._public, bytes(16)) != new._commitment
    assert commitment(first[0], new._public, new._nonce) != new._commitment
