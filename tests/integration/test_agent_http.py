"""The agent's own endpoints (--http-port), over real sockets on loopback, with a real
database and a real two-member mesh.

Every HTTP call and database read goes through a worker thread: the agent under
test runs in this loop, and the autouse fixture fails a test whose loop blocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from flowmesh.errors import DatabaseUnreachable
from flowmesh_edge import Agent, AgentConfig, Outbox, Shipper
from flowmesh_edge.links import MeshLinks, MeshOptions
from flowmesh_edge.mesh.security import mesh_id_of
from tests.conftest import until
from tests.support.lines import Lines

KEY = "agent-http-test-key-0123456789"
BIN = Path(sys.executable).parent


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["content-type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["content-type"], exc.read().decode()


async def get_json(url: str) -> dict:
    status, kind, body = await asyncio.to_thread(get, url)
    assert status == 200 and kind == "application/json", (status, kind, body)
    return json.loads(body)


async def poll(url: str, check, timeout: float = 15.0) -> dict:
    """GET ``url`` until ``check(json)`` holds; fail showing the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await get_json(url)
        if check(data):
            return data
        if loop.time() > deadline:
            raise AssertionError(f"{url}: condition not met within {timeout}s; last answer {data!r}")
        await asyncio.sleep(0.05)


class Gate:
    """The agent's database resolver, closed until opened: the database away, then back."""

    def __init__(self, url: str):
        self.url, self.open = url, False

    def __call__(self) -> str:
        if not self.open:
            # as a resolver may word it, with a password the endpoints must never show
            raise DatabaseUnreachable("cannot reach the database: gate closed at "
                                      "postgresql://edge:s3cret@127.0.0.1:1/flowmesh")
        return self.url


def member(name: str, tmp_path, url, peers=(), http_port: int | None = None,
           ws: bool = False) -> tuple[Agent, MeshLinks]:
    """An agent on a mesh on loopback: UDP, and with ``ws`` a WebSocket listener too (two
    paths to each member, so that the connection train probes them and knows round trips:
    over a single path, SWIM alone watches a member and no round trip is measured)."""
    config = AgentConfig(node_id=name, tetrahedron="home", interval_s=0.2, backoff_initial_s=0.05,
                         backoff_max_s=0.2, flush_timeout_s=2, http_port=http_port)
    links = MeshLinks(name, MeshOptions(mesh_key=KEY, port=0, bind="127.0.0.1", peers=list(peers),
                                        ws_port=0 if ws else None,
                                        meshes_file=tmp_path / f"{name}-meshes.json"),
                      {"tetrahedron": "home"})
    assert links.build()
    box = Outbox(tmp_path / f"{name}.sqlite3")
    return Agent(config, box, Shipper(box, url), sample=lambda: {"cpu_percent": 3.0}, links=links), links


async def test_the_endpoints_show_the_device_its_outbox_its_peers_and_its_gossip(db_url, tmp_path):
    gate = Gate(db_url)
    pi, pi_links = member("pi", tmp_path, gate, http_port=0, ws=True)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(pi.run(stop))]
    cam = None
    try:
        await until(lambda: pi.http is not None)
        base = pi.http.url
        assert pi.http.host == "127.0.0.1" and pi.http.port > 0
        cam, cam_links = member("cam", tmp_path, db_url, peers=[pi_links.primary.address], ws=True)
        tasks.append(asyncio.create_task(cam.run(stop)))
        await check_health_through_an_outage(base, gate)
        await check_network(base, pi_links, cam_links)
        await check_gossip(base, cam_links)
        await check_map_and_unknown_paths(base)
        await check_heartbeats_carry_gossip(db_url)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        for agent in (pi, cam):
            if agent is not None:
                agent.outbox.close()
    assert pi.http is None  # stopped with the agent


