"""The dashboard's JSON API and badges, over a real socket, against seeded data."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from tests.conftest import register
from tests.support.dashboard import running_dashboard
from tests.support.seed import beat, beats, event, mesh_events

HEALTHY = {"latency_ms": 20, "packet_loss": 0, "cpu_percent": 30, "battery_percent": 90,
           "temperature_c": 41}
SICK = {"latency_ms": 480, "packet_loss": 0.18, "cpu_percent": 99, "battery_percent": 5}


@pytest.fixture
def fleet(conn):
    """home: pi online, cam degraded (a sick heartbeat), laptop offline (silent for 10 min);
    the mesh's paths between pi and cam, an alert and a guardian decision; shed: all up."""
    now = time.time()
    home = register(conn, "home", "pi")
    register(conn, "home", "cam")
    register(conn, "home", "laptop")
    shed = register(conn, "shed", "door")
    gossip = {"mesh": {"gossip": {"seen": 12, "duplicates": 3, "propagated": 9}}}
    beats(conn, home, [beat("pi", 1, now - 150, HEALTHY, **gossip), beat("pi", 2, now - 1, HEALTHY, **gossip),
                       beat("cam", 1, now - 2, SICK), beat("laptop", 1, now - 600, HEALTHY)])
    beats(conn, shed, [beat("door", 1, now - 1, HEALTHY)])
    mesh_events(conn, home, [
        event(1, "joined", "cam", "pi", now - 10),
        event(2, "path", "cam", "pi", now - 9, transport="udp", address="udp:10.0.0.2:7946", rtt_ms=1.5),
        event(1, "joined", "pi", "cam", now - 10),
        event(2, "alert", "cam", "cam", now - 5, priority="critical",
              alert={"type": "battery", "message": "battery low"}),
    ])
    conn.execute("select propose_guardian_decision(%s, 'quarantine', 'cam', 'pi')", (home,))
    return {"home": home, "shed": shed}


@pytest.fixture
def client(db_url, fleet):
    with running_dashboard(db_url) as base, httpx.Client(base_url=base, timeout=10) as c:
        yield c


