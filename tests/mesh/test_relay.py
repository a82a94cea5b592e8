"""Members that share no network path, through a relay started by the test (127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from flowmesh_edge import MeshNode, MessageType
from flowmesh_edge.mesh import relay_protocol as rp
from flowmesh_edge.mesh import wire
from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.keyring import MeshKey
from flowmesh_edge.mesh.security import mesh_id_of
from flowmesh_edge.mesh.transports.relay import RelayTransport, relay_address
from flowmesh_edge.mesh.wire import Frame
from flowmesh_edge.relay.server import Relay
from tests.conftest import until
from tests.mesh.test_websocket import self_signed

KEY = b"relay-test-mesh-key-0123456789"
MESH = mesh_id_of(KEY)
TOKEN = "relay-test-token-0123456789"
#: Low enough that the test's flood trips it in a fraction of a second, high enough
#: for two members' probes, gossip and alert retransmissions.
RATE, BURST = 100.0, 200


class TamperingRelay(Relay):
    """A relay gone bad: flips a bit of every datagram it forwards while ``tamper`` is set."""

    tamper = False

    def _deliver(self, source, destination, datagram):
        if self.tamper:
            datagram = datagram[:40] + bytes([datagram[40] ^ 0x01]) + datagram[41:]
        super()._deliver(source, destination, datagram)


@pytest.fixture
async def relay():
    server = TamperingRelay("127.0.0.1", 0, [TOKEN], rate=RATE, burst=BURST, hello_timeout=0.5)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def pair(relay):
    """Members a and b, each with nothing but a relay transport; a knows b's relay address."""
    found = []
    ta = RelayTransport("a", MESH, [(relay.url, TOKEN)])
    tb = RelayTransport("b", MESH, [(relay.url, TOKEN)])
    tb.on_discovered(found.append)
    a = MeshNode("a", mesh_key=KEY, transport=ta, peers=[Address("relay", "b@127.0.0.1", relay.port)])
    b = MeshNode("b", mesh_key=KEY, transport=tb)
    await b.start()
    await a.start()
    try:
        await converged(a, b)
        # b was there first: the relay announced a to it
        await until(lambda: relay_address("a", "127.0.0.1", relay.port) in found, 5)
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def converged(a: MeshNode, b: MeshNode, timeout: float = 10) -> None:
    await until(lambda: a.peers().get("b") and a.peers()["b"].status == "alive"
                and b.peers().get("a") and b.peers()["a"].status == "alive", timeout)


async def exchange(a: MeshNode, b: MeshNode, tag: str) -> None:
    """A critical alert from a acknowledged by b, and a routed message each way."""
    alerts, direct_b, direct_a = [], [], []
    b.on(MessageType.ALERT, alerts.append)
    b.on(MessageType.DIRECT, direct_b.append)
    a.on(MessageType.DIRECT, direct_a.append)
    report = await a.broadcast_alert({"type": "intrusion", "tag": tag}, priority="critical")
    assert report.complete and report.acked == {"b"}
    await a.send("b", {"to": "b", "tag": tag})
    await b.send("a", {"to": "a", "tag": tag})
    await until(lambda: any(m.payload.get("tag") == tag for m in direct_b)
                and any(m.payload.get("tag") == tag for m in direct_a), 5)
    await until(lambda: any(m.payload["alert"].get("tag") == tag for m in alerts), 5)
    assert {m.origin for m in direct_b} == {"a"} and {m.origin for m in direct_a} == {"b"}


async def test_two_members_with_no_shared_path_meet_through_the_relay(relay, pair):
    a, b = pair
    await exchange(a, b, "first")
    a.update_state({"fps": 25})  # heartbeats: state spreads through the relay too
    await until(lambda: b.peers()["a"].node_state.get("fps") == 25, 5)
    assert a.peers()["b"].address == Address("relay", "b@127.0.0.1", relay.port)
    assert b.peers()["a"].address == Address("relay", "a@127.0.0.1", relay.port)
    assert relay.members(MESH) == ["a", "b"] and relay.forwarded > 0
    for node in (a, b):
        assert node.stats()["dropped_total"] == 0, node.stats()["dropped"]
    assert not relay.counters, relay.counters


