"""The agent's own endpoints: this device's view, for inspecting it on the spot.

``flowmesh-edge run --http-port P`` serves, as JSON unless said otherwise:

* ``GET /health``: node, tetrahedron, version, uptime, the last metrics sampled,
  the outbox's depth, the last shipment and the last error, each mesh's members;
* ``GET /network``: per mesh, every member with its status, the path in use
  (transport, address, round trip) and all its endpoints (paths.py);
* ``GET /gossip/summary``: per mesh and in total, envelopes seen, duplicates,
  propagated;
* ``GET /map``: a small self-contained HTML page of the peers that refreshes
  itself from ``/network``.

What a node's status means is decided in SQL (``nodes.status``); these report
the agent's raw facts, never a health verdict of their own.

Starlette on uvicorn, served from the agent's own event loop; this module, and
with it both libraries, is imported only when the port is given. Handlers are
coroutines that read memory only: the outbox's depth is the count the outbox
keeps as it changes (``Outbox.depth``), and nothing here touches SQLite or
the database. The endpoints are unauthenticated, hence loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from flowmesh import __version__
from flowmesh.errors import redact_secrets

from .http_guard import Guard
from .mesh.address import is_loopback
from .outbox import EVENT, HASH, HEARTBEAT

if TYPE_CHECKING:
    from .agent import Agent
    from .mesh import MeshNode

log = logging.getLogger("flowmesh_edge.http")

#: Longest error text /health returns (one line, secrets masked).
ERROR_MAX_CHARS = 300
#: Seconds between the map page's refreshes from /network.
MAP_REFRESH_S = 3


def _iso(wall: float | None) -> str | None:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds") if wall else None


def _error_line(text: str | None) -> str | None:
    """An error as /health shows it: one line, at most ERROR_MAX_CHARS, no password."""
    if text is None:
        return None
    line = redact_secrets(" ".join(text.split()))
    return line if len(line) <= ERROR_MAX_CHARS else line[:ERROR_MAX_CHARS - 1] + "…"


# -- the views: plain data from the agent's memory ------------------------------------------

def health(agent: Agent) -> dict:
    stats, config = agent.stats, agent.config
    depth = agent.outbox.depth  # kept by the outbox as it changes: no SQL here
    return {
        "node_id": config.node_id,
        "tetrahedron": config.tetrahedron,
        "role": config.role,
        "version": __version__,
        "started_at": _iso(agent.started_at),
        "uptime_s": round(time.monotonic() - agent.started_monotonic, 3),
        "metrics": stats.last_metrics,
        "sampled_at": _iso(stats.last_sampled_at),
        "heartbeats_sampled": stats.sampled,
        "events_recorded": stats.events,
        "outbox": {"heartbeats": depth.get(HEARTBEAT, 0), "events": depth.get(EVENT, 0),
                   "hashes": depth.get(HASH, 0)},
        "shipping": {
            "last_shipped_at": _iso(stats.last_shipped_at),
            "shipped": stats.shipped.shipped,
            "dead_lettered": stats.shipped.dead_lettered,
            "failures": stats.failures,
            "failing": stats.last_error is not None,
            "last_error": _error_line(stats.last_failure),
            "last_error_at": _iso(stats.last_failure_at),
        },
        "meshes": [_mesh_summary(mesh_id, node) for mesh_id, node in agent.meshes()],
    }


def _mesh_summary(mesh_id: str | None, node: MeshNode) -> dict:
    stats = node.stats()
    return {"mesh_id": mesh_id, "address": str(node.address), "running": node.running,
            "incarnation": node.incarnation, "members": stats["members"],
            # key ids only: where a rotation stands on this device
            "keyring": node.rotation.describe()}


def network(agent: Agent) -> dict:
    return {"node_id": agent.config.node_id,
            "meshes": [_mesh_network(mesh_id, node) for mesh_id, node in agent.meshes()]}


def _mesh_network(mesh_id: str | None, node: MeshNode) -> dict:
    paths = node.stats().paths
    peers = []
    for peer_id, peer in sorted(node.peers().items()):
        path = paths.get(peer_id, {})
        peers.append({
            "node_id": peer_id,
            "status": peer.status,
            "incarnation": peer.incarnation,
            "transport": path.get("transport"),
            "path": path.get("path"),
            "rtt_ms": path.get("rtt_ms"),
            "last_heard": _iso(peer.last_heard),
            "meta": peer.meta,
            "endpoints": [{**e, "last_seen": _iso(e.get("last_seen"))} for e in path.get("endpoints", [])],
        })
    return {"mesh_id": mesh_id, "address": str(node.address),
            "endpoints": [str(a) for a in node.endpoints()], "peers": peers}


def gossip_summary(agent: Agent) -> dict:
    meshes, total = [], {"seen": 0, "duplicates": 0, "propagated": 0}
    for mesh_id, node in agent.meshes():
        gossip = node.stats().gossip
        counts = {"seen": gossip.seen, "duplicates": gossip.duplicates, "propagated": gossip.propagated}
        for key, value in counts.items():
            total[key] += value
        meshes.append({"mesh_id": mesh_id, **counts})
    return {"node_id": agent.config.node_id, "meshes": meshes, "total": total}


# -- the map page ---------------------------------------------------------------------------

_MAP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FlowMesh: __NODE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #f6f7f9; }
h1 { font-size: 1.2em; margin: 0 0 .2em; }
p.sub { margin: 0 0 1em; color: #59636e; }
table { border-collapse: collapse; background: #fff; min-width: 32em; margin-bottom: 1.5em; }
th, td { text-align: left; padding: .35em .8em; border-bottom: 1px solid #e3e6ea; }
th { font-weight: 600; color: #59636e; }
.dot { display: inline-block; width: .7em; height: .7em; border-radius: 50%; margin-right: .4em; }
.alive { background: #2da44e; } .suspect { background: #d4a72c; }
.dead { background: #cf222e; } .left { background: #8c959f; }
#stale { color: #cf222e; }
</style></head>
<body>
<h1>__NODE__</h1>
<p class="sub">tetrahedron __TETRAHEDRON__ &middot; refreshed every __REFRESH__ s
<span id="stale"></span></p>
<div id="meshes">__MESHES__</div>
<script>
"use strict";
function cell(row, text) {
  const td = document.createElement("td"); td.textContent = text; row.appendChild(td);
}
function render(data) {
  const root = document.getElementById("meshes");
  root.replaceChildren();
  for (const mesh of data.meshes) {
    const title = document.createElement("p");
    title.textContent = "mesh " + (mesh.mesh_id || "") + " on " + mesh.address;
    root.appendChild(title);
    const table = document.createElement("table");
    const head = table.insertRow();
    for (const name of ["peer", "status", "transport", "round trip"]) {
      const th = document.createElement("th"); th.textContent = name; head.appendChild(th);
    }
    for (const peer of mesh.peers) {
      const row = table.insertRow();
      row.dataset.peer = peer.node_id;
      const first = document.createElement("td");
      const dot = document.createElement("span");
      dot.className = "dot " + peer.status;
      first.append(dot, peer.node_id);
      row.appendChild(first);
      cell(row, peer.status);
      cell(row, peer.transport || "-");
      cell(row, peer.rtt_ms == null ? "-" : peer.rtt_ms.toFixed(1) + " ms");
    }
    root.appendChild(table);
  }
}
async function refresh() {
  try {
    const answer = await fetch("network", { cache: "no-store" });
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
    document.getElementById("meshes").dataset.refreshed = new Date().toISOString();
    document.getElementById("stale").textContent = "";
  } catch (err) {
    document.getElementById("stale").textContent = "(agent unreachable: " + err.message + ")";
  }
}
setInterval(refresh, __REFRESH__ * 1000);
</script>
</body></html>
"""


