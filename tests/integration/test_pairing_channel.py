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
    # every distinct datagram was lost once: COMMIT, REVEAL, CONFIRM, DONE one way,
    # RESPONSE, READY and the credentials the other
    assert new.transport.dropped == 4 and member.transport.dropped >= 3
    assert guard.refused[Reason.DUPLICATE] >= 1  # retransmissions answered, counted


async def test_a_flood_during_a_pairing_is_refused_as_busy_and_the_pairing_completes():
    member, new, flood = await channels(lambda t: t, lambda t: t, lambda t: t)
    guard = PairingGuard("pi-kitchen", CREDENTIALS)
    answers: list[bytes] = []
    flood.handler = lambda data, source: answers.append(data)
    flooded = asyncio.Event()

    async def after_the_flood(code: str, peer: str) -> bool:
        for batch in range(100):
            for n in range(10):
                flood.send(Initiator(f"flood-{batch}-{n}").start(), member.transport.address)
            await asyncio.sleep(0.01)  # let the member read its socket: a flood, not a buffer overrun
        for _ in range(200):  # bounded: until the member has handled every request
            if guard.refused[Reason.BUSY] == 1000:
                break
            await asyncio.sleep(0.05)
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
    assert guard.refused[Reason.BUSY] == 1000, guard.refused
    assert guard.started == 1 and guard.crypto.x25519_operations == 2  # the honest attempt's only
    assert answers and all(decode(a).kind is Kind.ABORT for a in answers)


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
        eve.receive(decode(to_attacker[0]), to_attacker[0], 0)
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