async def close_of(client) -> tuple[int, str]:
    """The close code and reason the relay sent, waiting at most 5 s for it."""
    try:
        async with asyncio.timeout(5):
            async for _ in client:
                pass
    except ConnectionClosed:
        pass
    return client.close_code, client.close_reason


async def authenticated(relay, node: str, token: str = TOKEN):
    client = await connect(relay.url, compression=None, open_timeout=5)
    await client.send(rp.encode_hello(rp.Hello(token, MESH, node)))
    return client


async def test_misbehaving_clients_are_refused_while_members_keep_working(relay, pair):
    a, b = pair
    # data before any hello
    client = await connect(relay.url, open_timeout=5)
    await client.send(rp.encode_data("b", b"x" * 100))
    code, reason = await close_of(client)
    assert code == 1008 and reason.startswith(rp.REASON_AUTH_REQUIRED)
    # a hello with the wrong token
    client = await authenticated(relay, "mallory", token="not-the-relay-token-at-all")
    assert await close_of(client) == (1008, rp.REASON_BAD_TOKEN)
    # no hello at all (the fixture's relay waits 0.5 s)
    client = await connect(relay.url, open_timeout=5)
    assert await close_of(client) == (1008, rp.REASON_HELLO_TIMEOUT)
    # a frame over the size limit, once authenticated
    client = await authenticated(relay, "big")
    assert rp.decode_control(await asyncio.wait_for(client.recv(), 5)).kind == "ok"
    await client.send(rp.encode_data("b", b"x" * 4000))
    code, _ = await close_of(client)
    assert code == 1009
    # a flood (to a node that is not there: the members see none of it)
    client = await authenticated(relay, "flooder")
    sent = 0
    try:
        async with asyncio.timeout(10):
            while sent < 10 * BURST:
                await client.send(rp.encode_data("nobody", b"x" * 50))
                sent += 1
    except ConnectionClosed:
        pass
    assert await close_of(client) == (1008, rp.REASON_RATE_LIMIT)
    counters = relay.counters
    assert counters["unauthenticated"] == 1 and counters["bad_token"] == 1
    assert counters["hello_timeout"] == 1 and counters["oversized"] == 1
    assert counters["rate_limited"] == 1 and counters["unknown_destination"] >= BURST
    # the members never noticed
    await exchange(a, b, "after the attacks")
    assert a.peers()["b"].status == "alive" and b.peers()["a"].status == "alive"
    for node in (a, b):
        assert node.stats()["dropped_total"] == 0, node.stats()["dropped"]
    assert relay.members(MESH) == ["a", "b"]


async def test_a_frame_altered_in_transit_is_refused_as_forged(relay, pair):
    a, b = pair
    got = []
    b.on(MessageType.DIRECT, got.append)
    relay.tamper = True
    await a.send("b", {"n": 1})
    await until(lambda: b.stats()["dropped"].get("forged", 0) >= 1, 5)
    relay.tamper = False
    # nor can a member with the relay token but not the mesh key speak for a
    mallory = await authenticated(relay, "mallory")
    assert rp.decode_control(await asyncio.wait_for(mallory.recv(), 5)).kind == "ok"
    forged = wire.encode_frame(
        Frame(wire.MessageType.DIRECT, "a", a.incarnation, 999, int(time.time()), b"\x00" * 16),
        MeshKey(b"mallory's own key, long enough").tagged)
    before = b.stats()["dropped"].get("forged", 0)
    await mallory.send(rp.encode_data("b", forged))
    await until(lambda: b.stats()["dropped"].get("forged", 0) > before, 5)
    await mallory.close()
    assert not any(m.payload == {"n": 1} for m in got)
    await exchange(a, b, "untampered")