def map_page(agent: Agent) -> str:
    return render_map(agent.config.node_id, agent.config.tetrahedron, network(agent))


def render_map(node_id: str, tetrahedron: str, view: dict) -> str:
    """The page, with the peers of ``view`` (a /network answer) already in it; its script
    refreshes them. Every name is escaped: a member's id is any printable text."""
    def row(peer: dict) -> str:
        node, status = html.escape(peer["node_id"]), html.escape(peer["status"])
        rtt = "-" if peer["rtt_ms"] is None else f"{peer['rtt_ms']:.1f} ms"
        return (f'<tr data-peer="{node}"><td><span class="dot {status}"></span>{node}</td>'
                f'<td>{status}</td><td>{html.escape(peer["transport"] or "-")}</td><td>{rtt}</td></tr>')

    tables = []
    for mesh in view["meshes"]:
        rows = "".join(row(peer) for peer in mesh["peers"])
        tables.append(f'<p>mesh {html.escape(mesh["mesh_id"] or "")} on {html.escape(mesh["address"])}</p>'
                      f"<table><tr><th>peer</th><th>status</th><th>transport</th><th>round trip</th></tr>"
                      f"{rows}</table>")
    values = {"REFRESH": str(MAP_REFRESH_S), "NODE": html.escape(node_id),
              "TETRAHEDRON": html.escape(tetrahedron), "MESHES": "".join(tables) or "<p>no mesh joined</p>"}
    # one pass: a value that happens to contain a placeholder is left as it is
    return re.sub(r"__([A-Z]+)__", lambda m: values[m.group(1)], _MAP_PAGE)


