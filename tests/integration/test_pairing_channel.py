"""The pairing channel on real UDP sockets on 127.0.0.1: lost datagrams, a flood, an attacker
before the honest device. In one process, through the channel API; every wait bounded."""

from __future__ import annotations

import asyncio

import pytest

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.transports.lossy import WrappedTransport
from flowmesh_edge.mesh.transports.udp import UdpTransport
from flowmesh_edge.pairing.channel import Channel, accept, pair
from flowmesh_edge.pairing.guard import PairingGuard
from flowmesh_edge.pairing.protocol import Credentials, Initiator, Kind, Reason, decode, encode
from tests.support.pairing import DropsDone

pytestmark = pytest.mark.timeout(60)

CREDENTIALS = Credentials(mesh_id="0123456789abcdef", name="home",
                          keys=["the primary key of home 0001", "an older key still accepted"],
                          keyring_version=2, node_id="pi-kitchen", endpoints=["udp:0.0.0.0:9999"],
                          device_credential="postgresql://dev:pw@127.0.0.1/flowmesh")


class DropsEachFirstCopy(WrappedTransport):
    """Loses the first copy of every distinct datagram it sends: each step of the protocol
    gets through only by being sent again."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen: set[bytes] = set()

    def send(self, data: bytes, address: Address) -> None:
        if data not in self.seen:
            self.seen.add(data)
            self.dropped += 1
            return
        self.inner.send(data, address)


async def yes(code: str, peer: str) -> bool:
    return True


async def channels(*wrappers):
    out = []
    for wrap in wrappers:
        channel = Channel(wrap(UdpTransport("127.0.0.1", 0)))
        await channel.start()
        out.append(channel)
    return out


async def test_every_step_lost_once_is_sent_again_and_pairing_completes():
    member, new = await channels(DropsEachFirstCopy, DropsEachFirstCopy)
    guard = PairingGuard("pi-kitchen", CREDENTIALS)
    saved = []
    try:
        accepted, paired = await asyncio.gather(
            accept(member, guard, yes, timeout_s=30),
            pair(new, member.transport.address, "laptop", yes, saved.append, timeout_s=30,
                 mesh_endpoints=["udp:0.0.0.0:9999"]))
    finally:
        await member.close()
        await new.close()
    assert accepted.ok and paired.ok, (accepted, paired)
    assert saved == [CREDENTIALS] and accepted.joined == {"node": "laptop", "endpoints": ["udp:0.0.0.0:9999"]}
    assert accepted.code == paired.code
    # every distinct datagram was lost once: COMMIT, COMMIT with the cookie, REVEAL, CONFIRM,
    # DONE one way, RETRY, RESPONSE, READY and the credentials the other
    assert new.transport.dropped == 5 and member.transport.dropped >= 4
    assert guard.refused[Reason.DUPLICATE] >= 1  # retransmissions answered, counted


async def test_a_flood_during_a_pairing_is_answered_with_retries_or_busy_and_the_pairing_completes():
    """1,000 COMMITs whose sender never reads an answer (a forged source would be the
    same) get a RETRY each, no larger than the COMMIT: no attempt, no key, the door
    free. 100 that echo their cookie (a sender that hears the member) get busy."""
    member, new, flood = await channels(lambda t: t, lambda t: t, lambda t: t)
    guard = PairingGuard("pi-kitchen", CREDENTIALS)
    answers: list[bytes] = []
    flood.handler = lambda data, source: answers.append(data)
    flooded = asyncio.Event()

    flooders: dict[bytes, Initiator] = {}

    async def after_the_flood(code: str, peer: str) -> bool:
        for batch in range(100):
            for n in range(10):
                flooder = Initiator(f"flood-{batch}-{n}")
                flood.send(flooder.start(), member.transport.address)
                flooders[flooder.session] = flooder
            await asyncio.sleep(0.01)  # let the member read its socket: a flood, not a buffer overrun
        for _ in range(200):  # bounded: until the member has handled every request
            if guard.retries == 1000 + 1:  # the honest device's first COMMIT got one too
                break
            await asyncio.sleep(0.05)
        retries = list(answers)
        answers.clear()
        for retry in retries[:100]:  # now echo the cookies: heard, so busy
            (echo,) = flooders[decode(retry).session].receive(decode(retry), retry, 0).replies
            flood.send(echo, member.transport.address)
        for _ in range(200):
            if guard.refused[Reason.BUSY] == 100:
                break
            await asyncio.sleep(0.05)
        answers[:0] = retries
        flooded.set()
        return True

    try:
        accepted, paired = await asyncio.gather(
            accept(member, guard, after_the_flood, timeout_s=30),
            pair(new, member.transport.address, "laptop", yes, lambda c: None, timeout_s=30))
        await asyncio.wait_for(flooded.wait(), 5)
    finally:
        for channel in (member, new, flood):
            await channel.close()
    assert accepted.ok and paired.ok
    assert guard.retries == 1001 and guard.refused[Reason.BUSY] == 100, guard.refused
    assert guard.started == 1 and guard.crypto.x25519_operations == 2  # the honest attempt's only
    kinds = [decode(a).kind for a in answers]
    assert kinds.count(Kind.RETRY) == 1000 and kinds.count(Kind.ABORT) == 100 and len(kinds) == 1100
    commit_size = len(Initiator("flood-0-0").start())
    assert all(len(a) < commit_size for a in answers if decode(a).kind is Kind.RETRY)


async def test_an_attempt_that_breaks_its_commitment_is_counted_and_the_member_waits_on():
    member, new, attacker = await channels(lambda t: t, lambda t: t, lambda t: t)
    guard = PairingGuard("pi-kitchen", CREDENTIALS)
    to_attacker: list[bytes] = []
    attacker.handler = lambda data, source: to_attacker.append(data)
    waiting = asyncio.create_task(accept(member, guard, yes, timeout_s=30))
    try:
        eve = Initiator("laptop")
        attacker.send(eve.start(), member.transport.address)
        for _ in range(100):  # bounded: the member's answer on loopback
            if to_attacker:
                break
            await asyncio.sleep(0.05)
        (echo,) = eve.receive(decode(to_attacker[0]), to_attacker[0], 0).replies  # the RETRY
        attacker.send(echo, member.transport.address)
        for _ in range(100):
            if len(to_attacker) > 1:
                break
            await asyncio.sleep(0.05)
        eve.receive(decode(to_attacker[1]), to_attacker[1], 0)  # the RESPONSE
        other = Initiator("laptop")
        other.start()
        forged = encode(Kind.REVEAL, eve.session, other._public + other._nonce)  # not what eve committed to
        attacker.send(forged, member.transport.address)
        for _ in range(100):
            if guard.refused[Reason.COMMITMENT_MISMATCH]:
                break
            await asyncio.sleep(0.05)
        assert guard.refused[Reason.COMMITMENT_MISMATCH] == 1 and not waiting.done()
        paired = await pair(new, member.transport.address, "laptop", yes, lambda c: None, timeout_s=30)
        accepted = await asyncio.wait_for(waiting, 10)
    finally:
        waiting.cancel()
        for channel in (member, new, attacker):
            await channel.close()
    assert paired.ok and accepted.ok and accepted.peer_node == "laptop"
    assert decode(to_attacker[-1]).kind is Kind.ABORT and guard.failures_in_row == 0


async def test_a_lost_done_ends_the_member_with_credentials_sent_but_unconfirmed():
    member, new = await channels(lambda t: t, DropsDone)
    guard = PairingGuard("pi-kitchen", CREDENTIALS, done_wait_s=1.0)
    saved = []
    try:
        accepted, paired = await asyncio.wait_for(asyncio.gather(
            accept(member, guard, yes, timeout_s=30),
            pair(new, member.transport.address, "laptop", yes, saved.append, timeout_s=30)), 20)
    finally:
        await member.close()
        await new.close()
    assert paired.ok and saved == [CREDENTIALS] and new.transport.dropped >= 1
    assert accepted.ok and accepted.joined is None
    assert accepted.detail == "credentials sent; the new device did not confirm it saved them"
    assert guard.ended[-1].phase == "unconfirmed"


async def test_a_cookie_heard_at_one_address_opens_nothing_from_another_and_the_honest_device_pairs():
    """What a forged source can do: send a COMMIT (it gets a RETRY it never hears), or
    replay a cookie some address heard, from another address: neither starts an attempt
    nor holds the door. Over UDP that loses the first copy of every datagram too."""
    member, new, eve, mallory = await channels(lambda t: t, DropsEachFirstCopy, lambda t: t, lambda t: t)
    guard = PairingGuard("pi-kitchen", CREDENTIALS)
    heard: list[bytes] = []
    eve.handler = lambda data, source: heard.append(data)
    waiting = asyncio.create_task(accept(member, guard, yes, timeout_s=30))
    try:
        for n in range(20):
            initiator = Initiator(f"eve-{n}")
            eve.send(initiator.start(), member.transport.address)
            for _ in range(100):  # bounded: the RETRY on loopback
                if heard:
                    break
                await asyncio.sleep(0.02)
            retry = heard.pop()
            assert decode(retry).kind is Kind.RETRY
            (echo,) = initiator.receive(decode(retry), retry, 0).replies
            mallory.send(echo, member.transport.address)  # the cookie, from another address
        for _ in range(100):
            if guard.refused[Reason.BAD_COOKIE] == 20:
                break
            await asyncio.sleep(0.05)
        assert guard.refused[Reason.BAD_COOKIE] == 20 and guard.started == 0 and guard.session is None
        paired = await pair(new, member.transport.address, "laptop", yes, lambda c: None, timeout_s=30)
        accepted = await asyncio.wait_for(waiting, 15)
    finally:
        waiting.cancel()
        for channel in (member, new, eve, mallory):
            await channel.close()
    assert paired.ok and accepted.ok and guard.started == 1
    assert guard.crypto.x25519_operations == 2  # the honest attempt's only