async def test_the_relay_survives_garbage(relay, pair):
    a, b = pair
    rng = random.Random(9)
    loop = asyncio.get_running_loop()
    for size in (1, 17, 300, 5000):  # not even HTTP
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(rng.randbytes(size))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # the relay hangs up
        writer.close()
        await writer.wait_closed()
    for _ in range(3):  # garbage in place of a hello, as text and binary
        client = await connect(relay.url, open_timeout=5)
        await client.send(rng.randbytes(rng.randrange(1, 900)).decode("latin-1"))
        assert (await close_of(client))[0] == 1008
    # and after a good hello: malformed headers, truncated ids, stray text, all dropped
    client = await authenticated(relay, "noisy")
    assert rp.decode_control(await asyncio.wait_for(client.recv(), 5)).kind == "ok"
    junk = [b"", b"\xff", b"\x05ab", b"\x02\xff\xfe" + b"x" * 10, b"\x00"]
    junk += [rng.randbytes(rng.randrange(1, 200)) for _ in range(40)]
    for message in junk:
        await client.send(message)
    await client.send("{not json")
    await client.send(rp.encode_data("a", b"valid header, garbage datagram"))
    await until(lambda: relay.counters["malformed"] >= 5, 5)
    await client.close()
    assert loop.time() and relay.counters["unexpected_text"] == 1
    await exchange(a, b, "after garbage")
    assert a.stats()["dropped"].get("forged", 0) + a.stats()["dropped"].get("truncated", 0) >= 1


async def test_a_newer_connection_of_the_same_node_replaces_the_older(relay, pair):
    first = await authenticated(relay, "twin")
    assert rp.decode_control(await asyncio.wait_for(first.recv(), 5)).peers == ("a", "b")
    second = await authenticated(relay, "twin")
    assert rp.decode_control(await asyncio.wait_for(second.recv(), 5)).kind == "ok"
    assert await close_of(first) == (rp.CLOSE_REPLACED, rp.REASON_REPLACED)
    assert relay.members(MESH) == ["a", "b", "twin"]
    await second.close()
    await until(lambda: relay.members(MESH) == ["a", "b"], 5)


async def test_a_full_relay_asks_newcomers_to_come_back_later():
    async with Relay("127.0.0.1", 0, [TOKEN], max_members=1) as small:
        first = await authenticated(small, "first")
        assert rp.decode_control(await asyncio.wait_for(first.recv(), 5)).kind == "ok"
        second = await authenticated(small, "second")
        assert await close_of(second) == (rp.CLOSE_TRY_AGAIN, rp.REASON_FULL)
        again = await authenticated(small, "first")  # a reconnection still replaces its older self
        assert rp.decode_control(await asyncio.wait_for(again.recv(), 5)).kind == "ok"
        assert await close_of(first) == (rp.CLOSE_REPLACED, rp.REASON_REPLACED)
        await again.close()
        assert small.counters == {"full": 1, "replaced": 1}


async def test_members_reconnect_when_the_relay_comes_back(relay, pair):
    a, b = pair
    port = relay.port
    await relay.close()
    await until(lambda: not a._transport.connected() and not b._transport.connected(), 5)
    again = Relay("127.0.0.1", port, [TOKEN], rate=RATE, burst=BURST)
    await again.start()
    try:
        took = await until(lambda: a._transport.connected() and b._transport.connected(), 10)
        await converged(a, b, 15)  # the outage may have cost b its place in a's view: it comes back
        await exchange(a, b, "after the restart")
    finally:
        await again.close()
    # first retry after 1 s +/- 25 %, the next 2 s later: both are back within ~3.5 s
    assert took < 4.5


async def test_datagrams_wait_for_the_relay_within_a_bound():
    port = free_port()
    transport = RelayTransport("a", MESH, [(f"ws://127.0.0.1:{port}", TOKEN)], queue_limit=3, seed=1)
    await transport.start(lambda data, source: None)
    b = relay_address("b", "127.0.0.1", port)
    try:
        await until(lambda: transport._relays[0].failures >= 1, 5)  # refused: backing off >= 0.75 s
        for n in range(5):
            transport.send(b"datagram %d" % n, b)
        assert transport.dropped == {"queue_full": 2} and transport.errors == [2]
        assert not transport.broadcast(b"nobody hears this")
        async with Relay("127.0.0.1", port, [TOKEN]) as server:
            client = await authenticated(server, "b")  # there before a comes back
            assert rp.decode_control(await asyncio.wait_for(client.recv(), 5)).kind == "ok"
            got = []
            async with asyncio.timeout(10):
                while len(got) < 3:
                    message = await client.recv()
                    if isinstance(message, bytes):
                        got.append(rp.decode_data(message))
            assert got == [("a", b"datagram %d" % n) for n in range(3)]
            assert transport.broadcast(b"now it goes out")
            await client.close()
    finally:
        await transport.close()