def get(client, path, status=200, **params):
    response = client.get(path, params=params)
    assert response.status_code == status, (path, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_the_fleet_lists_every_tetrahedron_with_its_summary(client, fleet):
    body = get(client, "/api/fleet")
    rows = {t["name"]: t for t in body["tetrahedrons"]}
    assert list(rows) == ["home", "shed"]
    home = rows["home"]
    assert (home["online"], home["degraded"], home["offline"], home["nodes"]) == (1, 1, 1, 3)
    assert home["status"] == "late" and rows["shed"]["status"] == "up"
    assert home["open_alerts"] == 1
    assert home["tetrahedron_id"] == str(fleet["home"])
    assert 0 < home["average_health"] < 1
    datetime.fromisoformat(home["last_heartbeat_at"])
    datetime.fromisoformat(body["generated_at"])
    assert [t["name"] for t in get(client, "/api/fleet", search="SH")["tetrahedrons"]] == ["shed"]
    assert get(client, "/api/fleet", search="%")["tetrahedrons"] == []  # a search is text, not a pattern


def test_a_tetrahedron_has_its_nodes_links_alerts_and_decisions(client):
    body = get(client, "/api/tetrahedrons/home")
    assert body["tetrahedron"]["name"] == "home"
    assert {n["node_id"]: n["status"] for n in body["nodes"]} == \
        {"cam": "degraded", "laptop": "offline", "pi": "online"}
    links = [(link["observer"], link["subject"], link["transport"], link["rtt_ms"]) for link in body["links"]]
    assert links == [("cam", "pi", None, None), ("pi", "cam", "udp", 1.5)]
    assert [(a["alert_type"], a["node_id"], a["severity"]) for a in body["alerts"]] == \
        [("mesh-battery", "cam", "critical")]
    assert [(d["action"], d["subject"], d["status"]) for d in body["decisions"]] == \
        [("quarantine", "cam", "open")]
    assert get(client, "/api/tetrahedrons/nowhere", 404)["error"] == "no tetrahedron named 'nowhere'"


def test_the_heatmap_has_a_column_per_bucket_and_a_row_per_node(client):
    body = get(client, "/api/tetrahedrons/home/heatmap", bucket="1m", buckets="5")
    assert body["bucket_seconds"] == 60
    starts = [datetime.fromisoformat(s) for s in body["buckets"]]
    assert len(starts) == 5 and starts == sorted(starts)
    assert all((b - a).total_seconds() == 60 for a, b in zip(starts, starts[1:], strict=False))
    assert set(body["nodes"]) == {"pi", "cam"}  # the laptop's one heartbeat is 10 minutes old
    for scores in body["nodes"].values():
        assert len(scores) == 5
    def newest(scores):  # a minute may have begun since the heartbeats: the newest bucket with one
        return [score for score in scores if score is not None][-1]

    assert newest(body["nodes"]["pi"]) > newest(body["nodes"]["cam"])
    # defaults: 40 buckets of 5 minutes; the seed's shape answers the same
    default = get(client, "/api/tetrahedrons/home/heatmap")
    assert default["bucket_seconds"] == 300 and len(default["buckets"]) == 40
    assert set(default["nodes"]) == {"pi", "cam", "laptop"}
    seed = get(client, "/api/heatmap", tetrahedron="home")
    assert seed["buckets"] == default["buckets"] and seed["nodes"] == default["nodes"]
    # every forms of a bucket Postgres reads as an interval
    for bucket, seconds in (("30 minutes", 1800), ("1h", 3600), ("1d", 86400), ("600", 600)):
        assert get(client, "/api/tetrahedrons/home/heatmap", bucket=bucket, buckets="2")["bucket_seconds"] \
            == seconds


@pytest.mark.parametrize("params, sqlstate", [
    ({"bucket": "30s"}, "22023"),      # under a minute
    ({"bucket": "2d"}, "22023"),       # over a day
    ({"buckets": "0"}, "22023"),
    ({"bucket": "soon"}, "22007"),     # not an interval
    ({"buckets": "many"}, "22P02"),    # not an integer
])
def test_a_bad_heatmap_parameter_is_a_400_with_the_sqls_reason(client, params, sqlstate):
    body = get(client, "/api/tetrahedrons/home/heatmap", 400, **params)
    assert body["sqlstate"] == sqlstate and "\n" not in body["error"]


def test_a_node_has_its_series_history_and_events(client):
    body = get(client, "/api/tetrahedrons/home/nodes/cam", window="1h", buckets="60")
    assert body["node"]["node_id"] == "cam" and body["node"]["status"] == "degraded"
    assert len(body["series"]) == 1
    point = body["series"][0]
    assert point["cpu_percent"] == 99 and point["battery_percent"] == 5 and point["heartbeats"] == 1
    assert {"latency_ms", "packet_loss", "temperature_c", "health_score", "predicted_risk"} <= set(point)
    assert [(h["status"], h["until"]) for h in body["history"]][0] == ("degraded", None)
    kinds = [(e["kind"], e["observer"], e["subject"]) for e in body["events"]]
    assert kinds == [("alert", "cam", "cam"), ("path", "pi", "cam"), ("joined", "cam", "pi"),
                     ("joined", "pi", "cam")]
    pi = get(client, "/api/tetrahedrons/home/nodes/pi")
    assert len(pi["series"]) == 2  # defaults: the last hour in 60 buckets, its beats 149 s apart
    assert get(client, "/api/tetrahedrons/home/nodes/ghost", 404)["error"] == \
        "no node 'ghost' in tetrahedron 'home'"
    assert get(client, "/api/tetrahedrons/nowhere/nodes/pi", 404)["sqlstate"] is None
    assert get(client, "/api/tetrahedrons/home/nodes/cam", 400, window="500 days")["sqlstate"] == "22023"


def test_the_seeds_health_network_and_gossip_shapes(client):
    health = get(client, "/api/health")
    assert health["database"] == {"reachable": True}
    assert (health["tetrahedrons"], health["nodes"], health["online"], health["degraded"],
            health["offline"], health["open_alerts"]) == (2, 4, 2, 1, 1, 1)

    network = get(client, "/api/network")
    assert [(n["tetrahedron"], n["node_id"], n["status"]) for n in network["nodes"]] == \
        [("home", "cam", "degraded"), ("home", "laptop", "offline"), ("home", "pi", "online"),
         ("shed", "door", "online")]
    cam = network["nodes"][0]
    assert cam["mesh_transport"] == "udp" and cam["mesh_transport_rtt_ms"] == 1.5
    assert len(network["links"]) == 2
    assert [n["node_id"] for n in get(client, "/api/network", tetrahedron="shed")["nodes"]] == ["door"]
    assert get(client, "/api/network", tetrahedron="nowhere", status=404)

    gossip = get(client, "/api/gossip/summary", tetrahedron="home")
    assert [(g["node_id"], g["seen"], g["duplicates"], g["propagated"]) for g in gossip["nodes"]] == \
        [("pi", 12, 3, 9)]
    assert gossip["totals"] == {"seen": 12, "duplicates": 3, "propagated": 9}
    assert get(client, "/api/gossip/summary", status=400)["sqlstate"] == "22023"
    assert get(client, "/api/heatmap", status=400)["error"] == "the query parameter 'tetrahedron' is required"


def test_badges_say_up_late_or_down(client, conn):
    conn.execute("insert into tetrahedrons (name) values ('nobody')")  # no node: down
    for name, status, colour, named in (("shed", "up", "#4c1", "brightgreen"),
                                        ("home", "late", "#fe7d37", "orange"),
                                        ("nobody", "down", "#e05d44", "red")):
        svg = client.get(f"/badge/{name}.svg")
        assert svg.status_code == 200
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.headers["cache-control"] == "no-cache"
        assert f">{status}</text>" in svg.text and f">{name}</text>" in svg.text and colour in svg.text
        endpoint = client.get(f"/badge/{name}.json")
        assert endpoint.headers["cache-control"] == "no-cache"
        assert endpoint.json() == {"schemaVersion": 1, "label": name, "message": status, "color": named}
    missing = client.get("/badge/nowhere.svg")
    assert missing.status_code == 404 and "not found" in missing.text
    assert client.get("/badge/nowhere.json").status_code == 404


def test_the_pages_and_static_files_are_served(client):
    for path in ("/", "/t/home", "/t/home/n/cam", "/login"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="database-status"' in page.text
    assert client.get("/static/overview.html").status_code == 200
    assert client.get("/static/nothing-here.js").status_code == 404


def test_names_holding_a_slash_reach_their_pages_api_and_badge(client, conn):
    tid = register(conn, "north/east", "cam/1")
    beats(conn, tid, [beat("cam/1", 1, time.time(), HEALTHY)])
    # as the pages build their links: each name one encoded segment
    name, node = "north%2Feast", "cam%2F1"
    assert client.get(f"/api/tetrahedrons/{name}").json()["tetrahedron"]["name"] == "north/east"
    heat = client.get(f"/api/tetrahedrons/{name}/heatmap", params={"bucket": "1h", "buckets": 3}).json()
    assert list(heat["nodes"]) == ["cam/1"]
    assert client.get(f"/api/tetrahedrons/{name}/nodes/{node}").json()["node"]["node_id"] == "cam/1"
    assert client.get(f"/badge/{name}.json").json()["label"] == "north/east"
    assert client.get(f"/badge/{name}.svg").status_code == 200
    for page in (f"/t/{name}", f"/t/{name}/n/{node}"):
        assert client.get(page).status_code == 200, page
    assert client.get(f"/api/tetrahedrons/{name}/nodes/nobody").status_code == 404