async def check_health_through_an_outage(base: str, gate: Gate) -> None:
    # the database away: heartbeats pile up, the error shows on one line, its password masked
    away = await poll(f"{base}/health", lambda h: h["shipping"]["failing"]
                      and h["outbox"]["heartbeats"] >= 3 and h["heartbeats_sampled"] >= 3)
    assert away["node_id"] == "pi" and away["tetrahedron"] == "home" and away["version"]
    assert away["metrics"] == {"cpu_percent": 3.0} and away["sampled_at"]
    assert away["uptime_s"] > 0
    assert away["shipping"]["last_shipped_at"] is None and away["shipping"]["failures"] >= 1
    error = away["shipping"]["last_error"]
    assert error.startswith("database unreachable: gate closed") and "\n" not in error
    assert "s3cret" not in error and "edge:***@" in error

    # the database back: the queue ships, the depth falls, the last shipment is stamped
    gate.open = True
    back = await poll(f"{base}/health", lambda h: h["shipping"]["last_shipped_at"] is not None
                      and not h["shipping"]["failing"])
    assert back["outbox"]["heartbeats"] < away["outbox"]["heartbeats"]
    assert back["shipping"]["shipped"] >= away["outbox"]["heartbeats"]
    # the last failure is kept, for whoever looks after the fact
    assert back["shipping"]["last_error"] == error and back["shipping"]["last_error_at"]


async def check_network(base: str, pi_links: MeshLinks, cam_links: MeshLinks) -> None:
    """cam alive on pi's network, over UDP (preferred to its WebSocket), with a round trip,
    and both its endpoints."""
    def cam_reached(data: dict) -> bool:
        peers = {p["node_id"]: p for p in data["meshes"][0]["peers"]}
        return peers.get("cam", {}).get("status") == "alive" and peers["cam"]["rtt_ms"] is not None

    net = await poll(f"{base}/network", cam_reached)
    (mesh,) = net["meshes"]
    assert mesh["mesh_id"] == mesh_id_of(KEY) and mesh["address"] == str(pi_links.primary.address)
    (peer,) = mesh["peers"]
    assert peer["transport"] == "udp" and peer["path"] == str(cam_links.primary.address)
    assert peer["rtt_ms"] >= 0 and peer["meta"] == {"tetrahedron": "home"}
    assert [e["address"] for e in peer["endpoints"]] == [str(a) for a in cam_links.primary.endpoints()]
    assert [e["address"].split(":")[0] for e in peer["endpoints"]] == ["udp", "ws"]
    assert mesh["endpoints"] == [str(a) for a in pi_links.primary.endpoints()]
    health = await get_json(f"{base}/health")
    assert health["meshes"][0]["members"] == {"alive": 1, "suspect": 0, "dead": 0}
    assert health["meshes"][0]["incarnation"] == pi_links.primary.incarnation
    keyring = health["meshes"][0]["keyring"]
    assert keyring["keys"] == pi_links.primary.keyring.ids() and keyring["encrypt"] is True
    assert all(len(k) == 8 for k in keyring["keys"])  # ids, never a key


async def check_gossip(base: str, cam_links: MeshLinks) -> None:
    """A broadcast from cam: pi's counters rise, per mesh and in total."""
    before = await get_json(f"{base}/gossip/summary")
    assert before["total"] == {k: before["meshes"][0][k] for k in ("seen", "duplicates", "propagated")}
    await cam_links.primary.broadcast({"hello": "pi"})
    after = await poll(f"{base}/gossip/summary", lambda g: g["total"]["seen"] > before["total"]["seen"])
    assert after["meshes"][0]["mesh_id"] == mesh_id_of(KEY)
    assert after["total"]["seen"] == after["meshes"][0]["seen"]