async def test_members_reach_a_relay_over_tls(tmp_path):
    server_ctx, client_ctx = self_signed(tmp_path)
    async with Relay("127.0.0.1", 0, [TOKEN], ssl=server_ctx) as secure:
        assert secure.url.startswith("wss://")
        relays = [(secure.url, TOKEN)]
        a = MeshNode("a", mesh_key=KEY, transport=RelayTransport("a", MESH, relays, ssl=client_ctx),
                     peers=[relay_address("b", "127.0.0.1", secure.port)])
        b = MeshNode("b", mesh_key=KEY, transport=RelayTransport("b", MESH, relays, ssl=client_ctx))
        await b.start()
        await a.start()
        try:
            await converged(a, b)
            await exchange(a, b, "over tls")
        finally:
            await a.stop()
            await b.stop()


async def test_a_wrong_token_is_retried_with_backoff_and_never_logged(relay, caplog):
    transport = RelayTransport("lost", MESH, [(relay.url, "a-token-the-relay-does-not-know")])
    await transport.start(lambda data, source: None)
    try:
        await until(lambda: relay.counters["bad_token"] >= 1, 5)
        await asyncio.sleep(0.3)
        assert relay.counters["bad_token"] == 1  # backing off, not hammering
        assert not transport.connected()
        assert transport._relays[0].last_close == f"closed: 1008 {rp.REASON_BAD_TOKEN}"
        transport.send(b"x" * 100, relay_address("b", "127.0.0.1", relay.port))  # queued, no raise
        transport.send(b"x" * 100, relay_address("b", "elsewhere", 1))
        transport.send(b"x" * 100, Address("udp", "127.0.0.1", 1))
        assert transport.dropped == {"unknown_relay": 1, "not_a_relay_address": 1}
        # only our relays' addresses are paths of ours
        assert transport.handles(relay_address("b", "127.0.0.1", relay.port))
        assert not transport.handles(relay_address("b", "elsewhere", 1))
        assert not transport.handles(Address("relay", "no-at-sign", relay.port))
    finally:
        await transport.close()
    assert "a-token-the-relay-does-not-know" not in caplog.text and TOKEN not in caplog.text


async def test_a_relay_url_is_logged_without_its_user_info_or_query(relay, caplog):
    caplog.set_level("INFO", logger="flowmesh_edge")
    url = relay.url.replace("ws://", "ws://user:url-secret@") + "/?token=query-secret"
    transport = RelayTransport("a", MESH, [(url, TOKEN)])
    await transport.start(lambda data, source: None)
    try:
        await until(lambda: "relay ws://127.0.0.1" in caplog.text, 5)
    finally:
        await transport.close()
    assert "url-secret" not in caplog.text and "query-secret" not in caplog.text


# -- the command ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_relay(token_file, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flowmesh_edge.cli", "relay", "--port", str(port),
                             "--token-file", str(token_file)], stderr=subprocess.PIPE, text=True)


def test_the_relay_command_refuses_token_files_others_can_read_or_that_hold_nothing(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    empty.chmod(0o600)
    for path, expected in ((tokens, "is mode 0644"), (empty, "holds no token"),
                           (tmp_path / "missing", "does not exist")):
        proc = run_relay(path, free_port())
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], err
        assert TOKEN not in err


async def test_the_relay_command_serves_with_a_private_token_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# relay tokens\n{TOKEN}\nsecond-token-0123456789\n")
    tokens.chmod(0o600)
    port = free_port()
    proc = run_relay(tokens, port)
    try:
        deadline = time.monotonic() + 20
        client = None
        while client is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                client = await connect(f"ws://127.0.0.1:{port}", open_timeout=2)
            except OSError:
                await asyncio.sleep(0.1)
        assert client is not None, "the relay did not start"
        await client.send(rp.encode_hello(rp.Hello("second-token-0123456789", MESH, "probe")))
        assert rp.decode_control(await asyncio.wait_for(client.recv(), 5)) == rp.Control("ok")
        await client.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err
    assert f"relay listening on ws://127.0.0.1:{port}" in err and "relay stopped" in err
    assert TOKEN not in err and "second-token" not in err


