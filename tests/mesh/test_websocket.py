"""The mesh over WebSocket only, on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from flowmesh_edge import MeshNode, MessageType
from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.transports.websocket import (
    MAX_MESSAGE,
    WebSocketTransport,
    decode_hello,
    encode_hello,
)
from flowmesh_edge.mesh.wire import MAX_DATAGRAM
from tests.conftest import until

KEY = b"websocket-test-mesh-key-0123456789"


async def alive(a: MeshNode, b: MeshNode, timeout: float = 10) -> None:
    await until(lambda: a.peers().get(b.node_id) and a.peers()[b.node_id].status == "alive"
                and b.peers().get(a.node_id) and b.peers()[a.node_id].status == "alive", timeout)


async def direct(sender: MeshNode, receiver: MeshNode, payload: dict) -> None:
    got = []
    receiver.on(MessageType.DIRECT, got.append)
    await sender.send(receiver.node_id, payload)
    await until(lambda: any(m.payload == payload for m in got), 5)


async def test_two_listening_members_converge_and_talk_over_websocket_only():
    a = MeshNode("ws-a", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0))
    await a.start()
    b = MeshNode("ws-b", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0), peers=[a.address])
    await b.start()
    try:
        assert a.address.transport == "ws" and a.address.port > 0
        await alive(a, b)
        assert a.peers()["ws-b"].address == b.address and b.peers()["ws-a"].address == a.address
        await direct(a, b, {"hello": "b"})
        await direct(b, a, {"hello": "a"})
        report = await a.broadcast_alert({"type": "smoke"}, priority="critical")
        assert report.complete and report.acked == {"ws-b"}
        # b dialled a; a answers over that connection rather than dialling back
        assert not a._transport._links and len(b._transport._links) == 1
        for node in (a, b):
            assert node.stats()["dropped_total"] == 0, node.stats()["dropped"]
            assert node._transport.errors == [0] and not node._transport.dropped
    finally:
        await b.stop()
        await a.stop()


async def test_a_dial_only_member_joins_a_listening_one_and_is_answered_over_its_connection():
    hub = MeshNode("hub", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0))
    await hub.start()
    phone = MeshNode("phone", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", None),
                     peers=[hub.address])
    await phone.start()
    try:
        assert phone._transport.endpoints() == []
        await alive(hub, phone)
        seen = hub.peers()["phone"].address
        assert seen.transport == "ws" and seen.port == 0 and seen.host.startswith("127.0.0.1#")
        await direct(hub, phone, {"to": "phone"})
        await direct(phone, hub, {"to": "hub"})
        await phone.stop()
        # gone with its connection: nothing to dial, counted, never raised
        await until(lambda: not hub._transport._inbound, 5)
        hub._transport.send(b"x" * 10, seen)
        assert hub._transport.dropped["no_connection"] == 1
    finally:
        await phone.stop()
        await hub.stop()


async def test_garbage_and_oversized_messages_are_dropped_and_counted():
    node = MeshNode("target", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0))
    await node.start()
    peer = MeshNode("friend", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0),
                    peers=[node.address])
    transport = node._transport
    url = f"ws://127.0.0.1:{node.address.port}"
    try:
        # a binary message in place of the hello
        client = await connect(url, open_timeout=5)
        await client.send(b"\x00" * 10)
        await closed(client)
        assert client.close_code == 1008
        # after a hello: garbage datagrams reach the node, which drops them; text is dropped here
        client = await connect(url, open_timeout=5)
        await client.send(encode_hello(None))
        await client.send(b"\x01\x02\x03")
        await client.send(b"\xff" * 200)
        await client.send("text is not a datagram")
        await until(lambda: node.stats()["received"] >= 2 and transport.dropped["text"] == 1, 5)
        dropped = node.stats()["dropped"]
        assert dropped.get("truncated", 0) + dropped.get("forged", 0) == 2, dropped
        # a message over the limit closes the connection with 1009
        await client.send(b"x" * (MAX_MESSAGE + 1))
        await closed(client)
        assert client.close_code == 1009
        await until(lambda: transport.dropped["oversized"] == 1, 5)
        # between a datagram and the limit: dropped, the connection stays
        client = await connect(url, open_timeout=5)
        await client.send(encode_hello(Address("ws", "0.0.0.0", 1)))  # wildcard: its own IP is used
        await client.send(b"x" * (MAX_DATAGRAM + 1))
        await until(lambda: transport.dropped["oversized"] == 2, 5)
        assert Address("ws", "127.0.0.1", 1) in transport._inbound
        await client.close()
        # raw bytes that are not even HTTP
        reader, writer = await asyncio.open_connection("127.0.0.1", node.address.port)
        writer.write(b"\x16\x03\x01 garbage\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert transport.dropped["bad_hello"] == 1
        # and the node still works
        await peer.start()
        await alive(node, peer)
        await direct(peer, node, {"still": "here"})
    finally:
        await peer.stop()
        await node.stop()


async def closed(client) -> None:
    try:
        async with asyncio.timeout(5):
            async for _ in client:
                pass
    except ConnectionClosed:
        pass


async def test_a_peer_that_cannot_be_dialled_costs_one_attempt_per_backoff():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = WebSocketTransport("127.0.0.1", None)
    await transport.start(lambda data, source: None)
    try:
        nowhere = Address("ws", "127.0.0.1", port)
        transport.send(b"x" * 10, nowhere)
        transport.send(b"y" * 10, nowhere)  # queued behind the dial
        await until(lambda: transport.dropped["dial_failed"] == 2, 5)
        for _ in range(5):
            transport.send(b"z" * 10, nowhere)
        assert transport.dropped["backoff"] == 5
        transport.send(b"x" * (MAX_DATAGRAM + 1), nowhere)
        transport.send(b"x", Address("udp", "127.0.0.1", port))
        assert transport.dropped["oversized"] == 1 and transport.dropped["not_a_websocket_address"] == 1
        # a listener that takes the connection and then refuses us: backed off the same way
        async def refuse(connection):
            await connection.close(1008, "not for you")

        async with serve(refuse, "127.0.0.1", 0) as server:
            grumpy = Address("ws", "127.0.0.1", server.sockets[0].getsockname()[1])
            transport.send(b"x" * 10, grumpy)
            link = transport._links[grumpy]
            await until(lambda: link.failures == 1 and link.task is None, 5)
            transport.send(b"x" * 10, grumpy)
            assert transport.dropped["backoff"] == 6
    finally:
        await transport.close()


def test_the_hello_names_a_websocket_listen_address_or_none():
    assert decode_hello(encode_hello(None)) is None
    assert decode_hello(encode_hello(Address("wss", "10.0.0.5", 8766))) == Address("wss", "10.0.0.5", 8766)
    for bad in (b"{}", "{}", "[]", "not json", '{"flowmesh": 2, "listen": null}',
                '{"flowmesh": 1, "listen": "udp:1.2.3.4:5"}', '{"flowmesh": 1, "listen": "ws:x:0"}',
                '{"flowmesh": 1, "listen": 7}'):
        with pytest.raises(ValueError):
            decode_hello(bad)


def self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the wss test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


@pytest.fixture
def tls(tmp_path):
    return self_signed(tmp_path)


async def test_members_talk_over_wss(tls):
    server_ctx, client_ctx = tls
    a = MeshNode("wss-a", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", 0, ssl=server_ctx))
    await a.start()
    b = MeshNode("wss-b", mesh_key=KEY, transport=WebSocketTransport("127.0.0.1", None, dial_ssl=client_ctx),
                 peers=[a.address])
    await b.start()
    try:
        assert a.address.transport == "wss"
        await alive(a, b)
        await direct(a, b, {"over": "tls"})
    finally:
        await b.stop()
        await a.stop()
