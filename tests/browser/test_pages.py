"""The dashboard's pages in a real headless Chromium, against a real database and
the real dashboard server: what each page shows is what the SQL says."""

from __future__ import annotations

import time
import uuid

from tests.browser.conftest import LOW_BATTERY, WAIT_MS, heartbeat, screenshot

#: The map's colour for each status (tetrahedron.js STATUS_COLOURS).
STATUS_COLOURS = {"online": "#2e9d4f", "degraded": "#e08a00", "offline": "#d64541"}


def rows_in_order(page) -> list[str]:
    return page.eval_on_selector_all("#fleet tbody tr:not([hidden])",
                                     "rows => rows.map(r => r.dataset.tetrahedron)")


def cell(page, tetrahedron: str, field: str) -> str:
    return page.locator(f'tr[data-tetrahedron="{tetrahedron}"] td[data-field="{field}"]').inner_text().strip()


def test_overview_shows_the_fleet_as_mesh_summary_does_and_sorts_and_searches(conn, fleet, serve, open_page,
                                                                              tmp_path):
    base = serve()
    page, recorder = open_page(base)
    page.goto("/")
    page.wait_for_selector("#fleet[data-loaded=true]")
    summary = conn.execute("select name, online, degraded, offline, nodes, open_alerts, status, "
                           "average_health from mesh_summary order by name").fetchall()
    assert [row[0] for row in summary] == ["farm", "home", "lab", "shop"]
    assert rows_in_order(page) == ["farm", "home", "lab", "shop"]  # by name at first
    for name, online, degraded, offline, nodes, open_alerts, status, health in summary:
        shown = {f: cell(page, name, f) for f in ("online", "degraded", "offline", "nodes", "open_alerts",
                                                   "status", "average_health")}
        assert shown == {"online": str(online), "degraded": str(degraded), "offline": str(offline),
                         "nodes": str(nodes), "open_alerts": str(open_alerts), "status": status,
                         "average_health": "\u2013" if health is None else f"{health:.2f}"}, name
    # the seed gives distinct figures, so a column mixed up would show
    assert cell(page, "home", "degraded") == "1" and cell(page, "farm", "offline") == "2"
    assert cell(page, "lab", "last_heartbeat_at") == "never"
    assert cell(page, "shop", "last_heartbeat_at").endswith("s ago")
    assert page.locator('tr[data-tetrahedron="home"] a').get_attribute("href") == "/t/home"

    # sorting: by offline nodes, ascending then descending (ties by name)
    page.click('th[data-sort="offline"]')
    by_offline = sorted(summary, key=lambda r: (r[3], r[0]))
    assert rows_in_order(page) == [r[0] for r in by_offline]
    page.click('th[data-sort="offline"]')
    assert rows_in_order(page) == [r[0] for r in sorted(summary, key=lambda r: (-r[3], r[0]))]
    assert page.get_attribute('th[data-sort="offline"]', "aria-sort") == "descending"

    # search filters by name, and clearing it brings every row back
    page.fill("#search", "hom")
    assert rows_in_order(page) == ["home"]
    page.fill("#search", "nothing-like-it")
    assert rows_in_order(page) == []
    assert page.locator("#fleet-empty").is_visible()
    page.fill("#search", "")
    assert len(rows_in_order(page)) == 4
    screenshot(page, tmp_path, "overview")
    assert recorder.requests  # the recorder saw the page's own requests