async def test_the_relay_command_serves_wss_with_a_private_key(tmp_path):
    _, client_ctx = self_signed(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN)
    tokens.chmod(0o600)
    key = tmp_path / "key.pem"
    key.chmod(0o640)
    tls = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(key)]
    refused = subprocess.run([sys.executable, "-m", "flowmesh_edge.cli", "relay", "--port", str(free_port()),
                              "--token-file", str(tokens), *tls], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "TLS key" in refused.stderr and "mode 0640" in refused.stderr
    key.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flowmesh_edge.cli", "relay", "--port", str(port),
                             "--token-file", str(tokens), *tls], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        client = None
        while client is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                client = await connect(f"wss://127.0.0.1:{port}", ssl=client_ctx, open_timeout=2)
            except OSError:
                await asyncio.sleep(0.1)
        assert client is not None, "the relay did not start"
        await client.send(rp.encode_hello(rp.Hello(TOKEN, MESH, "probe")))
        assert rp.decode_control(await asyncio.wait_for(client.recv(), 5)) == rp.Control("ok")
        await client.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err
    assert f"relay listening on wss://127.0.0.1:{port}" in err


async def test_a_member_on_two_relays_is_reachable_through_either():
    other = "another-token-0123456789"
    async with Relay("127.0.0.1", 0, [TOKEN]) as one, Relay("127.0.0.1", 0, [other]) as two:
        relays = [(one.url, TOKEN), (two.url, other)]
        found, inbox = [], []
        a = RelayTransport("a", MESH, relays)
        b = RelayTransport("b", MESH, relays)
        a.on_discovered(found.append)
        await a.start(lambda data, source: inbox.append((data, source)))
        await b.start(lambda data, source: b.send(data[::-1], source))  # answer the way it came
        try:
            assert a.endpoints() == [relay_address("a", "127.0.0.1", one.port),
                                     relay_address("a", "127.0.0.1", two.port)]
            via_one = relay_address("b", "127.0.0.1", one.port)
            via_two = relay_address("b", "127.0.0.1", two.port)
            await until(lambda: via_one in found and via_two in found, 10)
            a.send(b"ping one", via_one)
            a.send(b"ping two", via_two)
            await until(lambda: len(inbox) == 2, 5)
            assert sorted(inbox, key=lambda x: x[1].port) == sorted(
                [(b"eno gnip", via_one), (b"owt gnip", via_two)], key=lambda x: x[1].port)
            await one.close()
            await until(lambda: a.connected() == [relay_address("a", "127.0.0.1", two.port)], 5)
            assert a.broadcast(b"still here")  # one relay left is enough
            a.send(b"ping again", via_two)
            await until(lambda: (b"niaga gnip", via_two) in inbox, 5)
        finally:
            await a.close()
            await b.close()


def test_the_token_bucket_allows_the_burst_then_the_rate():
    from flowmesh_edge.relay.server import TokenBucket

    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True and bucket.take(0.1) is False
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # saving never exceeds the burst


def test_token_files_hold_usable_tokens_only(tmp_path):
    from flowmesh_edge.relay.command import TokenFileError, read_token_file

    path = tmp_path / "tokens"
    for text, expected in ((f"{TOKEN}", [TOKEN]), (f"# a comment\n\n  {TOKEN}  \nsecond-token-0123456789\n",
                                                    [TOKEN, "second-token-0123456789"])):
        path.write_text(text)
        path.chmod(0o600)
        assert read_token_file(path) == expected
    for text, problem in (("short\n", "token 1 in"), (f"{TOKEN}\n{'x' * 300}\n", "token 2 in")):
        path.write_text(text)
        with pytest.raises(TokenFileError, match=problem) as info:
            read_token_file(path)
        assert "short" not in str(info.value) and "x" * 20 not in str(info.value)
    path.chmod(0o640)
    with pytest.raises(TokenFileError, match="mode 0640"):
        read_token_file(path)
    with pytest.raises(TokenFileError, match="not a regular file"):
        read_token_file(tmp_path)