# -- the application ------------------------------------------------------------------------

#: The map page is self-contained: its own inline style and script, requests to this origin only.
MAP_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
              "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(agent: Agent, *, loopback_only: bool = True) -> Starlette:
    """The endpoints' application; ``loopback_only`` (a loopback bind) refuses requests
    for any other host name (DNS rebinding)."""
    # coroutines, not plain functions: Starlette would run those on a thread pool, and the
    # mesh's state belongs to the loop's thread
    async def health_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(health(agent))

    async def network_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(network(agent))

    async def gossip_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(gossip_summary(agent))

    async def map_endpoint(request: Request) -> HTMLResponse:
        return HTMLResponse(map_page(agent))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return JSONResponse({"error": detail, "path": request.url.path}, status_code=status,
                            headers=getattr(exc, "headers", None))

    routes = [Route("/health", health_endpoint, methods=["GET"]),
              Route("/network", network_endpoint, methods=["GET"]),
              Route("/gossip/summary", gossip_endpoint, methods=["GET"]),
              Route("/map", map_endpoint, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, 500: http_error},
                     middleware=[Middleware(Guard, policy=MAP_POLICY, loopback_only=loopback_only)])


class _Server(uvicorn.Server):
    """uvicorn inside the agent: the agent's SIGINT/SIGTERM handlers stay, and the server
    wakes the loop once a second (its Date header) rather than ten times, and at once on exit."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.exit_now = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        while not await self.on_tick(0):  # tick 0: the Date header is refreshed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_now.wait(), timeout=1.0)


class AgentEndpoints:
    """The endpoints' server, running as a task of the agent's loop."""

    def __init__(self, server: _Server, task: asyncio.Task, sock: socket.socket):
        self._server, self._task = server, task
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    async def start(cls, agent: Agent, host: str, port: int) -> AgentEndpoints | None:
        """Listen on ``host:port`` (0: a free port); None, said in one line, when it cannot:
        the agent goes on reporting without them."""
        try:
            family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
            sock = socket.create_server((host.strip("[]"), port), family=family, backlog=64)
        except OSError as exc:
            log.error("http endpoints off: cannot listen on %s port %d: %s", host, port,
                      exc.strerror or exc)
            return None
        sock.setblocking(False)
        app = create_app(agent, loopback_only=is_loopback(host))
        config = uvicorn.Config(app, lifespan="off", log_level="warning", log_config=None,
                                access_log=False, http="h11", ws="none", server_header=False,
                                timeout_graceful_shutdown=1)
        config.load()  # its protocol modules, imported now rather than inside the server's task
        server = _Server(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]),
                                                      name="flowmesh-http")
        endpoints = cls(server, task, sock)
        deadline = time.monotonic() + 5
        while not server.started and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not server.started:
            await endpoints.stop(timeout=0.5)
            sock.close()
            log.error("http endpoints off: the server did not start on %s", endpoints.url)
            return None
        log.info("http endpoints on %s (/health, /network, /gossip/summary, /map)", endpoints.url)
        if not is_loopback(host):
            log.warning("http endpoints on %s are unauthenticated: anyone who reaches that address "
                        "can read this device's view", endpoints.url)
        return endpoints

    async def stop(self, timeout: float = 1.0) -> None:
        """Stop listening, close connections; past ``timeout`` the server task is cancelled."""
        self._server.should_exit = True
        self._server.exit_now.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        except Exception as exc:  # the server failed; it is gone either way
            log.debug("http endpoints stopped with %s", exc)