def test_tetrahedron_page_shows_the_map_heatmap_alerts_and_nodes(conn, fleet, serve, open_page, tmp_path):
    base = serve()
    page, _ = open_page(base)
    page.goto("/t/home")
    page.wait_for_selector("body[data-loaded=true]")
    nodes = dict(conn.execute("select node_id, status from nodes where tetrahedron_id = %s",
                              (fleet.ids["home"],)))
    assert nodes == {"phone": "online", "laptop": "online", "pi": "degraded", "cam": "offline"}
    # the summary is the tetrahedron's mesh_summary row
    (summary,) = conn.execute("select nodes, online, degraded, offline, open_alerts, status "
                              "from mesh_summary where name = 'home'").fetchall()
    shown = [page.inner_text(f'#summary dd[data-field="{f}"]') for f in
             ("nodes", "online", "degraded", "offline", "open_alerts")]
    assert shown + [page.inner_text("#status-badge")] == [str(v) for v in summary]

    # the map: one SVG node per node, coloured by its status
    shown = page.eval_on_selector_all(
        "#mesh-map g.node", "gs => gs.map(g => [g.dataset.node, g.dataset.status, "
                            "g.querySelector('circle').getAttribute('fill')])")
    assert sorted(shown) == sorted([n, s, STATUS_COLOURS[s]] for n, s in nodes.items())
    # an edge per mesh_links row, with its transport
    links = conn.execute("select observer, subject, transport from mesh_links where tetrahedron_id = %s",
                         (fleet.ids["home"],)).fetchall()
    assert links, "the seed's path events give mesh links"
    edges = page.eval_on_selector_all(
        "#mesh-map path.edge",
        "ps => ps.map(p => [p.dataset.observer, p.dataset.subject, p.dataset.transport])")
    assert sorted(map(tuple, edges)) == sorted(links)
    labels = page.eval_on_selector_all("#mesh-map .edge-label", "ts => ts.map(t => t.textContent)")
    assert any(label.startswith("ble") for label in labels)

    # the heatmap: a row per node, 48 buckets, the latest buckets coloured where heartbeats came
    assert sorted(page.eval_on_selector_all("#heatmap tbody tr", "rs => rs.map(r => r.dataset.node)")) \
        == sorted(nodes)
    phone_cells = page.locator('#heatmap tr[data-node="phone"] td')
    assert phone_cells.count() == 48
    scored = page.eval_on_selector_all(
        '#heatmap tr[data-node="phone"] td',
        "tds => tds.filter(td => td.dataset.score !== '').map(td => Date.parse(td.dataset.bucket) / 1000)")
    in_sql = [row[0] for row in conn.execute(
        "select extract(epoch from bucket_start)::float8 from node_health_heatmap(%s, '5 minutes', 48) "
        "where node_id = 'phone' order by 1", (fleet.ids["home"],))]
    assert scored == in_sql and len(in_sql) >= 1  # the same buckets coloured, in the same columns' order
    page.select_option("#heatmap-bucket", "1h")
    page.wait_for_selector("#heatmap[data-bucket-seconds='3600']")
    assert "bucket=1h" in page.url

    # the alert the mesh raised, with its message and reasons; the node list links to node pages
    alert = page.locator('#alerts tr[data-type="mesh-intrusion"]')
    assert alert.locator('td[data-field="message"]').inner_text() == fleet.alert_message
    assert "zone" in alert.locator('td[data-field="details"]').inner_text()
    assert page.get_attribute('#nodes tr[data-node="pi"] a', "href") == "/t/home/n/pi"
    # the guardian decision under vote
    (decision_id, status) = conn.execute("select id, status from guardian_decisions").fetchone()
    decision = page.locator(f'#decisions tr[data-decision="{decision_id}"]')
    assert "quarantine" in decision.inner_text() and status in decision.inner_text()
    assert page.locator("#badge-markdown").inner_text().endswith("/badge/home.svg)")
    screenshot(page, tmp_path, "tetrahedron")


def test_node_page_shows_its_charts_and_history(conn, fleet, serve, open_page, tmp_path):
    base = serve()
    page, _ = open_page(base)
    page.goto("/t/home/n/phone")
    page.wait_for_selector("body[data-loaded=true]")
    metrics = ["latency_ms", "packet_loss", "cpu_percent", "battery_percent", "temperature_c", "health_score",
               "predicted_risk"]
    for metric in metrics:
        chart = page.locator(f'.chart[data-metric="{metric}"]')
        assert chart.locator("canvas").count() >= 1, metric
    # the CPU chart has as many points as the series has CPU values (six heartbeats, 5 minutes)
    (with_cpu,) = conn.execute("select count(*) from node_metric_series(%s, 'phone', '1 hour', 60) "
                               "where cpu_percent is not null", (fleet.ids["home"],)).fetchone()
    assert with_cpu >= 2
    assert page.get_attribute('.chart[data-metric="cpu_percent"]', "data-points") == str(with_cpu)
    # status history: the timeline's periods, newest first
    periods = conn.execute("select status from node_status_timeline where node_id = 'phone' "
                           "and tetrahedron_id = %s order by since desc", (fleet.ids["home"],)).fetchall()
    history = page.eval_on_selector_all("#history tbody tr", "rs => rs.map(r => r.dataset.status)")
    assert history == [status for (status,) in periods][:100]
    # its mesh events (the path the laptop reached it by)
    assert "path" in page.eval_on_selector_all("#events tbody tr", "rs => rs.map(r => r.dataset.kind)")
    screenshot(page, tmp_path, "node")
    # another window re-reads the series: buckets of 24 minutes hold the six heartbeats in one or two
    page.select_option("#window", "24h")
    page.wait_for_function("() => location.search.includes('window=24h')", timeout=WAIT_MS)
    page.wait_for_function("() => ['1', '2'].includes(document.querySelector("
                           "'.chart[data-metric=cpu_percent]').dataset.points)", timeout=WAIT_MS)