async def check_map_and_unknown_paths(base: str) -> None:
    # the map: one self-contained page naming the peer, with nothing to fetch elsewhere
    status, kind, page = await asyncio.to_thread(get, f"{base}/map")
    assert status == 200 and kind.startswith("text/html")
    assert 'data-peer="cam"' in page and "<script>" in page and 'fetch("network"' in page
    assert "src=" not in page and "href=" not in page and "://" not in page

    # unknown paths and methods: JSON, never a page
    status, kind, body = await asyncio.to_thread(get, f"{base}/nowhere")
    assert (status, kind, json.loads(body)) == (404, "application/json",
                                                 {"error": "Not Found", "path": "/nowhere"})
    # a web page's DNS rebinding: a request for another host name is refused
    rebound = urllib.request.Request(f"{base}/health", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, rebound, timeout=5)
    with refused.value as answer:
        assert answer.code == 421 and "not this machine" in json.loads(answer.read())["error"]
    request = urllib.request.Request(f"{base}/health", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    with refused.value as answer:
        assert answer.code == 405 and json.loads(answer.read())["error"] == "Method Not Allowed"


async def check_heartbeats_carry_gossip(db_url: str) -> None:
    """pi's heartbeats carry its gossip counters, in a payload that stays small, and
    gossip_summary() (the dashboard's SQL) reads them."""
    def summary() -> list[tuple]:
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "select g.node_id, g.seen, g.duplicates, g.propagated, h.payload -> 'mesh' -> 'gossip', "
                "       length(h.payload::text) "
                "  from tetrahedrons t, gossip_summary(t.id) g "
                "  join mesh_heartbeats h on h.source = g.node_id and h.created_at = g.reported_at "
                " where t.name = 'home' and g.node_id = 'pi' and g.seen > 0").fetchall()

    await until(summary, blocking=True)
    _, seen, duplicates, propagated, gossip, size = (await asyncio.to_thread(summary))[0]
    assert gossip == {"seen": seen, "duplicates": duplicates, "propagated": propagated}
    assert size < 400


def listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN}


async def test_without_a_port_nothing_listens_and_a_busy_port_leaves_the_agent_running(
        db_url, tmp_path, caplog):
    before = await asyncio.to_thread(listening_ports)
    quiet, _ = member("quiet", tmp_path, db_url)
    stop = asyncio.Event()
    task = asyncio.create_task(quiet.run(stop))
    try:
        await until(lambda: quiet.stats.last_shipped_at is not None)
        assert quiet.http is None and await asyncio.to_thread(listening_ports) == before
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        quiet.outbox.close()

    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy, _ = member("busy", tmp_path, db_url, http_port=taken.getsockname()[1])
        task = asyncio.create_task(busy.run(stop := asyncio.Event()))
        try:
            await until(lambda: busy.stats.last_shipped_at is not None)
            assert busy.http is None
            assert "http endpoints off: cannot listen on 127.0.0.1 port" in caplog.text
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=20)
            busy.outbox.close()


@pytest.mark.parametrize("given", ["flags", "environment"])
def test_the_command_line_serves_the_endpoints_on_the_port_given(given, db_url, tmp_path):
    """`flowmesh-edge run --http-port 0` (or FLOWMESH_HTTP_PORT=0): a free port, logged,
    serving /health."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOWMESH_DATABASE_URL", "FLOWMESH_HTTP"))}
    flags = ["--http-port", "0", "--http-bind", "127.0.0.1"] if given == "flags" else []
    if given == "environment":
        env.update(FLOWMESH_HTTP_PORT="0", FLOWMESH_HTTP_BIND="127.0.0.1")
    proc = subprocess.Popen(
        [str(BIN / "flowmesh-edge"), "run", "--database-url", db_url, "--node-id", "pi",
         "--tetrahedron", "home", "--interval", "0.2", "--outbox", str(tmp_path / "pi.sqlite3"), *flags],
        stderr=subprocess.PIPE, text=True, env=env)
    lines = Lines(proc.stderr)
    try:
        line = lines.wait_for(lambda text: "http endpoints on http://127.0.0.1:" in text, timeout=30)
        url = line.split("http endpoints on ", 1)[1].split()[0]
        status, _, body = get(f"{url}/health")
        assert status == 200 and json.loads(body)["node_id"] == "pi"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    err = lines.close()
    assert "Traceback" not in err and "unauthenticated" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--http-port", "70000"], "70000 is not in the range 0<=x<=65535"),
    (["--http-port", "web"], "'web' is not a valid integer"),
])
def test_a_bad_port_is_one_usage_error(args, message):
    result = subprocess.run([str(BIN / "flowmesh-edge"), "run", "--database-url",
                             "postgresql://postgres@127.0.0.1:1/nowhere", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_the_help_documents_the_endpoints():
    out = subprocess.run([str(BIN / "flowmesh-edge"), "run", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for text in ("--http-port", "FLOWMESH_HTTP_PORT", "--http-bind", "FLOWMESH_HTTP_BIND", "/gossip/summary"):
        assert text in out
