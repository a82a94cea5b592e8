"""The agent's endpoints' pure parts: the map page, the error line, the loopback rule.
(Served over real sockets by tests/integration/test_agent_http.py.)"""

from __future__ import annotations

import pytest

from flowmesh_edge.http_endpoints import ERROR_MAX_CHARS, _error_line, is_loopback, render_map


def view(*peers: dict) -> dict:
    return {"node_id": "pi", "meshes": [{"mesh_id": "a9f7", "address": "udp:127.0.0.1:9999",
                                         "endpoints": [], "peers": list(peers)}]}


def peer(node_id: str, status: str = "alive", transport: str | None = "udp", rtt_ms: float | None = 1.25):
    return {"node_id": node_id, "status": status, "transport": transport, "rtt_ms": rtt_ms}


def test_the_map_lists_each_peer_with_its_status_transport_and_round_trip():
    page = render_map("pi", "home", view(peer("cam"), peer("laptop", "suspect", None, None)))
    assert '<tr data-peer="cam"><td><span class="dot alive"></span>cam</td><td>alive</td>' \
           "<td>udp</td><td>1.2 ms</td></tr>" in page
    assert '<span class="dot suspect"></span>laptop</td><td>suspect</td><td>-</td><td>-</td>' in page
    assert "<title>FlowMesh: pi</title>" in page and "tetrahedron home" in page
    assert "setInterval(refresh, 3 * 1000)" in page and "__" not in page


def test_the_map_escapes_every_name_and_substitutes_once():
    hostile = '<img src=x onerror="alert(1)">'
    page = render_map("__MESHES__", hostile, view(peer(hostile, "alive")))
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<title>FlowMesh: __MESHES__</title>" in page  # a node id is not a placeholder


def test_the_map_of_a_device_in_no_mesh_says_so():
    assert "<p>no mesh joined</p>" in render_map("pi", "home", {"node_id": "pi", "meshes": []})


def test_an_error_is_one_line_without_a_password_and_bounded():
    text = "cannot connect\n  to postgresql://edge:s3cret@db:5432/flowmesh\nDETAIL: refused"
    assert _error_line(text) == "cannot connect to postgresql://edge:***@db:5432/flowmesh DETAIL: refused"
    long = _error_line("x" * 1000)
    assert len(long) == ERROR_MAX_CHARS and long.endswith("…")
    assert _error_line(None) is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("pi.example.org", False),
])
def test_only_loopback_binds_go_unwarned(host, loopback):
    assert is_loopback(host) is loopback