def test_a_heartbeat_shows_on_the_open_page_without_a_reload(conn, fleet, serve, open_page, tmp_path):
    base = serve()
    page, _ = open_page(base)
    page.goto("/t/home")
    page.wait_for_selector('#mesh-map g.node[data-node="phone"][data-status="online"]')
    page.evaluate("() => { window.stillThisPage = true; }")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    # wait for the live stream before changing anything
    page.wait_for_selector('#live-state[data-state="live"]')

    heartbeat(conn, fleet.ids["home"], "phone", **LOW_BATTERY)  # phone turns degraded
    started = time.monotonic()
    page.wait_for_selector('#mesh-map g.node[data-node="phone"][data-status="degraded"]', timeout=2000)
    shown_after = time.monotonic() - started
    assert shown_after < 2.0
    assert page.evaluate("() => window.stillThisPage") is True
    assert navigations == []
    fill = page.get_attribute('#mesh-map g.node[data-node="phone"] circle', "fill")
    assert fill == STATUS_COLOURS["degraded"]
    screenshot(page, tmp_path, "live")


def test_an_outsiders_jwt_shows_no_tetrahedron(conn, fleet, serve, open_page, tmp_path):
    import jwt

    secret = "browser-test-secret-" + uuid.uuid4().hex

    def token(user: uuid.UUID) -> str:
        claims = {"sub": str(user), "role": "authenticated", "aud": "authenticated",
                  "exp": int(time.time()) + 600}
        return jwt.encode(claims, secret, algorithm="HS256")

    base = serve(jwt_secret=secret)
    # the owner of home's devices sees home, and only home ...
    page, _ = open_page(base, headers={"Authorization": f"Bearer {token(fleet.owner)}"})
    page.goto("/")
    page.wait_for_selector("#fleet[data-loaded=true]")
    assert rows_in_order(page) == ["home"]
    # ... an outsider sees nothing, and is told so
    page, _ = open_page(base, headers={"Authorization": f"Bearer {token(uuid.uuid4())}"})
    page.goto("/")
    page.wait_for_selector("#fleet[data-loaded=true]")
    assert rows_in_order(page) == []
    assert page.locator("#fleet-empty").is_visible()
    page.goto("/t/home")
    page.wait_for_selector("#page-error:not([hidden])")
    assert page.locator("#mesh-map g.node").count() == 0
    screenshot(page, tmp_path, "outsider")


def test_the_page_says_the_database_is_unreachable_and_recovers(conn, fleet, db_url, proxy, serve, open_page,
                                                                tmp_path):
    from tests.conftest import db_name

    base = serve(proxy.url(db_name(db_url)))
    page, _ = open_page(base)
    page.goto("/")
    page.wait_for_selector("#fleet[data-loaded=true]")
    assert page.locator("#database-status").is_hidden()

    proxy.down()
    page.wait_for_selector("#database-status:not([hidden])", timeout=WAIT_MS)
    assert page.locator("#database-status").inner_text().startswith("database unreachable")
    screenshot(page, tmp_path, "outage")
    proxy.up()
    page.wait_for_selector("#database-status[hidden]", state="attached", timeout=WAIT_MS)
    assert len(rows_in_order(page)) == 4  # the table is still there
    # and live again: a node of shop turning degraded shows without a reload
    heartbeat(conn, fleet.ids["shop"], "till", **LOW_BATTERY)
    page.wait_for_function("() => document.querySelector("
                           "'tr[data-tetrahedron=\"shop\"] td[data-field=degraded]').textContent === '1'",
                           timeout=WAIT_MS)


def test_no_page_requests_anything_off_its_origin(fleet, serve, open_page, tmp_path):
    base = serve()
    page, recorder = open_page(base)
    for path, ready in (("/", "#fleet[data-loaded=true]"), ("/t/home", "body[data-loaded=true]"),
                        ("/t/home/n/pi", "body[data-loaded=true]"), ("/login", "form#login")):
        page.goto(path)
        page.wait_for_selector(ready)
    screenshot(page, tmp_path, "login")
    assert any(u.endswith("/static/vendor/uplot/uPlot.iife.min.js") for u in recorder.requests)
    assert any("/api/events" in u for u in recorder.requests)
    assert recorder.foreign() == []




def test_the_overview_stays_fast_at_a_thousand_tetrahedrons_and_updates_rows_in_place(conn, serve, open_page):
    # 1,000 tetrahedrons of two nodes with a heartbeat each: the page's work is per
    # row (the server's time at 10,000 nodes is bench/dashboard.py's business)
    conn.execute("select register_node(pg_catalog.format('site-%s', lpad(t::text, 4, '0')), "
                 "pg_catalog.format('node-%s', n)) "
                 "from generate_series(1, 1000) t, generate_series(1, 2) n")
    conn.execute("select record_mesh_heartbeats(t.id, (select jsonb_agg(jsonb_build_object("
                 "'src', v.node_id, 'seq', 1, 'at', extract(epoch from now()), 'payload', "
                 "jsonb_build_object('metrics', "
                 "jsonb_build_object('cpu_percent', 30))))"
                 " from tetrahedron_vertices v where v.tetrahedron_id = t.id)) from tetrahedrons t")
    base = serve()
    page, _ = open_page(base)
    page.goto("/")
    page.wait_for_selector("#fleet[data-loaded=true]", timeout=WAIT_MS)
    assert page.get_attribute("#fleet", "data-shown") == "1000"
    first_render_ms = float(page.get_attribute("#fleet", "data-render-ms"))
    # mark the rows' elements: an update must keep them, not rebuild the table
    page.evaluate("() => document.querySelectorAll('#fleet tbody tr').forEach(r => r.keptElement = true)")
    (tid,) = conn.execute("select id from tetrahedrons where name = 'site-0500'").fetchone()
    heartbeat(conn, tid, "node-1", **LOW_BATTERY)  # one node of site-0500 turns degraded
    page.wait_for_function(
        "() => document.querySelector('tr[data-tetrahedron=\"site-0500\"] td[data-field=degraded]')"
        ".textContent === '1'", timeout=5000)
    assert page.evaluate("() => [...document.querySelectorAll('#fleet tbody tr')].every(r => r.keptElement)")
    update_ms = float(page.get_attribute("#fleet", "data-render-ms"))
    search_ms = page.evaluate("""() => {
        const box = document.getElementById('search'), started = performance.now();
        box.value = 'site-05'; box.dispatchEvent(new Event('input'));
        return performance.now() - started; }""")
    assert page.get_attribute("#fleet", "data-shown") == "100"  # site-0500 .. site-0599
    sort_ms = page.evaluate("""() => {
        const started = performance.now();
        document.querySelector('th[data-sort=average_health]').click();
        return performance.now() - started; }""")
    # generous bounds for a shared 2-core machine; typical figures are a tenth of these
    assert first_render_ms < 2000 and update_ms < 1000 and search_ms < 300 and sort_ms < 1000, \
        (first_render_ms, update_ms, search_ms, sort_ms)


def test_signing_in_with_the_token_opens_the_dashboard(fleet, serve, open_page, tmp_path):
    token = "operator-token-" + uuid.uuid4().hex
    base = serve(token=token)
    page, _ = open_page(base)
    page.goto("/")
    assert page.url == f"{base}/login"  # no credential: the page sends us to sign in
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:not([hidden])")
    screenshot(page, tmp_path, "login-refused")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#fleet[data-loaded=true]")
    assert page.url == f"{base}/"
    assert len(rows_in_order(page)) == 4  # the session cookie carries the token to the API


def test_the_page_reconnects_by_itself_when_the_dashboard_comes_back(conn, fleet, db_url, open_page,
                                                                      monkeypatch):
    from monitors.dashboard.server import DashboardServer
    from tests.support import dashboard as support

    with support.running_dashboard(db_url) as base:
        page, _ = open_page(base)
        page.goto("/t/home")
        page.wait_for_selector('#live-state[data-state="live"]')
        page.evaluate("() => { window.stillThisPage = true; }")
    # the dashboard stopped: the stream is gone, and a node changes meanwhile
    page.wait_for_selector('#live-state[data-state="reconnecting"]', timeout=WAIT_MS)
    heartbeat(conn, fleet.ids["home"], "phone", **LOW_BATTERY)

    port = int(base.rsplit(":", 1)[1])

    class SamePort(DashboardServer):  # the restarted dashboard listens where the page looks
        def __init__(self, app, host, _port, **kwargs):
            super().__init__(app, host, port, **kwargs)

    monkeypatch.setattr(support, "DashboardServer", SamePort)
    with support.running_dashboard(db_url):
        # the browser reconnects by itself (retry: 2000) and the page catches up on what it missed
        page.wait_for_selector('#live-state[data-state="live"]', timeout=WAIT_MS)
        page.wait_for_selector('#mesh-map g.node[data-node="phone"][data-status="degraded"]', timeout=WAIT_MS)
        assert page.locator("#database-status").is_hidden()
        # and is live again
        heartbeat(conn, fleet.ids["home"], "laptop", **LOW_BATTERY)
        page.wait_for_selector('#mesh-map g.node[data-node="laptop"][data-status="degraded"]', timeout=2000)
        assert page.evaluate("() => window.stillThisPage") is True
